"""Checking a chunk of a referral list against the pipeline's declared features: which rows
are scored, and each rejected row's column, value and reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from personalize.config import Pipeline
from personalize.data.cells import CellProblem, read_cells

EMPTY_ROW = "(row)"
REJECT_FIELDS = ["row", "line", "column", "value", "reason", "other_problems"]


def required_columns(pipeline: Pipeline) -> list[str]:
    cols = [pipeline.cohort.id, *pipeline.features]
    pref = pipeline.cohort.preference
    if pref and pref not in cols:
        cols.append(pref)
    return cols


class SeenIds:
    """Ids seen so far, as 64-bit fingerprints (8 bytes per row, sorted runs merged as
    they grow), to reject later rows that repeat an id. Two different ids share a
    fingerprint with probability about n**2 / 2**65 (3e-8 for a million rows)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def repeated(self, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Mask of ids seen before (earlier in this call or in earlier calls); records
        all of them."""
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        # the ids are (almost always) distinct: hashing them one by one is what pandas'
        # categorize step (factorize, hash the uniques, take) costs five times over
        h = pd.util.hash_array(ids.astype(object), categorize=False)
        order = np.argsort(h, kind="stable")  # equal fingerprints: the earliest row first
        ordered = h[order]
        first = np.ones(len(h), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        seen = ~first
        for run in self.runs:  # sorted keys: searched in one cache-friendly sweep
            pos = np.searchsorted(run, ordered)
            seen |= run[np.minimum(pos, len(run) - 1)] == ordered
        dup = np.empty(len(h), dtype=bool)
        dup[order] = seen
        self.runs.append(ordered[first])
        while len(self.runs) > 1 and len(self.runs[-1]) >= len(self.runs[-2]) // 2:
            self.runs.append(_union(self.runs.pop(), self.runs.pop()))
        return dup


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted distinct values of two sorted runs: a stable sort of the two runs
    side by side merges them in linear time (np.union1d sorts from scratch)."""
    merged = np.concatenate([a, b])
    merged.sort(kind="stable")
    keep = np.ones(len(merged), dtype=bool)
    keep[1:] = merged[1:] != merged[:-1]
    return merged[keep]


@dataclass
class Checked:
    """One chunk after checking: the typed frame of its good rows and its rejects."""

    frame: pd.DataFrame  # good rows: id text, float / categorical features, preference
    rejects: pd.DataFrame  # REJECT_FIELDS + id column
    reasons: Counter[str]
    good: np.ndarray  # mask of the chunk's rows in `frame`


class _Problems:
    """Each row's first problem (column, value, reason) and the rest as text."""

    def __init__(self, n: int) -> None:
        self.column = np.full(n, None, dtype=object)
        self.value = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.more: dict[int, list[str]] = {}
        self.bad = np.zeros(n, dtype=bool)

    def add(self, rows: np.ndarray, column: str, reason: str, values: Any = None) -> None:
        """`rows`: positions in the chunk; `values`: the cells shown, one per row."""
        first = ~self.bad[rows]
        self.column[rows[first]] = column
        self.reason[rows[first]] = reason
        if values is not None:
            self.value[rows[first]] = np.asarray(values, dtype=object)[first]
        for i in rows[~first].tolist():
            self.more.setdefault(i, []).append(f"{column}: {reason}")
        self.bad[rows] = True


def check_chunk(
    raw: pd.DataFrame,
    pipeline: Pipeline,
    rows: np.ndarray,
    repeated: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Checked:
    """Check one chunk of raw rows (text or typed cells). `rows` are their 1-based row
    numbers; `repeated(ids, positions)` says which of the ids (at those positions of the
    chunk) appeared on an earlier row (the engine keeps track).

    The cells are read and judged as `personalize validate` reads them (`read_cells`);
    an empty row is one problem, and an id seen on an earlier row is another."""
    n = len(raw)
    id_col = pipeline.cohort.id
    cols = required_columns(pipeline)
    cells = read_cells(raw[cols], pipeline)  # a referral list's arm or outcomes are not read
    p = _Problems(n)

    empty = np.logical_and.reduce([cells.blank[name] for name in cols])
    p.add(np.flatnonzero(empty), EMPTY_ROW, "empty row: no id and no values")

    def add(problem: CellProblem) -> None:
        live = ~empty[problem.rows]  # an empty row is one problem, not one per column
        values = None if problem.values is None else problem.values[live]
        p.add(problem.rows[live], problem.column, problem.reason, values)

    for problem in cells.problems:
        if problem.column == id_col:
            add(problem)
    ids = cells.text[id_col]
    idx = np.flatnonzero(~empty & ~cells.blank[id_col])
    dup = idx[repeated(ids[idx], idx)]
    p.add(dup, id_col, "duplicate patient id (an earlier row has the same id)", ids[dup])
    for problem in cells.problems:
        if problem.column != id_col:
            add(problem)

    typed: dict[str, Any] = {id_col: ids}
    for name in pipeline.features:
        typed[name] = cells.numbers[name] if name in cells.numbers else cells.categories[name]
    pref = pipeline.cohort.preference
    if pref and pref not in pipeline.features:
        typed[pref] = cells.text[pref]

    good = ~p.bad
    frame = pd.DataFrame(typed).loc[good].reset_index(drop=True)
    bad = np.flatnonzero(p.bad)
    rejects = pd.DataFrame(
        {
            "row": rows[bad].astype(np.int64),
            "line": pd.array([None] * len(bad), dtype="Int64"),
            id_col: ids[bad],
            "column": p.column[bad],
            "value": [None if v is None or v is pd.NA or v != v else str(v) for v in p.value[bad]],
            "reason": p.reason[bad],
            "other_problems": ["; ".join(p.more.get(int(i), [])) for i in bad],
        }
    )
    reasons = Counter(f"{c}: {r}" for c, r in zip(p.column[bad], p.reason[bad], strict=True))
    return Checked(frame, rejects, reasons, good)
