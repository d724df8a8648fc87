"""MLflow tracking and registry: real SQLite store, and a real tracking server on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from personalize import registry, training
from personalize.cli import app
from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import simulate
from personalize.data.table import write_table
from personalize.data.validate import CohortError
from support.postgres import PostgresDatabase
from support.servers import free_port, stop, wait_ok
from support.trials import toy_pipeline, toy_trial

pytestmark = pytest.mark.slow


def small(name: str = "stamp", **gates: object) -> Pipeline:
    spec = load_pipeline(f"pipelines/{name}.yaml")
    update: dict[str, object] = {
        "training": spec.training.model_copy(
            update={"bootstrap": 10, "learners": ["t", "effect_linear"]}
        ),
        "name": f"{spec.name}-{uuid.uuid4().hex[:6]}",
    }
    if gates:
        update["gates"] = spec.gates.model_copy(update=gates)
    return spec.model_copy(update=update)


@pytest.fixture
def uri(tmp_path: Path) -> str:
    """A store of each test's own, not the session's trained registry: what these tests
    check is what training registers (versions, aliases, failed runs) from empty."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate("stamp", 500, 21).cohort


def test_train_registers_a_candidate_with_everything_logged(uri: str, cohort) -> None:
    spec = small()
    reg = registry.train(spec, cohort, uri)
    client = MlflowClient(uri)
    run = client.get_run(reg.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["synthetic"] == "true" and run.data.tags["missing"] == "ipcw"
    assert run.data.tags["cohort_sha256"] == training.cohort_hash(cohort)
    for key in (
        "blp/differential_p_value",
        "heterogeneity/p_adjusted",
        "autoc/estimate",
        "calibration/MBT/brier",
        "candidate/t/dr_loss",
        "ipcw/effective_sample_size",
    ):
        assert key in run.data.metrics, key
    (dataset,) = run.inputs.dataset_inputs  # the cohort, as MLflow's dataset
    assert dataset.dataset.digest and dataset.dataset.name == spec.name
    assert "participant_id" in dataset.dataset.schema
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    assert run.data.params["learner/name"] == run.data.tags["learner"]  # the chosen one
    assert run.data.params["learner/kind"] == "binary"
    version = client.get_model_version(spec.registry.model_name, reg.version)
    assert "Intended use" in version.description and "SYNTHETIC" in version.description
    assert run.data.params["outcome.followup"] == "bpi_severity_m6"
    artifacts = {a.path for a in client.list_artifacts(reg.run_id)}
    assert {
        "model_card.md",
        "model_card.json",
        "validation_report.json",
        "evidence.json",
        "package_versions.json",
        "pipeline.json",
        "plots",
    } <= artifacts
    plots = {a.path for a in client.list_artifacts(reg.run_id, "plots")}
    assert "plots/reliability.png" in plots and "plots/toc.png" in plots
    card = Path(
        mlflow.artifacts.download_artifacts(
            run_id=reg.run_id, artifact_path="model_card.md", tracking_uri=uri
        )
    ).read_text()
    assert "SYNTHETIC" in card and f"| Version | {reg.version} |" in card
    mv = client.get_model_version_by_alias(spec.registry.model_name, "candidate")
    assert str(mv.version) == reg.version == "1"

    # the registered pyfunc and the PersonalizeModel answer identically
    patients = simulate("stamp", 20, 5).cohort
    numeric = [n for n, f in spec.features.items() if f.type == "numeric"]
    patients[numeric] = patients[numeric].astype(float)  # the signature's type: double
    pyfunc = mlflow.pyfunc.load_model(f"models:/{spec.registry.model_name}@candidate")
    via_pyfunc = pyfunc.predict(patients, params={"explain": 2})
    model = registry.load_model(f"models:/{spec.registry.model_name}@candidate", uri)
    direct = model.predict(patients, explain=2)
    pd.testing.assert_frame_equal(via_pyfunc.reset_index(drop=True), direct)
    assert model.info.card is not None and model.info.card["synthetic"] is True

    again = registry.train(spec, cohort, uri)
    assert again.version == "2"
    assert (
        str(client.get_model_version_by_alias(spec.registry.model_name, "candidate").version) == "2"
    )


def test_invalid_cohort_fails_the_run_and_registers_nothing(uri: str, cohort) -> None:
    spec = small()
    bad = cohort.assign(arm=cohort["arm"].where(cohort.index != 0, "placebo"))
    with pytest.raises(CohortError, match="arm label not one of"):
        registry.train(spec, bad, uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.name)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="validation_report.json", tracking_uri=uri
            )
        ).read_text()
    )
    assert report["ok"] is False
    assert client.search_model_versions(f"name = '{spec.registry.model_name}'") == []


def test_exception_midway_fails_the_run_and_registers_nothing(
    uri: str, cohort, monkeypatch
) -> None:
    spec = small()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full while writing the figures")

    monkeypatch.setattr("personalize.report.figures", broken)  # a fault injected mid-run
    with pytest.raises(RuntimeError, match="disk full"):
        registry.train(spec, cohort, uri)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_model_versions(f"name = '{spec.registry.model_name}'") == []


