"""The `personalize` command line (DESIGN.md section 4). Thin: each command parses, calls the
library and renders; heavy imports happen inside commands so `--help` stays instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    import pandas as pd

    from personalize.cohort.pipeline import Pipeline
    from personalize.cohort.validate import ValidationReport

app = typer.Typer(
    help="Learn from a randomized trial which of two treatments each patient is more likely "
    "to respond to, and serve it as a calibrated, explained recommendation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="stamp, stamp-null or optimum")],
    out_path: Annotated[Path, typer.Option("--out", help="cohort file (.csv or .parquet)")],
    n: Annotated[int | None, typer.Option(help="patients (default: the trial's size)")] = None,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 0,
    truth: Annotated[
        Path | None, typer.Option(help="write each patient's true per-arm quantities here")
    ] = None,
) -> None:
    """Generate a SYNTHETIC two-arm trial with known potential outcomes."""
    from personalize.cohort.simulate import SCENARIOS
    from personalize.cohort.simulate import simulate as run
    from personalize.cohort.table import TableError, write_table

    if scenario not in SCENARIOS:
        fail(f"--scenario: unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if n is not None and n < 10:
        fail("--n: need at least 10 patients")
    try:
        trial = run(scenario, n=n, seed=seed)
        write_table(trial.cohort, out_path)
        if truth is not None:
            write_table(trial.truth, truth)
    except TableError as exc:
        fail(str(exc))
    out.print(
        f"wrote SYNTHETIC cohort '{scenario}' ({len(trial.cohort)} patients, seed {seed}) "
        f"to {out_path}" + (f"; truth to {truth}" if truth else ""),
        highlight=False,
    )


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML file")],
    cohort: Annotated[Path | None, typer.Option(help="cohort file (default: cohort.path)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a cohort against its pipeline file; list every problem (column, rows, why)."""
    from personalize.cohort.validate import validate as check

    spec, frame = _load(pipeline, cohort)
    report = check(frame, spec)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _render_report(report, cohort or Path(spec.cohort.path or ""))
    if not report.ok:
        raise typer.Exit(1)


def _load(pipeline: Path, cohort: Path | None) -> tuple[Pipeline, pd.DataFrame]:
    from personalize.cohort.pipeline import PipelineError, load_pipeline
    from personalize.cohort.table import TableError, read_table

    try:
        spec = load_pipeline(pipeline)
        path = cohort or (Path(spec.cohort.path) if spec.cohort.path else None)
        if path is None:
            fail("no cohort: pass --cohort or set cohort.path in the pipeline file")
        return spec, read_table(path)
    except (PipelineError, TableError) as exc:
        fail(str(exc))


def _render_report(report: ValidationReport, path: Path) -> None:
    arms = ", ".join(f"{k}: {v}" for k, v in report.arm_counts.items())
    observed = ", ".join(f"{k}: {v}" for k, v in report.observed_counts.items())
    out.print(f"[bold]{path}[/]: {report.n_rows} rows; arms {arms or '-'}; "
              f"observed outcomes {observed or '-'}", highlight=False)
    t = report.thresholds
    out.print(f"thresholds: at least {t['min_per_arm']} patients and "
              f"{t['min_observed_per_arm']} observed outcomes per arm", highlight=False)
    if report.missing_counts:
        missing = ", ".join(f"{k} {v}" for k, v in report.missing_counts.items())
        out.print(f"missing covariate values (allowed): {missing}", highlight=False)
    if report.ignored_columns:
        out.print(f"undeclared columns, ignored: {', '.join(report.ignored_columns)}",
                  highlight=False)
    if report.ok:
        out.print("[green]valid[/]")
        return
    out.print(f"[bold red]{len(report.problems)} problem(s):[/]")
    for problem in report.problems:
        out.print(f"  - {problem.describe()}", highlight=False, soft_wrap=True)
    out.print("[red]invalid[/]")


if __name__ == "__main__":
    app()
