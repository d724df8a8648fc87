"""Check a cohort against its pipeline file and turn it into typed arrays for learning.

`validate` lists every problem at once (column, offending rows, reason) so a researcher
fixes a file in one pass; `prepare` refuses a cohort with problems.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from personalize.config import CategoricalFeature, NumericFeature, Pipeline
from personalize.data.columns import Column

SHOW_ROWS = 5
MIN_CLASS = 5  # responders and non-responders needed per arm for a binary outcome
NO_PREFERENCE = "none"


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


def _row_refs(
    frame: pd.DataFrame, id_col: str, mask: pd.Series, by_number: bool = False
) -> tuple[str, ...]:
    """Name rows by their id where there is one, else by 1-based data row number."""
    idx = np.flatnonzero(mask.to_numpy(dtype=bool))
    if id_col in frame.columns and not by_number:
        ids = frame[id_col].to_numpy()
        return tuple(str(ids[i]) if not pd.isna(ids[i]) else f"row {i + 1}" for i in idx)
    return tuple(f"row {i + 1}" for i in idx)


def _as_text(col: pd.Series) -> pd.Series:
    """Non-missing values as stripped strings (categories, arm labels, ids); blank is missing."""
    text = col.map(lambda v: v if pd.isna(v) else str(v).strip())
    return text.where(text != "", None)


def _as_number(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numeric values and the mask of present-but-not-numeric cells."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype(float), pd.Series(False, index=col.index)
    if pd.api.types.is_numeric_dtype(col):
        values = col.astype(float)
        bad = pd.Series(np.isinf(values.to_numpy()), index=col.index)
    else:
        text = _as_text(col)
        values = pd.to_numeric(text, errors="coerce").astype(float)
        bad = pd.Series((text.notna() & values.isna()) | np.isinf(values), dtype=bool)
    return values.where(~bad), bad


def validate(frame: pd.DataFrame, pipeline: Pipeline) -> ValidationReport:
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
    present = set(frame.columns)

    for name in pipeline.required_columns:
        if name not in present:
            add(Problem(name, "declared in the pipeline but missing from the cohort"))
    report.ignored_columns = [c for c in frame.columns if c not in pipeline.required_columns]
    if len(frame) == 0:
        add(Problem("(cohort)", "the cohort has no rows"))
        return report

    def rows(mask: pd.Series) -> tuple[str, ...]:
        return _row_refs(frame, id_col, mask)

    if id_col in present:
        ids = _as_text(frame[id_col])
        if ids.isna().any():
            add(Problem(id_col, "missing patient id", rows(ids.isna())))
        dup = ids.notna() & ids.duplicated(keep=False)
        if dup.any():
            refs = tuple(
                f"row {r.removeprefix('row ')} (id {i})"
                for r, i in zip(
                    _row_refs(frame, id_col, dup, by_number=True), ids[dup], strict=True
                )
            )
            add(Problem(id_col, "duplicate patient id", refs))

    arm_spec = pipeline.cohort.arm
    arm: pd.Series | None = None
    if arm_spec.column in present:
        arm = _as_text(frame[arm_spec.column])
        if arm.isna().any():
            add(Problem(arm_spec.column, "missing arm", rows(arm.isna())))
        unknown = arm.notna() & ~arm.isin(arm_spec.labels)
        if unknown.any():
            labels = sorted(set(arm[unknown]))[:SHOW_ROWS]
            add(
                Problem(
                    arm_spec.column,
                    f"arm label not one of {list(arm_spec.labels)} (found {labels})",
                    rows(unknown),
                )
            )
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

    for name, spec in pipeline.features.items():
        if name not in present:
            continue
        col = frame[name]
        if isinstance(spec, NumericFeature):
            values, bad = _as_number(col)
            if bad.any():
                add(Problem(name, "not a finite number", rows(bad)))
            if spec.min is not None and (values < spec.min).any():
                add(
                    Problem(
                        name, f"below the declared minimum {spec.min:g}", rows(values < spec.min)
                    )
                )
            if spec.max is not None and (values > spec.max).any():
                add(
                    Problem(
                        name, f"above the declared maximum {spec.max:g}", rows(values > spec.max)
                    )
                )
            missing = int((values.isna() & ~bad).sum())
        else:
            assert isinstance(spec, CategoricalFeature)
            text = _as_text(col)
            unknown = text.notna() & ~text.isin(spec.levels)
            if unknown.any():
                found = sorted(set(text[unknown]))[:SHOW_ROWS]
                add(
                    Problem(
                        name, f"unknown level {found}; declared levels {spec.levels}", rows(unknown)
                    )
                )
            missing = int(text.isna().sum())
        if missing:
            report.missing_counts[name] = missing

    pref_col = pipeline.cohort.preference
    if pref_col and pref_col in present and pref_col not in pipeline.features:
        text = _as_text(frame[pref_col])
        allowed = [*arm_spec.labels, NO_PREFERENCE]
        unknown = text.notna() & ~text.isin(allowed)
        if unknown.any():
            add(Problem(pref_col, f"preference must be one of {allowed}", rows(unknown)))

    y = _outcome_problems(frame, pipeline, add, rows)
    if y is not None and arm is not None:
        observed = y.notna()
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
    return report


def _outcome_problems(
    frame: pd.DataFrame,
    pipeline: Pipeline,
    add: Callable[[Problem], None],
    rows: Callable[[pd.Series], tuple[str, ...]],
) -> pd.Series | None:
    """Check outcome columns; return the outcome (NaN where unobserved) when computable."""
    out = pipeline.outcome
    if any(c not in frame.columns for c in out.columns):
        return None
    numbers = {}
    for col in out.columns:
        values, bad = _as_number(frame[col])
        if bad.any():
            add(Problem(col, "not a finite number", rows(bad)))
        numbers[col] = values
    if out.column is not None:
        return numbers[out.column]
    assert out.baseline is not None and out.followup is not None
    base, follow = numbers[out.baseline], numbers[out.followup]
    orphan = base.isna() & follow.notna()
    if orphan.any():
        add(
            Problem(
                out.followup,
                f"follow-up present where baseline {out.baseline} is missing",
                rows(orphan),
            )
        )
    if out.responder is not None and out.responder.relative_reduction is not None:
        nonpositive = base.notna() & (base <= 0)
        if nonpositive.any():
            add(
                Problem(
                    out.baseline, "a relative reduction needs a baseline above 0", rows(nonpositive)
                )
            )
    return outcome_values(base, follow, pipeline).where(base.notna() & follow.notna())


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
                values = _as_number(col)[0].to_numpy(dtype=float)
            cols[name] = Column(values, float64=True)
        else:
            dtype = categorical_dtype(tuple(spec.levels))
            if col.dtype is not dtype and col.dtype != dtype:
                col = pd.Series(pd.Categorical(_as_text(col), dtype=dtype), index=col.index)
            codes = col.cat.codes.to_numpy()
            cols[name] = Column(np.where(codes < 0, np.nan, codes), list(spec.levels))
    return cols


def features_of(cols: dict[str, Column], pipeline: Pipeline) -> pd.DataFrame:
    """The feature frame of `typed_columns`' output."""
    data: dict[str, object] = {}
    for name, col in cols.items():
        if col.levels is None:
            data[name] = col.values
        else:
            dtype = categorical_dtype(tuple(col.levels))
            data[name] = pd.Categorical.from_codes(col.codes, dtype=dtype)
    n = len(next(iter(cols.values())).values) if cols else 0
    return pd.DataFrame(data, index=pd.RangeIndex(n))


