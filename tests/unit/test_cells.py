"""One reading of every cell: `personalize validate` and the batch scorer name the same
cells with the same reasons and hand the learners the same typed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalize.batch.checking import check_chunk, required_columns
from personalize.config import Pipeline
from personalize.data.cells import NO_PREFERENCE, read_cells
from personalize.data.table import MISSING_MARKERS, read_table
from personalize.data.validate import feature_frame, prepare, validate

PIPELINE = Pipeline.model_validate(
    {
        "name": "cells",
        "cohort": {
            "id": "pid",
            "arm": {"column": "arm", "treatment": "A", "control": "B"},
            "preference": "pref",  # not a feature here: checked as a stated preference
        },
        "features": {
            "age": {"type": "numeric", "min": 18, "max": 100},
            "score": {"type": "numeric"},
            "sex": {"type": "categorical", "levels": ["female", "male"]},
        },
        "outcome": {
            "kind": "binary",
            "baseline": "pain",
            "followup": "pain_m6",
            "responder": {"absolute_reduction": 2},
        },
        "validation": {"min_per_arm": 1, "min_observed_per_arm": 1},
        "registry": {"model_name": "cells"},
    }
)
CHECKED = ["age", "score", "sex", "pref"]  # the columns whose cells the tests vary
N = 24
ROWS = np.arange(1, N + 1)


def trial() -> pd.DataFrame:
    """A valid cohort: six responders and six non-responders per arm."""
    i = np.arange(N)
    return pd.DataFrame(
        {
            "pid": [f"P{k:02d}" for k in i],
            "arm": np.where(i % 2 == 0, "A", "B"),
            "age": 30 + i,
            "score": i / 4,
            "sex": np.where(i % 3 == 0, "female", "male"),
            "pref": np.array(["A", "B", "none"])[i % 3],
            "pain": 8.0,
            "pain_m6": np.where((i // 2) % 2 == 0, 3.0, 7.0),
        }
    ).astype(dict.fromkeys(CHECKED, object))  # any cell can go anywhere


def never_seen(ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.zeros(len(ids), dtype=bool)


CELLS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.text(alphabet=" \t0123456789.eE+-infaINFnNA,_x", max_size=8),
    st.sampled_from(["female", " male ", "other", "A", " B", "none", "maybe", "", " "]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, N - 1), st.sampled_from(CHECKED), CELLS), max_size=12),
    typed=st.booleans(),
)
def test_validate_and_the_scorer_read_every_cell_alike(
    edits: list[tuple[int, str, object]], typed: bool
) -> None:
    frame = trial()
    for row, column, cell in edits:
        frame.at[row, column] = cell
    if typed:  # as a Parquet file would hold it: numbers where a column is all numbers
        frame = frame.infer_objects()
    cells = read_cells(frame, PIPELINE)
    ids = frame["pid"].to_numpy()

    # validate: each cell problem once, under its column, with the rows that have it
    report = validate(frame, PIPELINE)
    listed = {(p.column, p.reason, p.rows) for p in report.problems if p.column in CHECKED}
    assert listed == {
        (c.column, c.summary, tuple(ids[c.rows])) for c in cells.problems if c.column in CHECKED
    }

    # the scorer: each row rejected with every problem of its cells in the pipeline's
    # order (the first as column, value and reason, the rest as other problems)
    found: dict[str, list[tuple[str, str, str]]] = {}
    for c in cells.problems:
        assert c.column in CHECKED and c.values is not None
        for row, value in zip(c.rows, c.values, strict=True):
            found.setdefault(ids[row], []).append((c.column, c.reason, str(value)))
    checked = check_chunk(frame[required_columns(PIPELINE)], PIPELINE, ROWS, never_seen)
    rejected = {
        r["pid"]: (r["column"], r["reason"], r["value"], r["other_problems"])
        for r in checked.rejects.to_dict("records")
    }
    assert rejected == {
        pid: (*problems[0], "; ".join(f"{c}: {r}" for c, r, _ in problems[1:]))
        for pid, problems in found.items()
    }

    # the same typed values: the scorer's good rows as the model reads them (service, study)
    good = checked.good
    features = list(PIPELINE.features)
    as_read = feature_frame(frame, PIPELINE)[good].reset_index(drop=True)
    assert checked.frame[features].equals(as_read)
    if report.ok:  # and as training reads them
        cohort = prepare(frame, PIPELINE)
        assert cohort.X.equals(checked.frame[features])
        stated = [NO_PREFERENCE if pd.isna(v) else v for v in checked.frame["pref"]]
        assert list(cohort.preference) == stated


@pytest.mark.parametrize(
    ("column", "cell", "value", "reason"),
    [
        ("score", " 57 ", 57.0, None),
        ("score", "1.2e2", 120.0, None),
        ("score", "", np.nan, None),
        ("score", "abc", np.nan, "not a finite number"),
        ("score", "inf", np.nan, "not a finite number"),
        ("age", "5", 5.0, "below the declared minimum 18"),
        ("age", 150.0, 150.0, "above the declared maximum 100"),
        ("sex", " male ", "male", None),
        ("sex", "robot", np.nan, "unknown level; declared levels ['female', 'male']"),
        ("pref", " B ", "B", None),
        ("pref", "maybe", "maybe", "preference must be one of ['A', 'B', 'none']"),
    ],
)
def test_a_cell_is_read_as_its_column_is_declared(
    column: str, cell: object, value: object, reason: str | None
) -> None:
    frame = trial()
    frame.at[4, column] = cell
    cells = read_cells(frame, PIPELINE)
    if column in cells.numbers:
        got: object = cells.numbers[column][4]
    elif column in cells.categories:
        got = cells.categories[column][4]
    else:
        got = cells.text[column][4]
    assert got == value or (pd.isna(got) and pd.isna(value))
    problems = [(p.column, p.reason, p.rows.tolist()) for p in cells.problems]
    assert problems == ([] if reason is None else [(column, reason, [4])])


def test_missing_markers_are_blank_in_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("pid,score\n" + "".join(f"P{i},{m}\n" for i, m in enumerate(MISSING_MARKERS)))
    frame = read_table(path)
    assert frame["score"].isna().all()
    cells = read_cells(frame, PIPELINE)
    assert cells.blank["score"].all() and not cells.problems
