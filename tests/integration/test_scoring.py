"""The batch scorer: nothing lost, nothing partial, deterministic, equal to the service.

The session's registered STAMP champion (a T-learner over LightGBM with a short bootstrap,
tests/support/registry.py) serves the module.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from personalize import fast_trees
from personalize.batch import ScoringError, checking, scoring
from personalize.cli import app
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.data.table import write_table
from personalize.model import PersonalizeModel
from personalize.stats.prognosis import Prognosis
from support.registry import STAMP_MODEL, TrainedRegistry

pytestmark = pytest.mark.slow  # scores with the session's trained registry


@pytest.fixture(scope="module")
def registered(trained_registry: TrainedRegistry) -> scoring.ResolvedModel:
    resolved = scoring.resolve_model(trained_registry.champion(), trained_registry.uri)
    assert resolved.version == trained_registry.versions[STAMP_MODEL][0]
    # the interval must exercise the bootstrap members (a slope of 0 skips them)
    assert resolved.model.benefit_calibration.slope > 0
    return resolved


@pytest.fixture(scope="module")
def model(registered: scoring.ResolvedModel) -> PersonalizeModel:
    return registered.model


def referrals(model: PersonalizeModel, n: int, seed: int) -> pd.DataFrame:
    """A referral list: baseline covariates only (no arm, no outcomes)."""
    return simulate("stamp", n, seed).cohort[checking.required_columns(model.pipeline)]


def score(
    registered: scoring.ResolvedModel, src: Path, out: Path, **kwargs: Any
) -> scoring.ScoreSummary:
    return scoring.score_file(
        registered.model,
        src,
        out,
        model_name=registered.name,
        model_version=registered.version,
        **kwargs,
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------- nothing lost


BAD_ROWS: list[tuple[str, dict[str, str], str | None, str | None]] = [
    # (what, changes to a good row, rejected column, reason starts with) - None: scored
    ("non-numeric", {"age": "abc"}, "age", "not a finite number"),
    ("infinite", {"odi": "inf"}, "odi", "not a finite number"),
    ("below range", {"age": "5"}, "age", "below the declared minimum 21"),
    ("above range", {"odi": "150"}, "odi", "above the declared maximum 100"),
    ("unknown level", {"sex": "other"}, "sex", "unknown level"),
    ("unknown preference", {"treatment_preference": "maybe"}, "treatment_preference", "unknown"),
    ("missing id", {"participant_id": ""}, "participant_id", "missing patient id"),
    ("blank id", {"participant_id": "   "}, "participant_id", "missing patient id"),
    ("two problems", {"age": "old", "sex": "x"}, "age", "not a finite number"),
    ("padded values", {"age": " 57 ", "sex": " male "}, None, None),
    ("missing values", {"mme": "NA", "sex": "", "odi": "nan"}, None, None),
    ("scientific notation", {"mme": "1.2e2"}, None, None),
]


def seeded_csv(model: PersonalizeModel, path: Path) -> dict[str, Any]:
    """A CSV with every kind of bad row between good ones; returns what to expect."""
    good = referrals(model, 60, 11).astype(object).astype(str)
    good["note"] = 'free text, "quoted"'  # an undeclared column: ignored
    cols = list(good.columns)
    records: list[list[str] | str] = []
    expect_rows: dict[int, tuple[str, str]] = {}
    scored = 0
    for i, row in enumerate(good.to_dict("records")):
        records.append([row[c] for c in cols])
        scored += 1
        if i < len(BAD_ROWS):
            _, change, column, reason = BAD_ROWS[i]
            bad = {**row, **change, "participant_id": change.get("participant_id", f"B{i}")}
            records.append([bad[c] for c in cols])
            if column is None:
                scored += 1
            else:
                expect_rows[len(records)] = (column, reason or "")
    dup_of = good.iloc[3]["participant_id"]
    records.append([{**good.iloc[5].to_dict(), "participant_id": dup_of}[c] for c in cols])
    expect_rows[len(records)] = ("participant_id", "duplicate patient id")
    records.append([""] * len(cols))  # every field empty
    expect_rows[len(records)] = ("(row)", "empty row")
    records.append("")  # a blank line
    expect_rows[len(records)] = ("(row)", "empty row")
    malformed_after = len(records)
    records.append("P-short,1,2")  # wrong number of fields: the parser cannot read it
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(cols)
        for rec in records:
            if isinstance(rec, str):
                fh.write(rec + "\n")
            else:
                writer.writerow(rec)
    return {
        "rows": len(records),
        "scored": scored,
        "rejected_rows": expect_rows,
        "malformed_line": malformed_after + 2,  # header is line 1
        "duplicate_id": dup_of,
    }


def test_every_row_ends_in_output_or_rejects_with_column_and_reason(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    expected = seeded_csv(registered.model, tmp_path / "referrals.csv")
    summary = score(registered, tmp_path / "referrals.csv", tmp_path / "scored.parquet")
    assert summary.rows_in == expected["rows"]
    assert summary.scored == expected["scored"]
    assert summary.rejected == len(expected["rejected_rows"]) + 1  # + the malformed line
    assert summary.rows_in == summary.scored + summary.rejected
    out = pd.read_parquet(tmp_path / "scored.parquet")
    rejects = pd.read_parquet(tmp_path / "scored.rejects.parquet")
    assert len(out) == summary.scored and len(rejects) == summary.rejected
    parsed = rejects[rejects["row"].notna()].set_index("row")
    assert sorted(parsed.index) == sorted(expected["rejected_rows"])
    for row, (column, reason) in expected["rejected_rows"].items():
        assert parsed.loc[row, "column"] == column, row
        assert parsed.loc[row, "reason"].startswith(reason), (row, parsed.loc[row, "reason"])
    two = parsed[parsed["other_problems"] != ""]
    assert len(two) == 1 and two.iloc[0]["other_problems"].startswith("sex: unknown level")
    assert parsed.loc[parsed["column"] == "age", "value"].tolist()[:1] == ["abc"]
    malformed = rejects[rejects["row"].isna()]
    assert malformed["line"].tolist() == [expected["malformed_line"]]
    assert malformed["value"].isna().all()  # never the line: its other columns may be anything
    assert malformed["participant_id"].tolist() == ["P-short"]
    # scored ids are unique; only the repeated id is both scored (first) and rejected
    assert out["participant_id"].is_unique
    both = set(out["participant_id"]) & set(parsed["participant_id"].dropna())
    assert both == {expected["duplicate_id"]}
    assert summary.reasons["participant_id: missing patient id"] == 2


def test_parquet_input_with_typed_columns(model: PersonalizeModel, tmp_path: Path) -> None:
    frame = referrals(model, 300, 12)
    assert frame["phq8"].dtype == np.int64  # integer columns are read as numbers too
    frame["age"] = frame["age"].astype(float)
    frame.loc[3, "age"] = np.inf
    frame.loc[4, "mme"] = np.nan  # missing: allowed
    frame.loc[5, "odi"] = -1.0
    frame.loc[6, "sex"] = "unknown"
    frame.loc[7, "participant_id"] = frame.loc[8, "participant_id"]
    frame.loc[9, list(frame.columns)] = None
    write_table(frame, tmp_path / "in.parquet")
    resolved = scoring.ResolvedModel(model, "m", "1", "models:/m/1")
    summary = score(resolved, tmp_path / "in.parquet", tmp_path / "out.csv", chunk_size=64)
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert summary.rows_in == 300 and summary.rejected == 5 and summary.scored == 295
    assert rejects.set_index("row")["column"].to_dict() == {
        4: "age",
        6: "odi",
        7: "sex",
        9: "participant_id",
        10: "(row)",
    }


def test_missing_columns_and_bad_files_fail_before_writing_anything(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 20, 1).drop(columns=["odi"])
    write_table(frame, tmp_path / "in.csv")
    with pytest.raises(ScoringError, match=r"missing required column\(s\) \['odi'\]"):
        score(registered, tmp_path / "in.csv", tmp_path / "out.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ScoringError, match="cannot read"):
        score(registered, tmp_path / "broken.parquet", tmp_path / "out.parquet")
    with pytest.raises(ScoringError, match="unsupported extension"):
        score(registered, tmp_path / "in.csv", tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.parquet", "in.csv"]


# ----------------------------------------------------------------- nothing partial


class Boom(RuntimeError):
    pass


def test_an_exception_mid_way_leaves_no_output(
    registered: scoring.ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table(referrals(registered.model, 3000, 2), tmp_path / "in.parquet")
    (tmp_path / "scored.parquet").write_bytes(b"previous run")  # must survive untouched
    real = registered.model.predict_arrays
    calls = {"n": 0}

    def flaky(frame: pd.DataFrame, explain: int = 3) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("disk on fire")
        return real(frame, explain)

    monkeypatch.setattr(registered.model, "predict_arrays", flaky)
    with pytest.raises(Boom):
        score(registered, tmp_path / "in.parquet", tmp_path / "scored.parquet", chunk_size=500)
    assert (tmp_path / "scored.parquet").read_bytes() == b"previous run"
    assert not (tmp_path / "scored.rejects.parquet").exists()
    assert leftovers(tmp_path) == []


def test_ctrl_c_mid_way_leaves_no_output(registered: scoring.ResolvedModel, tmp_path: Path) -> None:
    write_table(referrals(registered.model, 2000, 3), tmp_path / "in.csv")

    def interrupt(rows: int) -> None:
        if rows >= 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(
            registered,
            tmp_path / "in.csv",
            tmp_path / "out.csv",
            chunk_size=500,
            on_chunk=interrupt,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def _cli(registered: scoring.ResolvedModel, tracking_uri: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "personalize.cli",
        "score",
        *args,
        "--model",
        f"models:/{registered.name}/{registered.version}",
        "--tracking-uri",
        tracking_uri,
    ]


def _start_and_wait_for_output(cmd: list[str], directory: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        temps = [p for p in directory.iterdir() if p.name.startswith(".out.parquet")]
        if temps and temps[0].stat().st_size > 10_000:  # a few chunks written
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"scorer ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the scorer never started writing")


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_killing_the_scorer_leaves_no_output(
    registered: scoring.ResolvedModel, trained_registry: TrainedRegistry, tmp_path: Path, how: str
) -> None:
    write_table(referrals(registered.model, 100_000, 4), tmp_path / "in.parquet")
    cmd = _cli(
        registered, trained_registry.uri, str(tmp_path / "in.parquet"),
        "--out", str(tmp_path / "out.parquet"), "--chunk-size", "1000", "--threads", "1",
    )  # fmt: skip
    proc = _start_and_wait_for_output(cmd, tmp_path)
    if how == "kill":
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: the temp file may remain
    else:
        proc.send_signal(signal.SIGTERM)  # handled like Ctrl-C: temp files removed
    proc.communicate(timeout=60)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "out.parquet" not in names and "out.rejects.parquet" not in names
    if how == "terminate":
        assert proc.returncode == 130
        assert names == ["in.parquet"]


# ----------------------------------------------------------------- deterministic


def test_rerun_is_byte_identical_and_chunking_does_not_matter(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    frame = referrals(registered.model, 2500, 5)
    frame.loc[10, "age"] = 3.0
    frame.loc[::17, "mme"] = np.nan
    write_table(frame, tmp_path / "in.parquet")
    for i, chunk in enumerate((1000, 1000, 333)):
        for ext in ("parquet", "csv"):
            score(registered, tmp_path / "in.parquet", tmp_path / f"o{i}.{ext}", chunk_size=chunk)
    for ext in ("parquet", "csv"):
        for name in ("o{}.{}", "o{}.rejects.{}"):
            assert (tmp_path / name.format(0, ext)).read_bytes() == (
                tmp_path / name.format(1, ext)
            ).read_bytes()
    # other chunk sizes: other Parquet row groups, but the same values (and CSV bytes)
    assert (tmp_path / "o0.csv").read_bytes() == (tmp_path / "o2.csv").read_bytes()
    assert pd.read_parquet(tmp_path / "o0.parquet").equals(pd.read_parquet(tmp_path / "o2.parquet"))
    assert pq.ParquetFile(tmp_path / "o2.parquet").metadata.num_row_groups > 1


# ----------------------------------------------------------------- same answers


def service_frame(rows: pd.DataFrame, model: PersonalizeModel) -> pd.DataFrame:
    """What the service hands to predict: floats for numbers, objects for levels."""
    cols: dict[str, Any] = {model.pipeline.cohort.id: rows[model.pipeline.cohort.id].astype(str)}
    for name, spec in model.pipeline.features.items():
        cols[name] = (
            rows[name].astype(float) if spec.type == "numeric" else rows[name].astype(object)
        )
    return pd.DataFrame(cols).reset_index(drop=True)


def test_scorer_and_service_give_the_same_answers(
    registered: scoring.ResolvedModel, tmp_path: Path
) -> None:
    model = registered.model
    frame = referrals(model, 1500, 6)
    frame.loc[::7, "odi"] = np.nan
    frame.loc[::11, "sex"] = None
    frame.loc[5, "age"] = 99.0  # outside the training range: a warning
    write_table(frame, tmp_path / "in.csv")
    score(registered, tmp_path / "in.csv", tmp_path / "out.parquet", chunk_size=400, explain=3)
    out = pd.read_parquet(tmp_path / "out.parquet")
    service = model.predict(service_frame(frame, model), explain=3)
    assert list(out["participant_id"]) == list(service["participant_id"])
    for col in (
        "outcome_control",
        "outcome_treatment",
        "benefit",
        "benefit_lower",
        "benefit_upper",
    ):
        assert np.array_equal(out[col].to_numpy(), service[col].to_numpy()), col
    for col in ("recommendation", "rationale", "better_bet", "warnings"):
        assert list(out[col].fillna("")) == list(service[col].fillna("")), col
    bet_p = out["better_bet_probability"].to_numpy(dtype=float)
    assert np.array_equal(bet_p, service["better_bet_probability"].to_numpy(float), equal_nan=True)
    assert (out["warnings"] != "[]").sum() >= 1
    assert out["better_bet"].isin(["MBT", "CBT"]).any() and out["better_bet"].isna().any()
    assert np.array_equal(np.isnan(bet_p), out["better_bet"].isna().to_numpy())
    assert (bet_p[~np.isnan(bet_p)] >= 0.8).all()
    for i, drivers in enumerate(service["drivers"]):
        listed = json.loads(drivers)
        for k in range(3):
            d = listed[k] if k < len(listed) else None
            got_feature = out.at[i, f"driver_{k + 1}_feature"]
            assert got_feature == (d["feature"] if d else None)
            if d is None:
                assert pd.isna(out.at[i, f"driver_{k + 1}_contribution"])
                continue
            assert out.at[i, f"driver_{k + 1}_contribution"] == d["contribution"]
            value = out.at[i, f"driver_{k + 1}_value"]
            assert value == (None if d["value"] is None else str(d["value"]))
    assert out["model_name"].unique().tolist() == [registered.name]
    assert out["model_version"].unique().tolist() == [registered.version]
    # one patient at a time, as the service is usually called: the same bits
    for i in (0, 5, 7, 1499):
        one = model.predict(service_frame(frame.iloc[[i]], model), explain=3)
        assert np.array_equal(
            one["benefit_lower"].to_numpy(), service["benefit_lower"].iloc[[i]].to_numpy()
        )
        assert one["drivers"].iloc[0] == service["drivers"].iloc[i]


def test_compiled_paths_reproduce_lightgbm(registered: scoring.ResolvedModel) -> None:
    """predict with the compiled trees equals predict through LightGBM itself: the same
    bits for every number, drivers to rounding."""
    model = registered.model
    frame = service_frame(referrals(model, 1200, 7), model)
    fast = model.predict(frame, explain=3)
    saved = fast_trees.HAVE_NUMBA
    try:
        fast_trees.HAVE_NUMBA = False
        fast_trees.clear_caches()
        slow = model.predict(frame, explain=3)
    finally:
        fast_trees.HAVE_NUMBA = saved
    for col in (
        "outcome_control",
        "outcome_treatment",
        "benefit",
        "benefit_lower",
        "benefit_upper",
    ):
        assert np.array_equal(fast[col].to_numpy(), slow[col].to_numpy()), col
    assert list(fast["recommendation"]) == list(slow["recommendation"])
    gap = 0.0
    for a, b in zip(fast["drivers"], slow["drivers"], strict=True):
        da, db = json.loads(a), json.loads(b)
        assert [d["feature"] for d in da] == [d["feature"] for d in db]
        gap = max(
            [
                gap,
                *(abs(x["contribution"] - y["contribution"]) for x, y in zip(da, db, strict=True)),
            ]
        )
    assert gap < 1e-9


def test_prognosis_is_batch_invariant_and_equals_scikit_learn() -> None:
    spec = load_pipeline("pipelines/stamp.yaml")
    trial = simulate("stamp", 400, 3).cohort
    from personalize.data.validate import prepare

    cohort = prepare(trial, spec)
    obs = cohort.observed
    prog = Prognosis().fit(cohort.X[obs], cohort.y[obs], np.ones(obs.sum()))
    X = cohort.X
    whole = prog.predict(X)
    parts = np.concatenate([prog.predict(X.iloc[i : i + 7]) for i in range(0, len(X), 7)])
    assert np.array_equal(whole, parts)
    sk = prog.model_.predict_proba(prog.design_.transform(X))[:, 1]
    assert np.abs(whole - sk).max() < 1e-15


def test_seen_ids_flag_repeats_across_chunks() -> None:
    seen = checking.SeenIds()
    first = seen.repeated(np.array(["a", "b", "a", "c"], dtype=object))
    assert first.tolist() == [False, False, True, False]
    for i in range(20):  # many runs: merged as they grow
        seen.repeated(np.array([f"x{i}-{j}" for j in range(50)], dtype=object))
    assert seen.repeated(np.array(["c", "d", "x3-7", "d"], dtype=object)).tolist() == [
        True,
        False,
        True,
        True,
    ]
    assert len(seen.runs) < 8


# ----------------------------------------------------------------- command line


def test_cli_scores_with_the_pipelines_champion_and_explains(
    registered: scoring.ResolvedModel, trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    # its own copy of the registry: the test removes `champion`, then sets it again
    own = trained_registry.copy(tmp_path / "registry")
    own.remove_champion(registered.name)
    write_table(referrals(registered.model, 200, 8), tmp_path / "in.parquet")
    runner = CliRunner()
    uri = own.uri
    args = ["score", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out.csv")]
    result = runner.invoke(app, [*args, "--tracking-uri", uri, "--explain", "5", "--json"])
    assert result.exit_code == 2 and "pass --model" in result.output
    pipeline = Path("pipelines/stamp.yaml")  # its registry.model_name is the model scored
    assert load_pipeline(pipeline).registry.model_name == registered.name
    # no champion yet: a clear error, nothing written
    result = runner.invoke(app, [*args, "--tracking-uri", uri, "--pipeline", str(pipeline)])
    assert result.exit_code == 1 and "champion" in result.output
    own.set_champion(registered.version, registered.name)
    result = runner.invoke(
        app, [*args, "--tracking-uri", uri, "--pipeline", str(pipeline), "--explain", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["scored"] == 200 and summary["rejected"] == 0
    assert summary["model_version"] == registered.version
    out = pd.read_csv(tmp_path / "out.csv")
    assert "driver_5_contribution" in out.columns and "driver_6_feature" not in out.columns
    result = runner.invoke(app, [*args, "--model", "models:/x/1", "--engine", "dask"])
    assert result.exit_code == 2


def test_explain_zero_has_no_driver_columns(model: PersonalizeModel, tmp_path: Path) -> None:
    write_table(referrals(model, 50, 9), tmp_path / "in.parquet")
    resolved = scoring.ResolvedModel(model, "m", "1", "models:/m/1")
    score(resolved, tmp_path / "in.parquet", tmp_path / "out.parquet", explain=0)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert not [c for c in out.columns if c.startswith("driver_")]


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = fast_trees.threads()
    yield
    assert fast_trees.threads() == before