def test_promote_moves_champion_only_through_the_gates(uri: str, cohort) -> None:
    strict = small(calibration_slope=(5.0, 6.0), max_ece=0.0001)  # far beyond any slope's CI
    reg = registry.train(strict, cohort, uri)
    with pytest.raises(registry.GateError, match="gates failed: calibration slope"):
        registry.promote(reg.model_name, reg.version, uri)
    client = MlflowClient(uri)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(reg.model_name, "champion")

    lenient = small(calibration_slope=(-100.0, 100.0), max_ece=1.0)
    reg = registry.train(lenient, cohort, uri)
    version, checks = registry.promote(reg.model_name, "candidate", uri)
    assert version == reg.version
    assert any("calibration slope MBT" in c for c in checks)
    assert str(client.get_model_version_by_alias(reg.model_name, "champion").version) == reg.version
    with pytest.raises(registry.GateError, match="no model version"):
        registry.promote(reg.model_name, "99", uri)


def test_a_model_whose_checks_fired_is_promoted_only_under_checks_warn(uri: str) -> None:
    """A linear model of a U-shaped benefit fails its flexible-comparator check: `promote`
    refuses it, naming the check and why; the same pipeline with `checks: warn` promotes
    it and says what fired."""
    frame = toy_trial("u", 800, seed=1)
    blocked = toy_pipeline(name=f"toy-{uuid.uuid4().hex[:6]}")
    reg = registry.train(blocked, frame, uri)
    tags = MlflowClient(uri).get_model_version(reg.model_name, reg.version).tags
    assert tags["check.comparator.fired"] == "true"
    with pytest.raises(registry.GateError, match=r"model checks fired.*flexible comparator"):
        registry.promote(reg.model_name, reg.version, uri)
    client = MlflowClient(uri)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(reg.model_name, "champion")
    metrics = client.get_run(reg.run_id).data.metrics
    assert metrics["check/comparator/fired"] == 1.0 and metrics["check/passed"] == 0.0

    warned = toy_pipeline(name=f"toy-{uuid.uuid4().hex[:6]}", checks="warn")
    reg = registry.train(warned, frame, uri)
    version, checks = registry.promote(reg.model_name, "candidate", uri)
    assert version == reg.version
    assert any(c.startswith(registry.CHECK_WARNING) and "flexible comparator" in c for c in checks)
    model = registry.load_model(f"models:/{reg.model_name}/{reg.version}", uri)
    assert not model.checks_passed


def test_complete_case_runs_are_tagged(uri: str, cohort) -> None:
    spec = small()
    spec = spec.model_copy(
        update={"outcome": spec.outcome.model_copy(update={"missing": "complete_case"})}
    )
    reg = registry.train(spec, cohort, uri)
    tags = MlflowClient(uri).get_run(reg.run_id).data.tags
    assert tags["complete_case"] == "true" and tags["missing"] == "complete_case"


def test_cli_train_json_and_promote(tmp_path: Path, uri: str) -> None:
    path = tmp_path / "cohort.parquet"
    write_table(simulate("optimum", 451, 3).cohort, path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", "pipelines/optimum.yaml", "--cohort", str(path), "--tracking-uri", uri, "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["model_name"] == "personalize-optimum" and summary["version"] == "1"
    assert summary["synthetic"] is True and "learner" in summary
    result = runner.invoke(app, ["promote", "personalize-optimum", "7", "--tracking-uri", uri])
    assert result.exit_code == 1 and "no model version" in result.output
    bad = tmp_path / "bad.parquet"
    write_table(simulate("optimum", 451, 3).cohort.assign(group="usual_care"), bad)
    result = runner.invoke(
        app, ["train", "pipelines/optimum.yaml", "--cohort", str(bad), "--tracking-uri", uri]
    )
    assert result.exit_code == 1
    assert "only one arm present" in result.output and "nothing registered" in result.output


# --- a real MLflow tracking server backed by PostgreSQL on 127.0.0.1:5432 -------------------


@pytest.fixture
def postgres_server(tmp_path: Path, postgres_db: PostgresDatabase) -> Iterator[str]:
    """`mlflow server` on a free loopback port, its store a fresh PostgreSQL database."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                postgres_db.url,
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ok(f"{url}/health", server, log.read_text)
        yield url
    finally:
        stop(server)


def test_training_against_a_postgres_backed_tracking_server(postgres_server: str, cohort) -> None:
    spec = small()
    reg = registry.train(spec, cohort, postgres_server)
    client = MlflowClient(postgres_server)
    assert client.get_run(reg.run_id).info.status == "FINISHED"
    assert (
        str(client.get_model_version_by_alias(spec.registry.model_name, "candidate").version) == "1"
    )
    model = registry.load_model(f"models:/{spec.registry.model_name}@candidate", postgres_server)
    pred = model.predict(simulate("stamp", 5, 1).cohort)
    assert np.isfinite(pred["benefit"]).all()
