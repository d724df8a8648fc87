"""A feature frame's columns as arrays, converted once per scoring call.

pandas builds a new Series for every ``X[name]`` (microseconds each, and more for the
categories of a categorical). Scoring one patient reads every column from several places:
the compiled trees' matrix, the linear designs, the range warnings and the drivers'
values, so that cost was most of a one-patient answer. Inside ``reading(X)`` (which
`PersonalizeModel.predict_arrays` opens) `columns(X)` converts the frame once and every
reader shares the result; outside it each call converts afresh. The frame must not be
modified while it is being read, which holds for the frames `feature_frame` builds.
`validate.typed_columns` builds the columns before the frame, so nothing is converted
back.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Column:
    """values: floats; for a categorical, its level codes (NaN where missing)."""

    values: np.ndarray
    levels: list[str] | None = None  # a categorical's levels, in code order
    float64: bool = False  # a numeric column stored as float64 (not converted)
    # a categorical's own categories, whatever their type (None: `levels` are they)
    categories: pd.Index | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def codes(self) -> np.ndarray:
        """A categorical's codes as integers, -1 where missing (computed once: every
        bootstrap member's linear design reads them)."""
        return np.where(np.isnan(self.values), -1, self.values).astype(np.int64)

    def onehot(self) -> np.ndarray:
        """A categorical as one 0/1 column per level (all 0 where missing)."""
        assert self.levels is not None, "one-hot encoding needs a categorical column"
        codes = self.codes
        out = np.zeros((len(codes), len(self.levels)))
        seen = codes >= 0
        out[np.flatnonzero(seen), codes[seen]] = 1.0
        return out


def convert(col: pd.Series) -> Column:
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        values = codes.astype(float)
        values[codes < 0] = np.nan
        cats = col.cat.categories
        return Column(values, [str(v) for v in cats], categories=cats)
    return Column(col.to_numpy(dtype=float), float64=col.dtype == np.float64)


_open: contextvars.ContextVar[
    tuple[pd.DataFrame, dict[str, Column], dict[Hashable, Any]] | None
] = contextvars.ContextVar("feature_columns", default=None)

T = TypeVar("T")


def columns(X: pd.DataFrame) -> dict[str, Column]:
    """Every column of X as a `Column` (shared within `reading(X)`)."""
    current = _open.get()
    if current is not None and current[0] is X:
        return current[1]
    return {str(name): convert(col) for name, col in X.items()}


def shared(X: pd.DataFrame, key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()` once per `key` within `reading(X)` (dropped when the block ends), e.g. a
    design matrix that the learner and its bootstrap members all read; outside the block
    it is computed afresh on every call. The result must not be modified."""
    current = _open.get()
    if current is None or current[0] is not X:
        return compute()
    store = current[2]
    if key not in store:
        store[key] = compute()
    value: T = store[key]
    return value


@contextlib.contextmanager
def reading(
    X: pd.DataFrame, converted: dict[str, Column] | None = None
) -> Iterator[dict[str, Column]]:
    """Within the block, X's columns are converted once (or taken from `converted`, when
    the caller built X from them)."""
    cols = converted if converted is not None else {str(n): convert(c) for n, c in X.items()}
    token = _open.set((X, cols, {}))
    try:
        yield cols
    finally:
        _open.reset(token)