@functools.cache
def categorical_dtype(levels: tuple[str, ...]) -> pd.CategoricalDtype:
    """One dtype instance per set of levels, so frames share it (cheap to compare)."""
    return pd.CategoricalDtype(list(levels))


def prepare(frame: pd.DataFrame, pipeline: Pipeline) -> Cohort:
    report = validate(frame, pipeline)
    if not report.ok:
        raise CohortError(report)
    frame = frame.reset_index(drop=True)
    out = pipeline.outcome
    if out.column is not None:
        raw = _as_number(frame[out.column])[0]
        y = raw if out.better == "higher" else -raw
    else:
        assert out.baseline is not None and out.followup is not None
        y = outcome_values(
            _as_number(frame[out.baseline])[0], _as_number(frame[out.followup])[0], pipeline
        )
    arm = _as_text(frame[pipeline.cohort.arm.column])
    pref = None
    if pipeline.cohort.preference:
        pref = (
            _as_text(frame[pipeline.cohort.preference]).fillna(NO_PREFERENCE).to_numpy(dtype=object)
        )
    return Cohort(
        ids=_as_text(frame[pipeline.cohort.id]).to_numpy(dtype=object),
        X=feature_frame(frame, pipeline),
        treated=(arm == pipeline.cohort.arm.treatment).to_numpy(dtype=np.int8),
        y=y.to_numpy(dtype=float),
        preference=pref,
    )
