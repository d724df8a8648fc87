"""One reading of a cohort's cells, shared by `personalize validate`, training and the
batch scorer.

A cell is read by what its column is declared as. Ids, arm labels, categories and stated
preferences are stripped text; numeric features and outcomes are floats. A blank cell is
missing (what may be missing is the caller's to judge); a present cell that cannot be read
as declared (a number that is not a finite number, a level that is not declared, ...) is a
problem, never a silent NaN.

`read_cells` reads every declared column present in a frame once and checks every rule a
single cell can break, so a validation report and a rejects file give the same reason
for the same cell. Rules that need more than one cell are the callers': `validate` adds
what only a whole cohort can have (patients per arm, repeated ids, outcome classes) and
lists problems by column; the scorer adds empty and repeated rows and writes one rejects
row per patient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from personalize.config import NO_PREFERENCE, CategoricalFeature, NumericFeature, Pipeline

FOUND_SHOWN = 5  # distinct offending values a problem's summary names

MISSING_ID = "missing patient id"
MISSING_ARM = "missing arm"
NOT_A_NUMBER = "not a finite number"


@dataclass(frozen=True)
class CellProblem:
    """The cells of one column that break one rule."""

    column: str
    reason: str  # for one row, as a rejects file states it
    rows: np.ndarray  # positions in the frame (0-based)
    values: np.ndarray | None  # the cells at `rows` as read; None when the rule is a blank
    summary: str  # for all the rows at once, as a report states it; may name values found


@dataclass
class Cells:
    """A frame's declared columns, each read once, and the cells that break a rule.

    Only columns present in the frame are read; the outcome only when all its columns
    are present.
    """

    # ids, arm labels and a preference that is not a feature: objects, None where blank
    text: dict[str, np.ndarray] = field(default_factory=dict)
    # numeric features and outcomes: NaN where blank or not a finite number
    numbers: dict[str, np.ndarray] = field(default_factory=dict)
    # categorical features over their declared levels: NaN where blank or not declared
    categories: dict[str, pd.Categorical] = field(default_factory=dict)
    blank: dict[str, np.ndarray] = field(default_factory=dict)  # every column read
    problems: list[CellProblem] = field(default_factory=list)  # in the pipeline's order


@functools.cache
def categorical_dtype(levels: tuple[str, ...]) -> pd.CategoricalDtype:
    """One dtype instance per set of levels, so frames share it (cheap to compare)."""
    return pd.CategoricalDtype(list(levels))


def read_text(col: pd.Series) -> pd.Series:
    """Stripped text, missing (NA) where blank; numbers and categories as Python prints
    them."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype(object)
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        values = col.astype(object).where(col.notna(), None).tolist()
        text = pd.Series([None if v is None else str(v) for v in values], dtype="string")
    else:
        text = col.astype("string")
    text = text.str.strip()
    return text.where(text.notna() & (text != ""), pd.NA)


def text_values(text: pd.Series) -> np.ndarray:
    """`read_text`'s values as an object array, None where missing."""
    values = text.to_numpy(dtype=object)
    values[pd.isna(values)] = None
    return values


