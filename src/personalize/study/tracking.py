"""A study as one MLflow run in experiment `recovery-study`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from personalize.registry import _artifact_root, default_tracking_uri
from personalize.study.run import StudyResult
from personalize.study.summary import summarize_results

EXPERIMENT = "recovery-study"


def log_to_mlflow(
    results: Sequence[StudyResult],
    files: dict[str, Path],
    tracking_uri: str | None,
    command: str,
) -> str:
    """One run in experiment `recovery-study`: setup as params, summary medians as metrics,
    the CSVs, plots and report as artifacts. Returns the run id."""
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        root = _artifact_root(uri)
        exp_id = client.create_experiment(
            EXPERIMENT, artifact_location=f"{root}/{EXPERIMENT}" if root else None
        )
    else:
        exp_id = exp.experiment_id
    first = results[0]
    ns = "-".join(str(r.n) for r in results)
    summary = summarize_results(results)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{first.scenario}-n{ns}") as run:
        mlflow.log_params(
            {
                "scenario": first.scenario,
                "pipeline": first.pipeline_path,
                "n": ns,
                "replications": first.replications,
                "test_n": first.test_n,
                "seed": first.seed,
                "methods": ",".join(first.methods),
                "interval_level": first.level,
            }
        )
        mlflow.set_tag("command", command)
        mlflow.set_tag("synthetic", "true")
        metrics: dict[str, float] = {}
        for _, r in summary.iterrows():
            for key, value in r.items():
                if (
                    isinstance(value, int | float)
                    and key not in ("n", "replications")
                    and (math.isfinite(float(value)))
                ):
                    metrics[f"n{int(r['n'])}_{r['method']}_{key}"] = float(value)
        mlflow.log_metrics(metrics)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)
