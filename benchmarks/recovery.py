"""The full recovery study and peer benchmark, writing benchmarks/results/.

    .venv/bin/python benchmarks/recovery.py                 # every part (about 1-2 hours)
    .venv/bin/python benchmarks/recovery.py --part main     # stamp + stamp-null, N = 770
    .venv/bin/python benchmarks/recovery.py --part continuous
    .venv/bin/python benchmarks/recovery.py --part curve --replications 10
    .venv/bin/python benchmarks/recovery.py --part held-out --kind binary --replications 10

Parts:
- main: `stamp` and `stamp-null` at N = 770 with the peers (the committed table);
- continuous: `pipelines/stamp-continuous.yaml` (improvement in BPI severity) at N = 770;
- curve: `stamp` at N in {400, 770, 1500, 3000} (the sample-size curve);
- null: 50+ null replications for the type I error, a binary and a continuous shape;
- development / held-out: every family of that half of the scenario library
  (docs/scenarios.md) for one outcome kind (`--kind`), at N = 770; `--families` runs some.
  Each run writes one folder under --out (`<part>-<kind><suffix>/`): every family's files
  and `families.md` / `families.csv`, the table per family and method.

`--learners` replaces the pipelines' learners, e.g. `--part main --learners effect_linear`
for the PATH effect model alone; `--peers bcf` runs one peer.

Each part writes `<prefix>-records.csv` (one row per replication and method),
`<prefix>-summary.csv`, `<prefix>-diagnosis.json`, plots and `<prefix>.md` under --out, and
logs one MLflow run in experiment `recovery-study`. The narrative with the targets is
benchmarks/results/recovery.md. Thin on purpose: the study is `personalize.study`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from personalize.data.families import DEVELOPMENT, FAMILIES, HELD_OUT, scenario_of
from personalize.study.library import family_table, markdown
from personalize.study.outputs import write_outputs
from personalize.study.peers import PEERS
from personalize.study.run import SAMPLE_SIZES, TEST_N, StudyResult, run_study
from personalize.study.summary import render, summarize_results
from personalize.study.tracking import log_to_mlflow

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PARTS: dict[str, list[tuple[str, str, tuple[int, ...], str]]] = {
    # part: [(scenario, pipeline, sizes, output prefix)]
    "main": [
        ("stamp", "pipelines/stamp.yaml", (770,), "stamp"),
        ("stamp-null", "pipelines/stamp-null.yaml", (770,), "stamp-null"),
    ],
    "continuous": [("stamp", "pipelines/stamp-continuous.yaml", (770,), "stamp-continuous")],
    "null": [  # type I error: many null replications, a binary and a continuous shape
        ("stamp-null", "pipelines/stamp-null.yaml", (770,), "stamp-null-typeI"),
        ("stamp-null", "pipelines/stamp-null-continuous.yaml", (770,), "stamp-null-continuous"),
    ],
    "curve": [("stamp", "pipelines/stamp.yaml", SAMPLE_SIZES, "stamp-curve")],
}
LIBRARY_PARTS = {"development": DEVELOPMENT, "held-out": HELD_OUT}
KIND_PIPELINES = {"binary": "pipelines/stamp.yaml", "continuous": "pipelines/stamp-continuous.yaml"}


Run = tuple[str, str, tuple[int, ...], str]  # scenario, pipeline, sizes, output prefix


def library_part(part: str, kind: str, families: list[str] | None) -> list[Run]:
    """One half of the scenario library for one outcome kind: (scenario, pipeline, sizes,
    prefix) per family."""
    chosen = families or list(LIBRARY_PARTS[part])
    wrong = [f for f in chosen if f not in LIBRARY_PARTS[part]]
    if wrong:
        raise SystemExit(f"--families: {', '.join(wrong)} not in the {part} families")
    return [(scenario_of(f), KIND_PIPELINES[kind], (770,), f) for f in chosen]


def tabulate(folder: Path, title: str, command: str) -> None:
    """The families table of every family recorded in a run's folder (runs may share it,
    one family each)."""
    records = {
        f: pd.read_csv(folder / f"{f}-records.csv")
        for f in FAMILIES
        if (folder / f"{f}-records.csv").exists()
    }
    table = family_table(records)
    table.to_csv(folder / "families.csv", index=False, float_format="%.6g")
    (folder / "families.md").write_text(markdown(table, title, command))


def _callbacks(
    bar: Progress, task: Any, label: str, log: bool
) -> tuple[Callable[[str], None], Callable[[int], None]]:
    """Progress description per step; a bar step (and a log line) per replication."""

    def say(message: str) -> None:
        bar.update(task, description=f"{label} {message}")

    def done(r: int) -> None:
        bar.advance(task)
        if log:  # not a terminal: one line per replication for the log file
            print(f"{label}: replication {r + 1} done", file=sys.stderr, flush=True)

    return say, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, *LIBRARY_PARTS, "all"], default="all")
    parser.add_argument("--kind", choices=list(KIND_PIPELINES), default="binary")
    parser.add_argument("--families", nargs="+", help="some families of a library part")
    parser.add_argument("--replications", type=int, default=20)
    parser.add_argument("--test-n", type=int, default=TEST_N)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--sizes", type=int, nargs="+", help="cohort sizes (default per part)")
    parser.add_argument("--prefix-suffix", default="", help="appended to the output prefix")
    parser.add_argument(
        "--learners", nargs="+", help="replace the pipeline's training.learners (e.g. bcf)"
    )
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--tabulate", type=Path, help="only rewrite a library run folder's families table"
    )
    args = parser.parse_args(argv)
    if args.tabulate:
        if not args.tabulate.is_dir():
            parser.error(f"--tabulate: {args.tabulate} is not a folder of a library run")
        tabulate(args.tabulate, args.tabulate.name, "(the runs recorded in the folder's files)")
        return 0
    os.chdir(ROOT)  # pipeline paths are relative to the repository
    command = "python benchmarks/recovery.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    console = Console(width=200) if not Console().is_terminal else Console()
    err = Console(stderr=True)
    parts = list(PARTS) if args.part == "all" else [args.part]
    peers = () if args.no_peers else tuple(args.peers)
    for part in parts:
        library = part in LIBRARY_PARTS
        out = args.out / f"{part}-{args.kind}{args.prefix_suffix}" if library else args.out
        runs = library_part(part, args.kind, args.families) if library else PARTS[part]
        for scenario, pipeline, part_sizes, part_prefix in runs:
            sizes = tuple(args.sizes) if args.sizes else part_sizes
            prefix = part_prefix if library else part_prefix + args.prefix_suffix
            results: list[StudyResult] = []
            start = time.perf_counter()
            with Progress(
                TextColumn("{task.description:<44}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            ) as bar:
                task = bar.add_task(prefix, total=args.replications * len(sizes))
                for n in sizes:
                    say, done = _callbacks(bar, task, f"{prefix} N={n}", not err.is_terminal)
                    results.append(
                        run_study(
                            scenario,
                            pipeline,
                            replications=args.replications,
                            n=n,
                            test_n=args.test_n,
                            peers=peers,
                            seed=args.seed,
                            training={"learners": args.learners} if args.learners else None,
                            progress=say,
                            on_replication=done,
                        )
                    )
            files = write_outputs(results, out, prefix, command)
            if library:  # rewritten after each family: a run stopped early keeps what it has
                title = f"Scenario library, {part} families, {args.kind} outcome, N = 770"
                tabulate(out, title, command)
            render(summarize_results(results), f"{prefix} ({pipeline})", console)
            console.print(
                f"{prefix}: {(time.perf_counter() - start) / 60:.1f} min; wrote "
                + ", ".join(p.name for p in files.values()),
                highlight=False,
            )
            if not args.no_mlflow:
                run_id = log_to_mlflow(results, files, args.tracking_uri, command)
                console.print(f"MLflow run {run_id}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
