"""Batch scoring benchmark: one run, one machine, the same registered models.

    .venv/bin/python benchmarks/score.py [--rows 1000000] [--small 200000] [--repeat 3]
        [--models t,x,default,effect_linear,risk_linear]

1. Trains and registers demo models (SYNTHETIC STAMP cohort, 770 patients) in a temporary
   MLflow store: a T-learner and an X-learner over LightGBM (forced with
   training.learners, so the bootstrap ensemble is 50 x 2 or 50 x 3 boosters) and the
   pipeline's default choice (whatever training selects).
2. Generates a referral list of --rows synthetic patients (baseline covariates only, the
   simulator in chunks of 100k, fresh ids) as Parquet, and a --small one.
3. End to end, Parquet in and Parquet out, intervals and top-3 drivers: `personalize score`
   in a fresh process per run (its own peak RSS), --repeat times; medians are reported.
4. On a 100k-row sample of the same list and the same boosters (the learner's), one
   thread each, median of --repeat: LightGBM plain prediction (the floor), LightGBM
   pred_contrib (what SHAP's TreeExplainer calls), the compiled contributions, the
   compiled raw scores; the whole interval ensemble through LightGBM and compiled; the
   MLflow pyfunc predict path; and PersonalizeModel.predict with the compiled paths
   switched off (the code before this change) on a smaller sample.

Writes benchmarks/results/score.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from personalize import fast_trees, registry
from personalize.batch import checking, scoring
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.model import PersonalizeModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "score.md"
SEED = 2  # a cohort in which the forced learners find heterogeneity (benefit slope > 0),
# so the interval really uses the bootstrap members (with a slope of 0 it skips them)


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train(learners: list[str] | None, uri: str) -> scoring.ResolvedModel:
    spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
    tag = "-".join(learners) if learners else "default"
    name = f"bench-score-{tag}-{uuid.uuid4().hex[:4]}"
    training = (
        spec.training
        if learners is None
        else spec.training.model_copy(update={"learners": learners})
    )
    spec = spec.model_copy(
        update={
            "name": name,
            "training": training,
            "registry": spec.registry.model_copy(update={"model_name": name}),
        }
    )
    reg = registry.train(spec, simulate("stamp", 770, SEED).cohort, uri)
    return scoring.resolve_model(f"models:/{reg.model_name}/{reg.version}", uri)


def referral_list(model: PersonalizeModel, rows: int, path: Path, seed: int) -> None:
    cols = checking.required_columns(model.pipeline)
    id_col = model.pipeline.cohort.id
    writer: pq.ParquetWriter | None = None
    done = 0
    part = 0
    while done < rows:
        n = min(100_000, rows - done)
        frame = simulate("stamp", n, seed + part).cohort[cols].copy()
        frame[id_col] = [f"R{i:08d}" for i in range(done, done + n)]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
        done += n
        part += 1
    assert writer is not None
    writer.close()


def score_cli(resolved: scoring.ResolvedModel, uri: str, src: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "personalize.cli", "score", str(src), "--out", str(out),
        "--model", resolved.uri, "--tracking-uri", uri, "--explain", "3", "--json",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = wall
    return summary


def end_to_end(
    resolved: scoring.ResolvedModel, uri: str, src: Path, work: Path, repeat: int
) -> dict[str, Any]:
    runs = [score_cli(resolved, uri, src, work / f"scored-{i}.parquet") for i in range(repeat)]
    for i in range(repeat):
        (work / f"scored-{i}.parquet").unlink()
        (work / f"scored-{i}.rejects.parquet").unlink()
    return {
        "rows": runs[0]["rows_in"],
        "scored": runs[0]["scored"],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
        "rows_per_second": statistics.median(r["rows_per_second"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": [round(r["seconds"], 1) for r in runs],
    }


def micro(resolved: scoring.ResolvedModel, src: Path, repeat: int) -> dict[str, Any]:
    model = resolved.model
    frame = pd.read_parquet(src).iloc[:100_000].reset_index(drop=True)
    X = model.features(frame)
    learner_boosters = model.learner.boosters()
    everything = [b for m in (model.learner, *model.ensemble) for b in m.boosters()]
    out: dict[str, Any] = {
        "sample_rows": len(X),
        "learner_boosters": len(learner_boosters),
        "all_boosters": len(everything),
        "trees_per_booster": len(fast_trees.parse_model_string(
            learner_boosters[0].booster_.model_to_string()).trees) if learner_boosters else 0,
    }  # fmt: skip
    fast_trees.set_threads(1)
    model.warm()
    if learner_boosters:
        # the S-learner's booster reads one more column (the arm); evaluate it on arm 0
        Xb = X.assign(__treated__=0.0) if learner_boosters[0].n_features_in_ > X.shape[1] else X
        small = Xb.iloc[:20_000]

        def lgb_predict() -> None:
            for b in learner_boosters:
                b.predict(Xb, raw_score=True)

        def lgb_contrib() -> None:
            for b in learner_boosters:
                b.predict(small, pred_contrib=True)

        def fast_contrib() -> None:
            for b in learner_boosters:
                fast_trees.contributions(b, Xb)

        def fast_predict() -> None:
            for b in learner_boosters:
                fast_trees.single_forest(b).raw_scores(fast_trees.single_forest(b).matrix(Xb))  # type: ignore[union-attr]

        n = len(Xb)
        out["lgb_predict_rows_s"] = n / median_time(lgb_predict, repeat)
        out["lgb_pred_contrib_rows_s"] = len(small) / median_time(lgb_contrib, repeat)
        out["fast_contrib_rows_s"] = n / median_time(fast_contrib, repeat)
        out["fast_predict_rows_s"] = n / median_time(fast_predict, repeat)
        ens = everything
        sub = Xb.iloc[:10_000]

        def lgb_ensemble() -> None:
            for b in ens:
                b.predict(sub, raw_score=True)

        def fast_ensemble() -> None:
            forest = fast_trees.combined_forest(ens)
            forest.raw_scores(forest.matrix(Xb))  # type: ignore[arg-type]

        out["lgb_all_boosters_rows_s"] = len(sub) / median_time(lgb_ensemble, max(1, repeat // 2))
        out["fast_all_boosters_rows_s"] = n / median_time(fast_ensemble, repeat)
    # the whole predict path, one thread, with and without the compiled trees
    part = frame.iloc[:20_000]
    out["predict_rows_s"] = len(part) / median_time(lambda: model.predict(part), repeat)
    saved = fast_trees.HAVE_NUMBA
    tiny = frame.iloc[:2_000]
    try:
        fast_trees.HAVE_NUMBA = False
        fast_trees.clear_caches()
        out["predict_before_rows_s"] = len(tiny) / median_time(lambda: model.predict(tiny), 1)
    finally:
        fast_trees.HAVE_NUMBA = saved
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(resolved.uri)
    numeric = [n for n, spec in model.pipeline.features.items() if spec.type == "numeric"]
    typed = part.astype(dict.fromkeys(numeric, "float64"))  # the signature's types
    pyfunc.predict(typed.iloc[:10], params={"explain": 3})
    out["pyfunc_rows_s"] = len(typed) / median_time(
        lambda: pyfunc.predict(typed, params={"explain": 3}), repeat
    )
    return out


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(args: argparse.Namespace, results: dict[str, Any], load: tuple[str, str]) -> str:
    lines = [
        "# Batch scoring benchmark",
        "",
        "Command (from the repository root):",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/score.py", *sys.argv[1:]]),
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; lightgbm {metadata.version('lightgbm')}, numba "
        f"{metadata.version('numba') if fast_trees.HAVE_NUMBA else 'absent'}, pyarrow "
        f"{metadata.version('pyarrow')}. Load average at start {load[0]}, at end {load[1]} "
        "(the machine was shared: ratios within the run are the figures to trust).",
        "",
        f"Models: SYNTHETIC STAMP cohort, 770 patients (seed {SEED}), 50 bootstrap members; "
        "each learner forced with training.learners; `default` is what training chose among "
        "all candidates (on seed 1 it chooses effect_linear, hence that row too). Benefit "
        "slope (calibration for benefit) per model: "
        + ", ".join(f"{key} {res['benefit_slope']:.2f}" for key, res in results.items())
        + "; with a slope of 0 the interval does not evaluate the bootstrap members.",
        "",
        "## End to end: Parquet in, Parquet out, intervals + top-3 drivers",
        "",
        "`personalize score` in a fresh process per run (threads: all cores); seconds as the "
        "scorer reports them (model load excluded) and wall time of the whole command; "
        f"median of {args.repeat}.",
        "",
        "| model | learner | rows | scorer s | wall s | rows/s | peak RSS MiB | runs (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, res in results.items():
        for size in ("large", "small"):
            e = res.get(size)
            if e is None:
                continue
            lines.append(
                f"| {key} | {res['learner']} | {fmt(e['rows'])} | {e['seconds']:.1f} | "
                f"{e['wall_seconds']:.1f} | {fmt(e['rows_per_second'])} | "
                f"{e['peak_rss_mib']:,.0f} | {e['runs']} |"
            )
    lines += [
        "",
        "## Same boosters, one thread (100k-row sample of the same list)",
        "",
        "rows/s; `learner` = the chosen learner's boosters (2 for T, 3 for X: control "
        "model and effect models), each of 120 trees with at most 7 leaves; `all` = those "
        "plus every bootstrap member's (what the interval evaluates).",
        "",
        "predict() = PersonalizeModel.predict on 20k rows (intervals, 3 drivers, JSON).",
        "",
        "| model | LightGBM predict (floor) | LightGBM pred_contrib | compiled contributions"
        " | contributions speed-up | compiled predict | LightGBM all boosters | compiled all"
        " boosters | predict() | predict() before | MLflow pyfunc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, res in results.items():
        m = res["micro"]
        if "lgb_predict_rows_s" in m:
            speedup = m["fast_contrib_rows_s"] / m["lgb_pred_contrib_rows_s"]
            lines.append(
                f"| {key} ({m['learner_boosters']} / {m['all_boosters']} boosters) | "
                f"{fmt(m['lgb_predict_rows_s'])} | {fmt(m['lgb_pred_contrib_rows_s'])} | "
                f"{fmt(m['fast_contrib_rows_s'])} | {speedup:.0f}x | "
                f"{fmt(m['fast_predict_rows_s'])} | {fmt(m['lgb_all_boosters_rows_s'])} | "
                f"{fmt(m['fast_all_boosters_rows_s'])} | {fmt(m['predict_rows_s'])} | "
                f"{fmt(m['predict_before_rows_s'])} | {fmt(m['pyfunc_rows_s'])} |"
            )
        else:
            lines.append(
                f"| {key} (no boosters) | - | - | - | - | - | - | - | "
                f"{fmt(m['predict_rows_s'])} | {fmt(m['predict_before_rows_s'])} | "
                f"{fmt(m['pyfunc_rows_s'])} |"
            )
    lines += [
        "",
        "`predict() before` is PersonalizeModel.predict with the compiled trees switched "
        "off (LightGBM predict per booster and per bootstrap member, pred_contrib for the "
        "drivers), i.e. the path before this change. `MLflow pyfunc` is the registered "
        "model's pyfunc predict (the same predict, JSON drivers).",
        "",
        "Raw JSON:",
        "",
        "```json",
        json.dumps(results, indent=1, default=float),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--models",
        default="t,x,default,effect_linear,risk_linear",
        help="comma-separated learners (t, x, s, dr, effect_linear, risk_linear, ...) or default",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        for key in args.models.split(","):
            resolved = train(None if key == "default" else [key], uri)
            print(f"trained {key}: learner {resolved.model.info.learner}", flush=True)
            large, small = work / "referrals-large.parquet", work / "referrals-small.parquet"
            if not large.exists():
                referral_list(resolved.model, args.rows, large, seed=1000)
                referral_list(resolved.model, args.small, small, seed=5000)
            res: dict[str, Any] = {
                "learner": resolved.model.info.learner,
                "benefit_slope": resolved.model.benefit_calibration.slope,
            }
            res["large"] = end_to_end(resolved, uri, large, work, args.repeat)
            print(f"  {key} {args.rows} rows: {res['large']}", flush=True)
            if key == args.models.split(",")[0]:
                res["small"] = end_to_end(resolved, uri, small, work, args.repeat)
                print(f"  {key} {args.small} rows: {res['small']}", flush=True)
            res["micro"] = micro(resolved, small, args.repeat)
            print(f"  {key} micro: {res['micro']}", flush=True)
            results[key] = res
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(args, results, (load_start, load_end))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
