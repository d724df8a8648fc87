"""The `personalize` command line: the composition root. Thin: each command parses, calls
the library and renders; heavy imports happen inside commands so `--help` stays instant."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import pandas as pd

    from personalize.config import Pipeline
    from personalize.data.validate import ValidationReport

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
    """The message on stderr, unwrapped (one line stays one line), and the exit code."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _pipeline(path: Path) -> Pipeline:
    """The pipeline file, through the one loader; a missing file is a usage error (2), a
    file that cannot be used is a failure (1), each one line naming the file."""
    from personalize.config import PipelineError, PipelineNotFound, load_pipeline

    try:
        return load_pipeline(path)
    except PipelineNotFound as exc:
        fail(str(exc))
    except PipelineError as exc:
        fail(str(exc), code=1)


@app.command()
def simulate(
    scenario: Annotated[str | None, typer.Option(help="stamp, stamp-null or optimum")] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="cohort file (.csv or .parquet)")
    ] = None,
    n: Annotated[int | None, typer.Option(help="patients (default: the trial's size)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed; same seed, same bytes")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="write each patient's true per-arm quantities here")
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="take scenario, n, seed and --out from this pipeline's cohort block"),
    ] = None,
) -> None:
    """Generate a SYNTHETIC two-arm trial with known potential outcomes."""
    from personalize.data.simulate import SCENARIOS
    from personalize.data.simulate import simulate as run
    from personalize.data.table import TableError, write_table

    if pipeline is not None:
        spec = _pipeline(pipeline)
        if spec.cohort.simulate is None or spec.cohort.path is None:
            fail(f"--pipeline: {pipeline} has no cohort.simulate block and cohort.path")
        scenario = scenario or spec.cohort.simulate.scenario
        n = n if n is not None else spec.cohort.simulate.n
        seed = seed if seed is not None else spec.cohort.simulate.seed
        out_path = out_path or Path(spec.cohort.path)
        if truth is None:
            truth = out_path.with_name(f"{out_path.stem}_truth{out_path.suffix}")
    if scenario is None or out_path is None:
        fail("give --scenario and --out, or --pipeline")
    if scenario not in SCENARIOS:
        fail(f"--scenario: unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if n is not None and n < 10:
        fail("--n: need at least 10 patients")
    seed = 0 if seed is None else seed
    try:
        trial = run(scenario, n=n, seed=seed)
        write_table(trial.cohort, out_path)
        if truth is not None:
            write_table(trial.truth, truth)
    except (TableError, ValueError) as exc:
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
    from personalize.data.validate import validate as check

    spec, frame = _load(pipeline, cohort)
    report = check(frame, spec)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _render_report(report, cohort or Path(spec.cohort.path or ""))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def train(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML file")],
    cohort: Annotated[Path | None, typer.Option(help="cohort file (default: cohort.path)")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: models/mlflow.db)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a one-line JSON summary last")
    ] = False,
) -> None:
    """Train, evaluate out of fold, explain, and register a model version as `candidate`."""
    from personalize import registry, training

    spec, frame = _load(pipeline, cohort)
    total = training.progress_steps(spec)
    uri = tracking_uri or registry.default_tracking_uri()
    name = spec.registry.model_name

    def waiting() -> None:
        err.print(f"another training of {name} holds this registry; waiting", highlight=False)

    # held until the report is printed: the version shown as candidate is the candidate
    with registry.training_lock(uri, name, on_wait=waiting):
        _train(spec, frame, uri, total, cohort, as_json)