def read_number(col: pd.Series, text: pd.Series | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values, NaN where blank or not a finite number; mask of present cells that are not
    a finite number). `text` is `read_text(col)` when the caller has it already."""
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=float, na_value=np.nan), np.zeros(len(col), dtype=bool)
    if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
        values = col.to_numpy(dtype=float, na_value=np.nan)
        bad = np.isinf(values)
    else:
        text = read_text(col) if text is None else text
        present = text.notna().to_numpy()
        parsed = pd.to_numeric(text_values(text), errors="coerce")
        values = np.asarray(parsed, dtype=float)
        bad = present & ~np.isfinite(values)
    return np.where(bad, np.nan, values), bad


def read_cells(frame: pd.DataFrame, pipeline: Pipeline) -> Cells:
    """Read and check every declared column present in `frame` (see the module doc)."""
    return _Reading(frame.reset_index(drop=True), pipeline).cells


class _Reading:
    """One pass over a frame: each column parsed once, each rule checked in the
    pipeline's order (id, arm, features, preference, outcome)."""

    def __init__(self, frame: pd.DataFrame, pipeline: Pipeline) -> None:
        self.frame = frame
        self.cells = Cells()
        self._texts: dict[str, pd.Series] = {}
        self._bad: dict[str, np.ndarray] = {}
        present = set(frame.columns)
        cohort = pipeline.cohort

        if cohort.id in present:
            ids = self._text(cohort.id, keep=True)
            self._check(cohort.id, ids.isna().to_numpy(), MISSING_ID, shown=False)

        arm = cohort.arm
        if arm.column in present:
            labels = self._text(arm.column, keep=True)
            self._check(arm.column, labels.isna().to_numpy(), MISSING_ARM, shown=False)
            unknown = (labels.notna() & ~labels.isin(arm.labels)).to_numpy()
            reason = f"arm label not one of {list(arm.labels)}"
            self._check(arm.column, unknown, reason, found=lambda seen: f"{reason} (found {seen})")

        for name, spec in pipeline.features.items():
            if name in present:
                if isinstance(spec, NumericFeature):
                    self._numeric_feature(name, spec)
                else:
                    self._categorical_feature(name, spec)

        pref = cohort.preference
        if pref and pref in present and pref not in pipeline.features:
            allowed = [*arm.labels, NO_PREFERENCE]
            text = self._text(pref, keep=True)
            unknown = (text.notna() & ~text.isin(allowed)).to_numpy()
            self._check(pref, unknown, f"preference must be one of {allowed}")

        if all(c in present for c in pipeline.outcome.columns):
            self._outcome(pipeline)

    # ------------------------------------------------------------------ parsing, once

    def _text(self, name: str, keep: bool = False) -> pd.Series:
        """The column as text; `keep`: also as `Cells.text` (categories are kept as
        categoricals instead)."""
        if name not in self._texts:
            self._texts[name] = read_text(self.frame[name])
            self.cells.blank[name] = self._texts[name].isna().to_numpy()
        if keep and name not in self.cells.text:
            self.cells.text[name] = text_values(self._texts[name])
        return self._texts[name]

    def _number(self, name: str) -> np.ndarray:
        """The column as floats; `_bad[name]`: present cells that are not finite numbers."""
        if name not in self.cells.numbers:
            col = self.frame[name]
            numeric = pd.api.types.is_numeric_dtype(col) and not isinstance(
                col.dtype, pd.CategoricalDtype
            )
            if not numeric:  # read as text, and problems show the text
                self._texts[name] = read_text(col)
            values, bad = read_number(col, self._texts.get(name))
            self.cells.numbers[name] = values
            self.cells.blank[name] = np.isnan(values) & ~bad
            self._bad[name] = bad
        return self.cells.numbers[name]

    # ------------------------------------------------------------------ rules

    def _numeric_feature(self, name: str, spec: NumericFeature) -> None:
        values = self._number(name)
        self._check(name, self._bad[name], NOT_A_NUMBER)
        if spec.min is not None:
            self._check(name, values < spec.min, f"below the declared minimum {spec.min:g}")
        if spec.max is not None:
            self._check(name, values > spec.max, f"above the declared maximum {spec.max:g}")

    def _categorical_feature(self, name: str, spec: CategoricalFeature) -> None:
        text = self._text(name)
        dtype = categorical_dtype(tuple(spec.levels))
        # each distinct text is looked up among the levels once, not once per row
        distinct, texts = pd.factorize(text)  # -1 where blank
        codes = np.append(dtype.categories.get_indexer(texts), -1)[distinct]
        unknown = (distinct >= 0) & (codes < 0)
        levels = f"declared levels {spec.levels}"
        reason, found = f"unknown level; {levels}", lambda seen: f"unknown level {seen}; {levels}"
        self._check(name, unknown, reason, found=found)
        # a level not declared is a problem above, so it is missing here
        self.cells.categories[name] = pd.Categorical.from_codes(codes, dtype=dtype)

    def _outcome(self, pipeline: Pipeline) -> None:
        out = pipeline.outcome
        for name in out.columns:  # a baseline that is also a feature: checked in both roles
            self._number(name)
            self._check(name, self._bad[name], NOT_A_NUMBER)
        if out.baseline is None or out.followup is None:
            return
        base, follow = self.cells.numbers[out.baseline], self.cells.numbers[out.followup]
        orphan = np.isnan(base) & ~np.isnan(follow)
        reason = f"follow-up present where baseline {out.baseline} is missing"
        self._check(out.followup, orphan, reason)
        if out.responder is not None and out.responder.relative_reduction is not None:
            reason = "a relative reduction needs a baseline above 0"
            self._check(out.baseline, ~np.isnan(base) & (base <= 0), reason)

    def _check(
        self,
        name: str,
        broken: np.ndarray,
        reason: str,
        *,
        shown: bool = True,
        found: Callable[[list[str]], str] | None = None,
    ) -> None:
        """Record the cells of `name` that break a rule. `shown`: the problem has values
        to show; `found`: the summary from the distinct values found."""
        if not broken.any():
            return
        rows = np.flatnonzero(broken)
        values = self._shown(name, rows) if shown else None
        summary = reason
        if found is not None and values is not None:
            summary = found(sorted({str(v) for v in values})[:FOUND_SHOWN])
        self.cells.problems.append(CellProblem(name, reason, rows, values, summary))

    def _shown(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The cells at `rows` as read: the stripped text, or the number as stored."""
        col = self._texts[name] if name in self._texts else self.frame[name]
        return col.iloc[rows].to_numpy(dtype=object)
