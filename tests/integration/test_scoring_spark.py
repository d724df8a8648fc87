"""`--engine spark` in Spark local mode: the same rows out, bit for bit, as the local engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from personalize.batch import ScoringError, checking, scoring
from personalize.data.simulate import simulate
from personalize.data.table import write_table
from support.registry import TrainedRegistry

pyspark = pytest.importorskip("pyspark")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from personalize.batch import spark_scoring

    session = spark_scoring.session("local[2]", app_name="personalize-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def registered(trained_registry: TrainedRegistry) -> scoring.ResolvedModel:
    """The session's STAMP champion (tests/support/registry.py)."""
    return scoring.resolve_model(trained_registry.champion(), trained_registry.uri)


def test_spark_and_local_engines_give_identical_outputs(
    spark: Any, registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    from personalize.batch import spark_scoring

    model = registered.model
    frame = simulate("stamp", 4000, 14).cohort[checking.required_columns(model.pipeline)]
    frame["age"] = frame["age"].astype(float)
    frame.loc[::9, "mme"] = np.nan
    frame.loc[10, "age"] = 5.0
    frame.loc[3500, "participant_id"] = frame.loc[20, "participant_id"]  # far apart: other tasks
    frame.loc[2000, "sex"] = "other"
    frame.loc[2001, list(frame.columns)] = None
    write_table(frame, tmp_path / "in.parquet")

    local = scoring.score_file(
        model, tmp_path / "in.parquet", tmp_path / "local.parquet",
        model_name=registered.name, model_version=registered.version, chunk_size=1000,
    )  # fmt: skip
    remote = spark_scoring.score_spark(
        registered, tmp_path / "in.parquet", tmp_path / "spark.parquet", chunk_size=700,
        spark=spark,
    )  # fmt: skip
    assert (remote.rows_in, remote.scored, remote.rejected) == (4000, 3996, 4)
    assert (local.rows_in, local.scored, local.rejected) == (4000, 3996, 4)
    assert remote.reasons == local.reasons
    assert (tmp_path / "spark.parquet").is_dir()  # Spark writes a directory of parts
    a = pd.read_parquet(tmp_path / "local.parquet")
    b = pd.read_parquet(tmp_path / "spark.parquet")
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same rows, same order, same bits
    ra = pd.read_parquet(tmp_path / "local.rejects.parquet")
    rb = pd.read_parquet(tmp_path / "spark.rejects.parquet")
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    assert ra["row"].tolist() == [11, 2001, 2002, 3501]
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [h for h in hidden if h.endswith(".tmp")]


def test_spark_engine_refuses_missing_columns(
    spark: Any, registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    from personalize.batch import spark_scoring

    frame = simulate("stamp", 50, 1).cohort[checking.required_columns(registered.model.pipeline)]
    write_table(frame.drop(columns=["sex"]), tmp_path / "in.parquet")
    with pytest.raises(ScoringError, match="missing required column"):
        spark_scoring.score_spark(
            registered, tmp_path / "in.parquet", tmp_path / "o.parquet", spark=spark
        )
    assert not (tmp_path / "o.parquet").exists()