def _train(
    spec: Pipeline, frame: pd.DataFrame, uri: str, total: int, cohort: Path | None, as_json: bool
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from personalize import registry
    from personalize.data.validate import CohortError

    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("validating", total=total)

        def step(name: str) -> None:
            progress.update(task, advance=1, description=name)

        try:
            reg = registry.train(spec, frame, uri, step=step)
        except CohortError as exc:
            progress.stop()
            _render_report(exc.report, cohort or Path(spec.cohort.path or ""))
            fail("training refused: the cohort failed validation (nothing registered)", code=1)
    s = reg.summary
    out.print(
        f"registered [bold]{reg.model_name}[/] version {reg.version} as {registry.CANDIDATE!r} "
        f"(run {reg.run_id})",
        highlight=False,
    )
    out.print(f"learner: {s['learner']}; {s['evidence']}", highlight=False)
    out.print(
        f"average effect {s['ate']:+.3f} (95% CI {s['ate_ci'][0]:+.3f} to "
        f"{s['ate_ci'][1]:+.3f}); AUTOC {s['autoc']:+.3f} (95% CI {s['autoc_ci'][0]:+.3f}"
        f" to {s['autoc_ci'][1]:+.3f})",
        highlight=False,
    )
    if spec.synthetic:
        out.print("[yellow]trained on SYNTHETIC data[/]")
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": reg.run_id,
                    "model_name": reg.model_name,
                    "version": reg.version,
                    "alias": registry.CANDIDATE,
                    "synthetic": spec.synthetic,
                    **s,
                }
            )
        )


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="model version, or an alias (candidate)")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Move alias `champion` to NAME/VERSION if its promotion gates pass."""
    from personalize import registry

    try:
        version, checks = registry.promote(name, version, tracking_uri)
    except registry.GateError as exc:
        fail(f"not promoted: {exc}", code=1)
    for check in checks:
        if check.startswith(registry.CHECK_WARNING):
            out.print(f"  [yellow]warning[/]: {check}", highlight=False)
        else:
            out.print(f"  passed: {check}", highlight=False)
    out.print(f"{name} version {version} is now {registry.CHAMPION!r}", highlight=False)


def _load(pipeline: Path, cohort: Path | None) -> tuple[Pipeline, pd.DataFrame]:
    from personalize.data.table import TableError, read_table

    spec = _pipeline(pipeline)
    path = cohort or (Path(spec.cohort.path) if spec.cohort.path else None)
    if path is None:
        fail("no cohort: pass --cohort or set cohort.path in the pipeline file")
    try:
        return spec, read_table(path)
    except TableError as exc:
        fail(str(exc))


def _render_report(report: ValidationReport, path: Path) -> None:
    arms = ", ".join(f"{k}: {v}" for k, v in report.arm_counts.items())
    observed = ", ".join(f"{k}: {v}" for k, v in report.observed_counts.items())
    out.print(
        f"[bold]{path}[/]: {report.n_rows} rows; arms {arms or '-'}; "
        f"observed outcomes {observed or '-'}",
        highlight=False,
    )
    t = report.thresholds
    out.print(
        f"thresholds: at least {t['min_per_arm']} patients and "
        f"{t['min_observed_per_arm']} observed outcomes per arm",
        highlight=False,
    )
    if report.missing_counts:
        missing = ", ".join(f"{k} {v}" for k, v in report.missing_counts.items())
        out.print(f"missing covariate values (allowed): {missing}", highlight=False)
    if report.ignored_columns:
        out.print(
            f"undeclared columns, ignored: {', '.join(report.ignored_columns)}", highlight=False
        )
    if report.ok:
        out.print("[green]valid[/]")
        return
    out.print(f"[bold red]{len(report.problems)} problem(s):[/]")
    for problem in report.problems:
        out.print(f"  - {problem.describe()}", highlight=False, soft_wrap=True)
    out.print("[red]invalid[/]")


# --- the HTTP service (service/): serve, keys -------------------------------------------


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="model URI (default: models:/<the pipeline's model name>@champion)"),
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="pipeline file naming the default model (default pipelines/stamp.yaml)"),
    ] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Run the HTTP service (recommendations, model card, CDS Hooks, metrics)."""
    from personalize.service.commands import CommandError
    from personalize.service.commands import serve as run

    try:
        run(
            model=model,
            pipeline=pipeline,
            host=host,
            port=port,
            workers=workers,
            tracking_uri=tracking_uri,
            echo=lambda text: err.print(text, highlight=False, soft_wrap=True),
        )
    except CommandError as exc:
        fail(str(exc))


