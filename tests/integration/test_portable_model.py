"""The registered model travels: a fresh virtual environment with only the model's own
dependencies (`mlflow.pyfunc.get_model_dependencies`) loads it by alias and predicts the
cohort file as `pandas.read_csv` reads it (integer columns) and a frame without optional
columns; `mlflow models serve` from that environment answers `/invocations`; and
`mlflow.pyfunc.spark_udf` scores a Spark frame. Every number equals `personalize score`'s.

The environment is built once per requirements set under ~/.cache/personalize-tests (pip's
wheel cache makes it quick after the first time)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from personalize.data.simulate import simulate
from support.registry import STAMP_MODEL, TrainedRegistry
from support.servers import cli, free_port, stop, wait_ok

pytestmark = pytest.mark.slow

COMPARED = ["benefit", "benefit_lower", "benefit_upper", "outcome_treatment", "outcome_control"]
DROPPED = ["bpi_interference", "odi", "delivery"]  # optional columns an input may lack


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New patients as a CSV, integer columns and all (baseline columns only)."""
    sim = simulate("stamp", 60, 11).cohort
    path = tmp_path_factory.mktemp("portable") / "patients.csv"
    baseline = [c for c in sim.columns if c not in ("arm", "site") and not re.search(r"_m\d+$", c)]
    sim[baseline].to_csv(path, index=False)
    return path


def scored(path: Path, trained: TrainedRegistry, out: Path) -> pd.DataFrame:
    done = cli(
        "score", str(path), "--out", str(out), "--model", trained.champion(),
        "--tracking-uri", trained.uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return pd.read_csv(out)


def model_venv(trained: TrainedRegistry) -> Path:
    """A virtual environment with nothing but the model's dependencies."""
    mlflow.set_tracking_uri(trained.uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(trained.champion()))
    text = requirements.read_text()
    assert "personalize" not in text.lower().replace("personalize-", "")
    digest = hashlib.sha256(f"{sys.version}{text}".encode()).hexdigest()[:16]
    venv = Path.home() / ".cache" / "personalize-tests" / f"pyfunc-{digest}"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=1500)
        (venv / ".ready").touch()
    return venv


@pytest.fixture(scope="module")
def venv(trained_registry: TrainedRegistry) -> Path:
    return model_venv(trained_registry)


def test_a_fresh_environment_loads_the_model_by_alias_and_predicts_as_the_scorer(
    venv: Path, trained_registry: TrainedRegistry, cohort_csv: Path, tmp_path: Path
) -> None:
    python = venv / "bin" / "python"
    has = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('personalize'))"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert has.stdout.strip() == "None"  # the project is not installed there
    script = textwrap.dedent(
        f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({trained_registry.uri!r})
        model = mlflow.pyfunc.load_model({trained_registry.champion()!r})
        frame = pd.read_csv({str(cohort_csv)!r})
        assert str(frame["age"].dtype) == "int64", frame.dtypes
        model.predict(frame).to_csv({str(tmp_path / "full.csv")!r}, index=False)
        partial = frame.drop(columns={DROPPED!r})
        model.predict(partial).to_csv({str(tmp_path / "partial.csv")!r}, index=False)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    expected = scored(cohort_csv, trained_registry, tmp_path / "scored.csv")
    full = pd.read_csv(tmp_path / "full.csv")
    for column in COMPARED:
        np.testing.assert_allclose(full[column], expected[column], rtol=0, atol=1e-9)
    assert list(full["recommendation"]) == list(expected["recommendation"])

    partial_csv = tmp_path / "partial-in.csv"  # the scorer's file has the columns, empty
    pd.read_csv(cohort_csv).assign(**dict.fromkeys(DROPPED)).to_csv(partial_csv, index=False)
    expected_partial = scored(partial_csv, trained_registry, tmp_path / "scored-partial.csv")
    partial = pd.read_csv(tmp_path / "partial.csv")
    for column in COMPARED:
        np.testing.assert_allclose(partial[column], expected_partial[column], rtol=0, atol=1e-9)
    assert not np.allclose(partial["benefit"], full["benefit"])  # the columns mattered


def test_mlflow_models_serve_answers_invocations_from_that_environment(
    venv: Path, trained_registry: TrainedRegistry, cohort_csv: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFLOW_TRACKING_URI"] = trained_registry.uri
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "models", "serve", "-m", trained_registry.champion(),
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url + "/ping", process, lambda: log.read_text(errors="replace"), timeout=240)
        frame = pd.read_csv(cohort_csv).drop(columns=DROPPED).head(20)
        body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        request = urllib.request.Request(
            url + "/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        stop(process)
    partial_csv = tmp_path / "in.csv"
    frame.assign(**dict.fromkeys(DROPPED)).to_csv(partial_csv, index=False)
    expected = scored(partial_csv, trained_registry, tmp_path / "scored.csv")
    for column in COMPARED:
        np.testing.assert_allclose(answer[column], expected[column], rtol=0, atol=1e-9)


def test_spark_udf_scores_a_spark_frame_as_the_scorer(
    trained_registry: TrainedRegistry,
    cohort_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import struct

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # Spark's workers: this venv

    mlflow.set_tracking_uri(trained_registry.uri)
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    try:
        frame = pd.read_csv(cohort_csv)
        udf = mlflow.pyfunc.spark_udf(
            spark,
            trained_registry.champion(),
            result_type=", ".join(f"{c} double" for c in COMPARED),
            env_manager="local",
        )
        sdf = spark.createDataFrame(frame)
        named = struct(*frame.columns)  # by name: the input's order is not the signature's
        out = sdf.withColumn("scored", udf(named)).select("participant_id", "scored.*")
        got = out.toPandas().set_index("participant_id").loc[frame["participant_id"]]
    finally:
        spark.stop()
    expected = scored(cohort_csv, trained_registry, tmp_path / "scored.csv")
    for column in COMPARED:
        np.testing.assert_allclose(got[column].to_numpy(), expected[column], rtol=0, atol=1e-9)
    assert STAMP_MODEL in trained_registry.champion()
