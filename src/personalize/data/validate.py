"""Check a cohort against its pipeline file and turn it into typed arrays for learning.

`validate` lists every problem at once (column, offending rows, reason) so a researcher
fixes a file in one pass; `prepare` refuses a cohort with problems. Each cell is read and
judged by `cells.read_cells`, as the batch scorer reads it; this module groups those
problems by column and adds what only a whole cohort can have: declared columns, repeated
ids, patients and observed outcomes per arm, responders and non-responders per arm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from personalize.config import NumericFeature, Pipeline
from personalize.data.cells import (
    NO_PREFERENCE,
    Cells,
    categorical_dtype,
    read_cells,
    read_number,
    read_text,
)
from personalize.data.columns import Column

SHOW_ROWS = 5
MIN_CLASS = 5  # responders and non-responders needed per arm for a binary outcome


@dataclass(frozen=True)
class Problem:
    column: str
    reason: str
    rows: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.rows:
            return f"{self.column}: {self.reason}"
        shown = ", ".join(self.rows[:SHOW_ROWS])
        more = f" and {len(self.rows) - SHOW_ROWS} more" if len(self.rows) > SHOW_ROWS else ""
        noun = "row" if len(self.rows) == 1 else "rows"
        return f"{self.column}: {self.reason} ({len(self.rows)} {noun}: {shown}{more})"


@dataclass
class ValidationReport:
    n_rows: int
    problems: list[Problem] = field(default_factory=list)
    missing_counts: dict[str, int] = field(default_factory=dict)
    arm_counts: dict[str, int] = field(default_factory=dict)
    observed_counts: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    thresholds: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "n_rows": self.n_rows,
            "problems": [
                {
                    "column": p.column,
                    "reason": p.reason,
                    "n_rows": len(p.rows),
                    "rows": list(p.rows[:SHOW_ROWS]),
                }
                for p in self.problems
            ],
            "missing_counts": self.missing_counts,
            "arm_counts": self.arm_counts,
            "observed_outcomes": self.observed_counts,
            "ignored_columns": self.ignored_columns,
            "thresholds": self.thresholds,
        }


class CohortError(Exception):
    """A cohort that failed validation; carries the full report."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(
            "cohort failed validation:\n" + "\n".join(f"  {p.describe()}" for p in report.problems)
        )


def _row_refs(frame: pd.DataFrame, id_col: str, positions: np.ndarray) -> tuple[str, ...]:
    """Name rows by their id where there is one, else by 1-based data row number."""
    if id_col in frame.columns:
        ids = frame[id_col].to_numpy()
        return tuple(str(ids[i]) if not pd.isna(ids[i]) else f"row {i + 1}" for i in positions)
    return tuple(f"row {i + 1}" for i in positions)


def validate(frame: pd.DataFrame, pipeline: Pipeline) -> ValidationReport:
    return _judge(frame, pipeline)[0]