keys_app = typer.Typer(
    help="API keys for the service; only salted hashes are stored (audit database).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
DatabaseUrl = Annotated[
    str | None,
    typer.Option(help="audit database URL (default: PERSONALIZE_DATABASE_URL, models/service.db)"),
]


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="clinician, researcher or admin")],
    note: Annotated[str | None, typer.Option(help="who or what the key is for")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key and print it ONCE (stdout); only its salted hash is stored."""
    from personalize.service.commands import CommandError
    from personalize.service.commands import keys_create as run

    try:
        key_id, key = run(role, note, database_url)
    except CommandError as exc:
        fail(str(exc))
    err.print(
        f"created key {key_id} with role {role}; it is shown once, store it now", highlight=False
    )
    print(key)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (from keys list)")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key; every replica refuses it from the next request on."""
    from personalize.service.commands import CommandError
    from personalize.service.commands import keys_revoke as run

    try:
        run(key_id, database_url)
    except CommandError as exc:
        fail(str(exc), code=1)
    out.print(f"revoked key {key_id}", highlight=False)


@keys_app.command("list")
def keys_list(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List keys (id, role, note, created, revoked); never the secrets."""
    from personalize.service.commands import CommandError
    from personalize.service.commands import keys_list as run

    try:
        rows = run(database_url)
    except CommandError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        out.print(
            f"{r['key_id']}  {r['role']:<10}  created {r['created_at']}  {state}"
            + (f"  {r['note']}" if r["note"] else ""),
            highlight=False,
        )


@app.command()
def score(
    input_path: Annotated[Path, typer.Argument(help="referral list (.csv or .parquet)")],
    out_path: Annotated[
        Path,
        typer.Option("--out", help="scored rows (.csv or .parquet; a directory with spark)"),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="model URI (default: models:/<--pipeline's model name>@champion)"),
    ] = None,
    pipeline: Annotated[
        Path | None, typer.Option(help="pipeline YAML whose registered model to use")
    ] = None,
    explain: Annotated[int, typer.Option(help="top drivers per patient (0: none)")] = 3,
    rejects: Annotated[
        Path | None, typer.Option(help="rejected rows (default: OUTPUT's name + .rejects)")
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or spark (Parquet in and out)")] = "local",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
    chunk_size: Annotated[int, typer.Option(help="rows per chunk (bounds memory)")] = 50_000,
    threads: Annotated[
        int | None, typer.Option(help="threads for the tree kernels (default: all cores)")
    ] = None,
    spark_master: Annotated[
        str | None, typer.Option(help="Spark master for --engine spark (e.g. local[4])")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON last")] = False,
) -> None:
    """Score a referral list: every row ends in OUTPUT or in the rejects file."""
    import logging
    import signal

    from personalize import registry
    from personalize.batch import ScoringError, os_reason, paths, scoring

    if engine not in ("local", "spark"):
        fail(f"--engine: choose local or spark, not {engine!r}")
    if model is None:
        if pipeline is None:
            fail("pass --model URI, or --pipeline PIPELINE.yaml to score with its champion")
        model = registry.ModelRef.champion(_pipeline(pipeline)).uri
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def terminate(signum: int, frame: object) -> None:  # kill: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        if engine == "local":  # refused before the model is even loaded
            paths.check_paths(input_path, out_path, rejects or paths.default_rejects_path(out_path))
        resolved = scoring.resolve_model(model, tracking_uri)
        if engine == "spark":
            from personalize.batch import spark_scoring

            summary = spark_scoring.score_spark(
                resolved,
                input_path,
                out_path,
                explain=explain,
                rejects_path=rejects,
                chunk_size=chunk_size,
                spark=spark_scoring.session(spark_master),
            )
        else:
            summary = scoring.score_file(
                resolved.model,
                input_path,
                out_path,
                model_name=resolved.name,
                model_version=resolved.version,
                explain=explain,
                rejects_path=rejects,
                chunk_size=chunk_size,
                threads=threads,
                progress=err.is_terminal,
            )
    except ScoringError as exc:
        fail(str(exc), code=1)
    except OSError as exc:  # an OS failure outside the files' own handling: one line
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{os_reason(exc)}", code=1)
    except KeyboardInterrupt:
        fail("interrupted: nothing written under the output names", code=130)
    s = summary
    out.print(
        f"scored {s.scored:,} of {s.rows_in:,} rows with {s.model_name} version "
        f"{s.model_version} into {s.output}; {s.rejected:,} rejected into {s.rejects}",
        highlight=False,
    )
    for reason, count in list(s.reasons.items())[:10]:
        out.print(f"  rejected {count:,}: {reason}", highlight=False)
    out.print(
        f"{s.rows_per_second:,.0f} rows/s, {s.seconds:.1f} s, peak RSS {s.peak_rss_mib:,.0f} MiB",
        highlight=False,
    )
    if as_json:
        print(json.dumps(s.to_dict()))


# --- the recovery study (study/) ---------------------------------------------------------


@app.command()
def study(
    scenario: Annotated[
        str | None, typer.Option(help="simulator scenario: stamp, stamp-null or optimum")
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="pipeline YAML (default: the scenario's shipped pipeline)"),
    ] = None,
    replications: Annotated[
        int, typer.Option(min=1, help="training cohorts (fresh simulations) per N")
    ] = 20,
    n: Annotated[
        list[int] | None,
        typer.Option("--n", help="patients per training cohort (default 770); repeat for a curve"),
    ] = None,
    test_n: Annotated[int, typer.Option("--test-n", min=100, help="test-set patients")] = 5000,
    peers: Annotated[
        bool,
        typer.Option(
            "--peers/--no-peers", help="fit the peers too (EconML, CausalML, stochtree BCF)"
        ),
    ] = True,
    out_dir: Annotated[
        Path, typer.Option("--out", help="directory for CSVs, plots, report")
    ] = Path("study-results"),
    seed: Annotated[int, typer.Option(help="study seed; same seed, same numbers")] = 0,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: models/mlflow.db)")
    ] = None,
    mlflow_run: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="log a run in experiment recovery-study")
    ] = True,
    bootstrap: Annotated[
        int | None,
        typer.Option(
            help="override training.bootstrap (interval ensemble size; default: the pipeline's)"
        ),
    ] = None,
) -> None:
    """Recovery study: score models trained on SYNTHETIC cohorts against the truth.

    PEHE, regret, interval coverage and heterogeneity-test rejection rates over fresh
    simulated training cohorts, on one independent simulated test set, with the peers
    (EconML, CausalML, stochtree BCF) on the same cohorts. Writes CSVs, plots and a
    markdown table to --out and logs an MLflow run in experiment `recovery-study`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from personalize.study.outputs import write_outputs
    from personalize.study.peers import PEERS, require_packages
    from personalize.study.run import StudyResult, resolve, run_study
    from personalize.study.summary import render, summarize_results
    from personalize.study.tracking import EXPERIMENT, log_to_mlflow

    console = out if out.is_terminal else Console(width=200)  # the table is wide
    sizes = n or [770]
    try:
        scen, path = resolve(scenario, pipeline)
    except ValueError as exc:
        fail(str(exc))
    peer_list: tuple[str, ...] = PEERS if peers else ()
    try:
        require_packages(peer_list)
    except ImportError as exc:
        fail(f"peers need the bench extra ({exc}); `pip install -e '.[bench]'` or pass --no-peers")
    command = "personalize study " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])
    overrides: dict[str, Any] = {"bootstrap": bootstrap} if bootstrap else {}
    results: list[StudyResult] = []
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("starting", total=replications * len(sizes))
        for size in sizes:

            def say(message: str, size: int = size) -> None:
                bar.update(task, description=f"N={size} {message}")

            results.append(
                run_study(
                    scen,
                    path,
                    replications=replications,
                    n=size,
                    test_n=test_n,
                    peers=peer_list,
                    seed=seed,
                    training=overrides,
                    progress=say,
                    on_replication=lambda _r: bar.advance(task),
                )
            )
    stem = Path(path).stem
    prefix = stem if stem.startswith(scen) else f"{scen}-{stem}"
    files = write_outputs(results, out_dir, prefix, command)
    render(summarize_results(results), f"recovery study: {scen} ({path})", console)
    console.print(f"wrote {', '.join(str(p) for p in files.values())}", highlight=False)
    if mlflow_run:
        run_id = log_to_mlflow(results, files, tracking_uri, command)
        console.print(f"MLflow run {run_id} in experiment '{EXPERIMENT}'", highlight=False)


if __name__ == "__main__":
    app()
