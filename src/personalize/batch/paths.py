"""A run's three files (input, output, rejects) must be three different files: checked
before anything is read, symlinks and hard links included."""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from pathlib import Path

from personalize.batch import ScoringError


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks followed, `..`
    removed), or, when both exist, the same device and inode (hard links, bind mounts)."""
    with contextlib.suppress(OSError, RuntimeError):  # a symlink loop: compare inodes
        if a.resolve() == b.resolve():
            return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_paths(
    input_path: Path, output_path: Path, rejects_path: Path, *, regular: bool = True
) -> None:
    """Refuse, before anything is read, a run whose input, output and rejects are not
    three different files: writing one over another would replace the input or lose the
    rejects while the counts still reconcile. With `regular`, an existing output or
    rejects path must be a regular file (never a device, a FIFO or a directory)."""
    roles = [
        (f"input {input_path}", input_path),
        (f"output (--out) {output_path}", output_path),
        (f"rejects file (--rejects) {rejects_path}", rejects_path),
    ]
    for (first, a), (second, b) in itertools.combinations(roles, 2):
        if same_file(a, b):
            raise ScoringError(
                f"{second} is the same file as {first}; refusing to run (nothing read or "
                "written): give distinct paths"
            )
    for role, path in roles[1:]:
        if regular:
            with contextlib.suppress(OSError):
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise ScoringError(
                        f"{role} exists and is not a regular file; refusing to replace it"
                    )
        else:  # a directory output is replaced whole: it must not hold the input
            with contextlib.suppress(OSError, RuntimeError):
                if input_path.resolve().is_relative_to(path.resolve()):
                    raise ScoringError(f"{role} contains the {roles[0][0]}; refusing to replace it")


def default_rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")