def _judge(frame: pd.DataFrame, pipeline: Pipeline) -> tuple[ValidationReport, Cells | None]:
    """The report, and the cohort's cells as read (None when there is nothing to read)."""
    rules = pipeline.validation
    report = ValidationReport(
        n_rows=len(frame),
        thresholds={
            "min_per_arm": rules.min_per_arm,
            "min_observed_per_arm": rules.min_observed_per_arm,
        },
    )
    add = report.problems.append
    frame = frame.reset_index(drop=True)
    id_col = pipeline.cohort.id
    arm_spec = pipeline.cohort.arm

    for name in pipeline.required_columns:
        if name not in frame.columns:
            add(Problem(name, "declared in the pipeline but missing from the cohort"))
    report.ignored_columns = [c for c in frame.columns if c not in pipeline.required_columns]
    if len(frame) == 0:
        add(Problem("(cohort)", "the cohort has no rows"))
        return report, None

    cells = read_cells(frame, pipeline)

    def list_cells(which: Callable[[str], bool]) -> None:
        """Add the cell problems of the columns `which` accepts, in the pipeline's order."""
        for p in cells.problems:
            if which(p.column):
                add(Problem(p.column, p.summary, _row_refs(frame, id_col, p.rows)))

    list_cells(lambda column: column == id_col)
    if id_col in cells.text:
        ids = pd.Series(cells.text[id_col])
        dup = np.flatnonzero(ids.notna() & ids.duplicated(keep=False))
        if len(dup):
            refs = tuple(f"row {i + 1} (id {ids[i]})" for i in dup)
            add(Problem(id_col, "duplicate patient id", refs))

    list_cells(lambda column: column == arm_spec.column)
    arm = cells.text.get(arm_spec.column)
    if arm is not None:
        report.arm_counts = {label: int((arm == label).sum()) for label in arm_spec.labels}
        seen = [label for label, n in report.arm_counts.items() if n > 0]
        if len(seen) == 1:
            add(Problem(arm_spec.column, f"only one arm present ({seen[0]}); need both"))
        for label, n in report.arm_counts.items():
            if 0 < n < rules.min_per_arm or (n == 0 and len(seen) != 1):
                add(
                    Problem(
                        arm_spec.column,
                        f"too few patients in arm {label}: {n} < {rules.min_per_arm} "
                        "(validation.min_per_arm)",
                    )
                )

    for name in pipeline.features:
        missing = int(cells.blank[name].sum()) if name in cells.blank else 0
        if missing:
            report.missing_counts[name] = missing

    list_cells(lambda column: column not in (id_col, arm_spec.column))  # features, outcome
    y = _target(cells, pipeline)
    if y is not None and arm is not None:
        observed = ~np.isnan(y)
        report.observed_counts = {
            label: int((observed & (arm == label)).sum()) for label in arm_spec.labels
        }
        outcome_col = pipeline.outcome.followup or pipeline.outcome.column or "outcome"
        for label, n in report.observed_counts.items():
            if report.arm_counts.get(label, 0) and n < rules.min_observed_per_arm:
                add(
                    Problem(
                        outcome_col,
                        f"too few observed outcomes in arm {label}: {n} < "
                        f"{rules.min_observed_per_arm} (validation.min_observed_per_arm)",
                    )
                )
            elif pipeline.outcome.kind == "binary" and n:
                responders = int(((arm == label) & (y == 1)).sum())
                for what, count in (("responders", responders), ("non-responders", n - responders)):
                    if count < MIN_CLASS:
                        add(
                            Problem(
                                outcome_col,
                                f"too few {what} in arm {label}: {count} < "
                                f"{MIN_CLASS}; the arm's outcome cannot be modelled",
                            )
                        )
    return report, cells


def _target(cells: Cells, pipeline: Pipeline) -> np.ndarray | None:
    """The learning target (`outcome_values`, or a ready column oriented so that higher
    is better), NaN where unobserved; None when the outcome's columns were not read."""
    out = pipeline.outcome
    if any(c not in cells.numbers for c in out.columns):
        return None
    if out.column is not None:
        raw = cells.numbers[out.column]
        return raw if out.better == "higher" else -raw
    assert out.baseline is not None and out.followup is not None
    base, follow = pd.Series(cells.numbers[out.baseline]), pd.Series(cells.numbers[out.followup])
    return outcome_values(base, follow, pipeline).to_numpy(dtype=float)


def outcome_values(base: pd.Series, follow: pd.Series, pipeline: Pipeline) -> pd.Series:
    """The learning target, always oriented so that higher is better for the patient.

    Binary: 1 for a responder. Continuous paired: improvement = baseline - followup.
    """
    out = pipeline.outcome
    if out.kind == "continuous":
        return base - follow
    assert out.responder is not None
    reduction = base - follow
    if out.responder.relative_reduction is not None:
        threshold = out.responder.relative_reduction * base
    else:
        threshold = pd.Series(out.responder.absolute_reduction, index=base.index)
    return (reduction >= threshold - 1e-9).astype(float).where(base.notna() & follow.notna())


@dataclass(frozen=True)
class Cohort:
    """A validated cohort as the learners see it."""

    ids: np.ndarray
    X: pd.DataFrame
    treated: np.ndarray  # 1 for the pipeline's treatment arm, 0 for control
    y: np.ndarray  # outcome, higher is better; NaN where not observed
    preference: np.ndarray | None  # stated preferred arm label, "none", or None per patient

    @property
    def observed(self) -> np.ndarray:
        return ~np.isnan(self.y)

    def __len__(self) -> int:
        return len(self.ids)


