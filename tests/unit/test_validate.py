"""`personalize validate`: every problem listed at once, with column, rows and reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from personalize.cli import app
from personalize.config import Pipeline, PipelineError, load_pipeline
from personalize.data.table import write_table
from personalize.data.validate import CohortError, prepare, validate

PIPELINE = {
    "name": "toy",
    "cohort": {
        "id": "pid",
        "arm": {"column": "arm", "treatment": "A", "control": "B"},
        "preference": "pref",
    },
    "features": {
        "age": {"type": "numeric", "min": 18, "max": 100},
        "score": {"type": "numeric"},
        "sex": {"type": "categorical", "levels": ["female", "male"]},
        "pref": {"type": "categorical", "levels": ["A", "B", "none"]},
    },
    "outcome": {
        "kind": "binary",
        "baseline": "pain",
        "followup": "pain_m6",
        "responder": {"relative_reduction": 0.3},
    },
    "validation": {"min_per_arm": 20, "min_observed_per_arm": 10},
    "registry": {"model_name": "toy"},
}


def toy_cohort(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pain = rng.uniform(3, 9, n).round(1)
    follow = (pain - rng.normal(1, 2, n)).clip(0, 10).round(1)
    follow[rng.random(n) < 0.3] = np.nan
    return pd.DataFrame(
        {
            "pid": [f"P{i:03d}" for i in range(n)],
            "arm": np.where(np.arange(n) % 2 == 0, "A", "B"),
            "age": rng.integers(20, 90, n).astype(float),
            "score": rng.normal(0, 1, n),
            "sex": rng.choice(["female", "male"], n),
            "pref": rng.choice(["A", "B", "none"], n),
            "pain": pain,
            "pain_m6": follow,
        }
    )


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline.model_validate(PIPELINE)


def reasons(frame: pd.DataFrame, pipeline: Pipeline) -> dict[str, list[str]]:
    report = validate(frame, pipeline)
    found: dict[str, list[str]] = {}
    for p in report.problems:
        found.setdefault(p.column, []).append(p.reason)
    return found


def test_clean_cohort_is_valid_and_reports_counts(pipeline: Pipeline) -> None:
    frame = toy_cohort()
    frame.loc[[3, 7], "score"] = np.nan
    report = validate(frame, pipeline)
    assert report.ok, report.problems
    assert report.arm_counts == {"A": 50, "B": 50}
    assert report.missing_counts == {"score": 2}
    assert sum(report.observed_counts.values()) == frame["pain_m6"].notna().sum()


@pytest.mark.parametrize(
    ("corrupt", "column", "reason", "rows"),
    [
        (lambda f: f.drop(columns="age"), "age", "missing from the cohort", None),
        (
            lambda f: f.assign(age=f["age"].astype(object).where(f.index != 4, "old")),
            "age",
            "not a finite number",
            ["P004"],
        ),
        (
            lambda f: f.assign(age=f["age"].where(f.index != 5, 130.0)),
            "age",
            "above the declared maximum 100",
            ["P005"],
        ),
        (
            lambda f: f.assign(age=f["age"].where(f.index != 6, 3.0)),
            "age",
            "below the declared minimum 18",
            ["P006"],
        ),
        (
            lambda f: f.assign(sex=f["sex"].where(f.index != 8, "other")),
            "sex",
            "unknown level ['other']",
            ["P008"],
        ),
        (
            lambda f: f.assign(pid=f["pid"].where(f.index != 9, "P010")),
            "pid",
            "duplicate patient id",
            ["row 10 (id P010)", "row 11 (id P010)"],
        ),
        (
            lambda f: f.assign(pid=f["pid"].where(f.index != 9, None)),
            "pid",
            "missing patient id",
            ["row 10"],
        ),
        (
            lambda f: f.assign(arm=f["arm"].where(f.index != 2, "C")),
            "arm",
            "arm label not one of ['A', 'B']",
            ["P002"],
        ),
        (lambda f: f.assign(arm="A"), "arm", "only one arm present (A)", None),
        (lambda f: f.iloc[:30], "arm", "too few patients in arm A: 15 < 20", None),
        (
            lambda f: f.assign(pain_m6=np.where(f["arm"] == "B", np.nan, f["pain_m6"])),
            "pain_m6",
            "too few observed outcomes in arm B: 0 < 10",
            None,
        ),
        (
            lambda f: f.assign(pain=f["pain"].where(f.index != 0, np.nan), pain_m6=5.0),
            "pain_m6",
            "follow-up present where baseline pain is missing",
            ["P000"],
        ),
        (
            lambda f: f.assign(pain_m6=np.where(f["arm"] == "A", f["pain"], f["pain_m6"])),
            "pain_m6",
            "too few responders in arm A: 0 < 5",
            None,
        ),
        (
            lambda f: f.assign(pain=f["pain"].where(f.index != 1, 0.0)),
            "pain",
            "a relative reduction needs a baseline above 0",
            ["P001"],
        ),
        (
            lambda f: f.assign(pain_m6=f["pain_m6"].astype(object).where(f.index != 12, "n/a")),
            "pain_m6",
            "not a finite number",
            ["P012"],
        ),
        (
            lambda f: f.assign(score=f["score"].where(f.index != 13, np.inf)),
            "score",
            "not a finite number",
            ["P013"],
        ),
    ],
)
def test_each_corruption_is_named(
    pipeline: Pipeline, corrupt, column: str, reason: str, rows: list[str] | None
) -> None:
    report = validate(corrupt(toy_cohort()), pipeline)
    assert not report.ok
    hits = [p for p in report.problems if p.column == column and reason in p.reason]
    assert hits, [p.describe() for p in report.problems]
    if rows is not None:
        assert list(hits[0].rows) == rows


def test_every_problem_is_listed_at_once(pipeline: Pipeline) -> None:
    frame = toy_cohort()
    frame["age"] = frame["age"].astype(object)
    frame.loc[1, "age"] = "x"
    frame.loc[2, "sex"] = "robot"
    frame.loc[3, "arm"] = "Z"
    found = reasons(frame, pipeline)
    assert set(found) >= {"age", "sex", "arm"}


def test_row_list_is_truncated_with_a_count(pipeline: Pipeline) -> None:
    frame = toy_cohort()
    frame["age"] = 150.0
    report = validate(frame, pipeline)
    (problem,) = [p for p in report.problems if p.column == "age"]
    assert len(problem.rows) == 100
    assert "100 rows: P000, P001, P002, P003, P004 and 95 more" in problem.describe()


def test_prepare_builds_typed_arrays(pipeline: Pipeline) -> None:
    frame = toy_cohort()
    cohort = prepare(frame, pipeline)
    assert cohort.treated.tolist() == (frame["arm"] == "A").astype(int).tolist()
    observed = frame["pain_m6"].notna().to_numpy()
    np.testing.assert_array_equal(cohort.observed, observed)
    expected = (frame["pain"] - frame["pain_m6"] >= 0.3 * frame["pain"] - 1e-9)[observed]
    np.testing.assert_array_equal(cohort.y[observed], expected.astype(float))
    assert list(cohort.X["sex"].cat.categories) == ["female", "male"]
    assert cohort.X["age"].dtype == float


def test_prepare_refuses_invalid(pipeline: Pipeline) -> None:
    with pytest.raises(CohortError, match="age: not a finite number"):
        prepare(toy_cohort().assign(age="old"), pipeline)


def test_continuous_outcome_is_improvement(pipeline: Pipeline) -> None:
    spec = {
        **PIPELINE,
        "outcome": {"kind": "continuous", "baseline": "pain", "followup": "pain_m6"},
    }
    frame = toy_cohort()
    cohort = prepare(frame, Pipeline.model_validate(spec))
    obs = cohort.observed
    np.testing.assert_allclose(cohort.y[obs], (frame["pain"] - frame["pain_m6"])[obs])
    ready = {**PIPELINE, "outcome": {"kind": "continuous", "column": "pain_m6", "better": "lower"}}
    cohort = prepare(frame, Pipeline.model_validate(ready))
    np.testing.assert_allclose(cohort.y[obs], -frame["pain_m6"][obs])


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"outcome": {"kind": "binary", "baseline": "pain", "followup": "pain_m6"}},
            "outcome: Value error, a binary outcome needs a responder definition",
        ),
        ({"features": {"age": {"type": "numeric", "min": 5, "max": 1}}}, "features.age"),
        ({"features": {"sex": {"type": "text"}}}, "features.sex"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        (
            {"cohort": {"id": "pid", "arm": {"column": "arm", "treatment": "A", "control": "A"}}},
            "treatment and control",
        ),
    ],
)
def test_bad_pipeline_file_names_the_key(tmp_path: Path, patch: dict, message: str) -> None:
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**PIPELINE, **patch}))
    with pytest.raises(PipelineError, match="invalid pipeline file") as exc:
        load_pipeline(path)
    assert message in str(exc.value)


def write_pipeline(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(PIPELINE))
    return path


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_cli_exit_codes(tmp_path: Path, ext: str) -> None:
    runner = CliRunner()
    pipe = write_pipeline(tmp_path)
    good = tmp_path / f"good{ext}"
    write_table(toy_cohort(), good)
    result = runner.invoke(app, ["validate", str(pipe), "--cohort", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    bad = tmp_path / f"bad{ext}"
    write_table(toy_cohort().assign(sex="robot"), bad)
    result = runner.invoke(app, ["validate", str(pipe), "--cohort", str(bad)])
    assert result.exit_code == 1
    assert "sex: unknown level ['robot']" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_missing_files_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "pipeline file not found" in result.output
    pipe = write_pipeline(tmp_path)
    result = runner.invoke(app, ["validate", str(pipe), "--cohort", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "cohort file not found" in result.output
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet")
    result = runner.invoke(app, ["validate", str(pipe), "--cohort", str(garbage)])
    assert result.exit_code == 2 and "cannot read as parquet" in result.output


CELLS = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.sampled_from(["A", "B", "none", "female", "", " ", "1e309"]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 59), st.sampled_from(list(toy_cohort(1).columns)), CELLS),
        max_size=25,
    ),
    drop=st.lists(st.sampled_from(list(toy_cohort(1).columns)), max_size=2),
    ext=st.sampled_from([".csv", ".parquet"]),
)
def test_random_corruptions_never_traceback(tmp_path: Path, edits, drop, ext) -> None:
    frame = toy_cohort(60).astype(object)
    for row, col, value in edits:
        frame.at[row, col] = value
    frame = frame.drop(columns=list(set(drop)))
    path = tmp_path / f"c{ext}"
    if ext == ".parquet":
        frame = frame.astype(str).where(frame.notna(), None)  # parquet needs one type per column
    write_table(frame, path)
    result = CliRunner().invoke(
        app, ["validate", str(write_pipeline(tmp_path)), "--cohort", str(path)]
    )
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert "problem(s):" in result.output
