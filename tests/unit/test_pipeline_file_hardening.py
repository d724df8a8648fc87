"""Pipeline files that are not what they claim: every command that reads one goes through
one loader and answers with one line naming the file (and the line or key), exit 1,
never a traceback; a key given twice is refused, not silently overridden."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalize.cli import app
from personalize.config import PipelineError, load_pipeline

STAMP = Path("pipelines/stamp.yaml").read_text()


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


# (file name, how to make it, what the one line must say)
BAD_FILES = {
    "deep flow": (
        lambda d: _write(d, "deep.yaml", b"name: " + b"[" * 10_000 + b"]" * 10_000 + b"\n"),
        ["line 1", "nested more than"],
    ),
    "deep block": (
        lambda d: _write(
            d, "deep-block.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(300)).encode()
        ),
        ["line 32", "nested more than"],
    ),
    "long integer": (
        lambda d: _write(d, "long.yaml", STAMP.encode() + b"seed: " + b"9" * 5000 + b"\n"),
        ["line 49", "5000 digits"],
    ),
    "directory": (
        lambda d: (d / "dir.yaml").mkdir() or d / "dir.yaml",
        ["is a directory"],
    ),
    "not UTF-8": (
        lambda d: _write(d, "latin1.yaml", STAMP.encode() + "# café\n".encode("latin-1")),
        ["line 49", "not UTF-8"],
    ),
    "duplicate top-level key": (
        lambda d: _write(d, "dup.yaml", STAMP.encode() + b"synthetic: false\n"),
        ["line 49", "duplicate key 'synthetic'", "line 6"],
    ),
    "duplicate nested key": (
        lambda d: _write(
            d,
            "dup-feature.yaml",
            STAMP.replace(
                "features:\n", "features:\n  odi: {type: numeric, min: 0, max: 1}\n", 1
            ).encode(),
        ),
        ["line 25", "duplicate key 'odi'", "line 20"],
    ),
    "endless device": (lambda d: Path("/dev/zero"), ["larger than 1 MiB"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_the_loader_names_the_file_and_line(tmp_path: Path, case: str) -> None:
    make, says = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(PipelineError) as exc:
        load_pipeline(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for part in says:
        assert part in message, (part, message)


COMMANDS = {
    "validate": lambda p: ["validate", str(p)],
    "train": lambda p: ["train", str(p)],
    "simulate": lambda p: ["simulate", "--pipeline", str(p)],
    "score": lambda p: ["score", "in.csv", "--out", "out.csv", "--pipeline", str(p)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_command_answers_one_line_and_exit_1(tmp_path: Path, command: str, case: str) -> None:
    make, says = BAD_FILES[case]
    path = make(tmp_path)
    result = CliRunner().invoke(app, COMMANDS[command](path))
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith(f"error: {path}: "), line
    for part in says:
        assert part in line, (part, line)


def test_a_good_file_still_loads_and_a_missing_one_is_a_usage_error(tmp_path: Path) -> None:
    assert load_pipeline("pipelines/stamp.yaml").registry.model_name == "personalize-stamp"
    merged = _write(
        tmp_path,
        "anchors.yaml",
        STAMP.replace("gates: {", "defaults: &g {max_ece: 0.2}\ngates: {<<: *g, ", 1).encode(),
    )
    with pytest.raises(PipelineError, match="defaults: Extra inputs"):  # merge keys parse
        load_pipeline(merged)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "pipeline file not found" in result.output