def feature_frame(frame: pd.DataFrame, pipeline: Pipeline) -> pd.DataFrame:
    """Typed features: floats for numeric, pandas categoricals with the declared levels.

    Categorical dtypes with fixed levels make LightGBM's encoding independent of which
    levels happen to appear in a given file (training, batch chunk or one request).
    """
    return features_of(typed_columns(frame, pipeline), pipeline)


def typed_columns(frame: pd.DataFrame, pipeline: Pipeline) -> dict[str, Column]:
    """Each feature of `frame` as a `Column`: numbers (NaN where missing or not a finite
    number), categoricals as codes over the declared levels (NaN where missing or not a
    level). Frames already typed (float64 columns, categoricals over the declared levels,
    as the service builds them) are taken as they are."""
    cols: dict[str, Column] = {}
    for name, spec in pipeline.features.items():
        col = frame[name]
        if isinstance(spec, NumericFeature):
            if col.dtype == np.float64:
                values = col.to_numpy()
                values = np.where(np.isinf(values), np.nan, values)
            else:
                values = read_number(col)[0]
            cols[name] = Column(values, float64=True)
        else:
            dtype = categorical_dtype(tuple(spec.levels))
            if col.dtype is not dtype and col.dtype != dtype:
                col = pd.Series(pd.Categorical(read_text(col), dtype=dtype), index=col.index)
            codes = col.cat.codes.to_numpy()
            cols[name] = Column(np.where(codes < 0, np.nan, codes), list(spec.levels))
    return cols


def features_of(cols: dict[str, Column], pipeline: Pipeline) -> pd.DataFrame:
    """The feature frame of `typed_columns`' output. Built from its arrays as they are
    (float64 values, categoricals over the declared levels), without `pd.DataFrame`'s
    checks and conversions of a dict: those were most of a one-patient answer's frame."""
    if not cols:
        return pd.DataFrame({}, index=pd.RangeIndex(0))
    arrays: list[Any] = []
    for col in cols.values():
        if col.levels is None:
            arrays.append(np.asarray(col.values, dtype=np.float64))
        else:
            dtype = categorical_dtype(tuple(col.levels))
            arrays.append(pd.Categorical.from_codes(col.codes, dtype=dtype))
    n = len(next(iter(cols.values())).values)
    return pd.DataFrame._from_arrays(  # type: ignore[attr-defined]
        arrays, _column_index(tuple(cols)), pd.RangeIndex(n), verify_integrity=False
    )


@functools.cache
def _column_index(names: tuple[str, ...]) -> pd.Index:
    """One columns index per set of feature names (an Index is immutable: frames share it)."""
    return pd.Index(list(names))


def prepare(frame: pd.DataFrame, pipeline: Pipeline) -> Cohort:
    report, cells = _judge(frame, pipeline)
    if not report.ok:
        raise CohortError(report)
    assert cells is not None
    y = _target(cells, pipeline)
    assert y is not None
    cohort = pipeline.cohort
    pref = None
    if cohort.preference:
        stated = cells.categories.get(cohort.preference, cells.text.get(cohort.preference))
        pref = pd.Series(stated, dtype=object).fillna(NO_PREFERENCE).to_numpy(dtype=object)
    return Cohort(
        ids=cells.text[cohort.id],
        X=features_of(_feature_columns(cells, pipeline), pipeline),
        treated=(cells.text[cohort.arm.column] == cohort.arm.treatment).astype(np.int8),
        y=y,
        preference=pref,
    )


def _feature_columns(cells: Cells, pipeline: Pipeline) -> dict[str, Column]:
    """`typed_columns` of cells already read."""
    cols: dict[str, Column] = {}
    for name, spec in pipeline.features.items():
        if isinstance(spec, NumericFeature):
            cols[name] = Column(cells.numbers[name], float64=True)
        else:
            codes = cells.categories[name].codes
            cols[name] = Column(np.where(codes < 0, np.nan, codes), list(spec.levels))
    return cols
