"""Batch scoring of referral lists: `personalize score INPUT --out OUTPUT`.

The input (CSV or Parquet) is streamed in chunks of `chunk_size` rows, so memory is bounded
whatever the input size. Every row is checked against the pipeline's declared features;
a row that fails goes to the rejects file with its row number, id, the column, the
offending value and the reason, and every other row goes through
`PersonalizeModel.predict_arrays` - the same computation the service renders with
`PersonalizeModel.predict` - into the output. Nothing is lost: input rows must equal
scored plus rejected rows or the run fails.

Both files are written to hidden temporary files beside their targets and renamed only
when the run has completed and reconciled: an interrupted run (Ctrl-C, kill, exception)
never leaves a partial file under the final name. The output depends only on the input
and the model, so a re-run is byte-identical.

Output columns (one row per scored patient, in input order):

* the pipeline's id column;
* `outcome_control`, `outcome_treatment`: calibrated expected outcome under each arm (a
  response probability for binary outcomes);
* `benefit` (treatment minus control), `benefit_lower`, `benefit_upper` (its interval);
* `recommendation` (the treatment label, the control label or "either") and `rationale`;
* `better_bet`: for a patient left at "either" without a stated preference, the arm the
  model favours with at least the pipeline's `decision.bet_level` probability, when the
  model passed its checks (empty otherwise), and `better_bet_probability`: that
  probability (empty where no bet is offered);
* for k = 1..K (`--explain K`): `driver_k_feature`, `driver_k_value` (the patient's value,
  as text), `driver_k_contribution` (on the outcome's scale; positive favours the
  treatment arm); empty where a patient has fewer than k drivers;
* `warnings`: JSON list of extrapolation warnings (as the service returns them);
* `model_name`, `model_version`.

Rejects columns: `row` (1-based position among the rows the reader could parse), `line`
(for a CSV line that could not be parsed at all: its line number in the file), the id
column, `column`, `value`, `reason`, `other_problems` (further problems of the same row).
A rejects row never carries the undeclared columns' content: a line the parser could not
read is reported by its number, the id found at the id column's position and the field
counts, and such lines are spilled to a hidden file as they come (memory stays bounded).

Paths are checked before anything is read: the input, the output and the rejects must be
three different files (symlinks and hard links included), so a run can never overwrite
its own input or lose rejects under the output. CSV outputs neutralise spreadsheet
formulas (a text cell starting with =, +, -, @, a tab, a CR, ... gets a leading `'`);
Parquet keeps the values as they are.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import itertools
import json
import logging
import os
import resource
import secrets
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from personalize import fast_trees
from personalize.config import Pipeline
from personalize.data.cells import CellProblem, read_cells
from personalize.data.table import MISSING_MARKERS
from personalize.learners import ARM_DRIVER
from personalize.model import PersonalizeModel, Predictions

log = logging.getLogger("personalize.batch.scoring")

FORMATS = (".csv", ".parquet")
DEFAULT_CHUNK = 50_000
EMPTY_ROW = "(row)"
REJECT_FIELDS = ["row", "line", "column", "value", "reason", "other_problems"]
MALFORMED = "malformed CSV line (wrong number of fields)"
SPILL_ROWS = 16_384  # malformed lines held in memory before they are spilled to disk
# a spreadsheet reads a cell starting with one of these as a formula (OWASP's list, with
# the NUL of ASVS and the full-width forms some spreadsheets also accept)
FORMULA_START = r"^[=+\-@\t\r\x00\x{ff1d}\x{ff0b}\x{ff0d}\x{ff20}]"  # RE2 syntax
PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # read as a number, never run


class ScoringError(Exception):
    """A run that cannot complete (unreadable input, missing columns, counts that do not
    reconcile); nothing is written under the final names."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ResolvedModel:
    """The model a run scores with, and the name and version written beside every row."""

    model: PersonalizeModel
    name: str
    version: str
    uri: str


def resolve_model(model_uri: str, tracking_uri: str | None = None) -> ResolvedModel:
    """Load a registered model, pinning an alias to the version it points at now (the
    whole run uses that version even if the alias moves meanwhile). Another MLflow model
    URI (runs:/..., a path) is loaded as it is and named after its pipeline."""
    # MLflow takes seconds to import; only a run that loads a model needs it
    from personalize import registry

    uri = tracking_uri or registry.default_tracking_uri()
    name, version = "", ""
    if model_uri.startswith("models:/"):
        try:
            found = registry.resolve(registry.ModelRef.parse(model_uri), uri)
        except ValueError as exc:
            raise ScoringError(str(exc)) from None
        except registry.RegistryError as exc:  # the registry's own message names the problem
            raise ScoringError(f"cannot resolve {exc}") from None
        name, version, model_uri = found.name, found.version, found.uri
    try:
        model = registry.load_model(model_uri, uri)
    except Exception as exc:
        raise ScoringError(f"cannot load model {model_uri}: {exc}") from None
    return ResolvedModel(model, name or model.pipeline.registry.model_name, version, model_uri)


# --------------------------------------------------------------------------- checking


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


# --------------------------------------------------------------------------- output


def output_schema(pipeline: Pipeline, explain: int) -> pa.Schema:
    fields = [pa.field(pipeline.cohort.id, pa.string())]
    numbers = ["outcome_control", "outcome_treatment", "benefit", "benefit_lower"]
    fields += [pa.field(name, pa.float64()) for name in [*numbers, "benefit_upper"]]
    texts = ("recommendation", "rationale", "better_bet")
    fields += [pa.field(name, pa.string()) for name in texts]
    fields.append(pa.field("better_bet_probability", pa.float64()))
    for k in range(1, explain + 1):
        fields += [
            pa.field(f"driver_{k}_feature", pa.string()),
            pa.field(f"driver_{k}_value", pa.string()),
            pa.field(f"driver_{k}_contribution", pa.float64()),
        ]
    fields += [
        pa.field("warnings", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
    ]
    return pa.schema(fields)


def rejects_schema(pipeline: Pipeline) -> pa.Schema:
    return pa.schema(
        [
            pa.field("row", pa.int64()),
            pa.field("line", pa.int64()),
            pa.field(pipeline.cohort.id, pa.string()),
            pa.field("column", pa.string()),
            pa.field("value", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("other_problems", pa.string()),
        ]
    )


def _value_texts(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, texts): the patient's value as text is texts[codes[row]]: the level, or the
    number as Python prints it (None where missing). A feature takes few distinct values,
    so each is printed once per chunk, not once per patient; numbers are told apart by
    their bits (-0.0 is not 0.0)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        levels = [None if v is None or v != v else str(v) for v in col.cat.categories]
        codes = col.cat.codes.to_numpy().astype(np.int64)
        codes[codes < 0] = len(levels)  # missing: the None after the levels
        return codes, np.array([*levels, None], dtype=object)
    bits = np.ascontiguousarray(col.to_numpy(dtype=float)).view(np.int64)
    codes, distinct = pd.factorize(bits)
    numbers = distinct.view(np.float64).tolist()
    return codes, np.array([None if v != v else repr(v) for v in numbers], dtype=object)


def _warnings_json(warnings: list[list[str]]) -> np.ndarray:
    """Each patient's warnings as JSON text; most patients have none ("[]")."""
    out = np.full(len(warnings), "[]", dtype=object)
    some = np.fromiter(map(bool, warnings), dtype=bool, count=len(warnings))
    for i in np.flatnonzero(some).tolist():
        out[i] = json.dumps(warnings[i])
    return out


def output_table(
    pred: Predictions, ids: np.ndarray, schema: pa.Schema, name: str, version: str
) -> pa.Table:
    """The scorer's columns from predict's arrays (same numbers, drivers as columns). A
    driver's feature and value are taken by Arrow from the few distinct texts, not built
    as one Python string per patient."""
    n = len(ids)
    cols: dict[str, Any] = {schema.field(0).name: ids, **pred.answer()}
    bet_p = pred.better_bet_probability
    cols["better_bet_probability"] = pa.array(bet_p, pa.float64(), mask=np.isnan(bet_p))
    names = pa.array(pred.driver_names, pa.string())
    texts: list[Any] = []  # every distinct value text of the drivers shown, feature by feature
    offset: dict[int, tuple[np.ndarray, int]] = {}  # feature -> (its codes, its first text)
    values: list[tuple[np.ndarray, np.ndarray]] = []  # per k: text position, shown
    for k in range(pred.driver_index.shape[1]):
        index = pred.driver_index[:, k]
        position = np.zeros(n, dtype=np.int64)
        shown = np.zeros(n, dtype=bool)
        drivers = np.bincount(index[index >= 0], minlength=len(pred.driver_names))
        for j in np.flatnonzero(drivers).tolist():  # ascending, as np.unique
            if pred.driver_names[j] == ARM_DRIVER:
                continue
            if j not in offset:
                codes, text = _value_texts(pred.X[pred.driver_names[j]])
                offset[j] = (codes, len(texts))
                texts.extend(text.tolist())
            codes, first = offset[j]
            at = np.flatnonzero(index == j)
            position[at] = first + codes[at]
            shown[at] = True
        values.append((position, shown))
        contribution = np.where(index >= 0, pred.driver_contribution[:, k], np.nan)
        cols[f"driver_{k + 1}_feature"] = names.take(pa.array(index, mask=index < 0))
        cols[f"driver_{k + 1}_contribution"] = pa.array(contribution, mask=index < 0)
    table = pa.array(texts, pa.string())  # None (a missing value) is null
    for k, (position, shown) in enumerate(values):
        cols[f"driver_{k + 1}_value"] = table.take(pa.array(position, mask=~shown))
    cols["warnings"] = _warnings_json(pred.warnings)
    cols["model_name"] = pa.array([name] * n, pa.string())
    cols["model_version"] = pa.array([version] * n, pa.string())
    arrays = [
        cols[f.name] if isinstance(cols[f.name], pa.Array) else pa.array(cols[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass(frozen=True)
class ScoredChunk:
    output: pa.Table
    rejects: pa.Table
    reasons: Counter[str]
    rows: np.ndarray  # the row numbers of the output's rows


def score_frame(
    model: PersonalizeModel,
    raw: pd.DataFrame,
    rows: np.ndarray,
    repeated: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    explain: int,
    name: str,
    version: str,
) -> ScoredChunk:
    """Check and score one chunk. The local and Spark engines both score through here."""
    pipeline = model.pipeline
    checked = check_chunk(raw, pipeline, rows, repeated)
    schema = output_schema(pipeline, explain)
    if len(checked.frame):
        pred = model.predict_arrays(checked.frame, explain=explain)
        ids = checked.frame[pipeline.cohort.id].to_numpy(dtype=object)
        out = output_table(pred, ids, schema, name, version)
    else:
        out = schema.empty_table()
    rejects = pa.Table.from_pandas(
        checked.rejects, schema=rejects_schema(pipeline), preserve_index=False
    )
    return ScoredChunk(out, rejects, checked.reasons, np.asarray(rows)[checked.good])


# --------------------------------------------------------------------------- paths


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks followed, `..`
    removed), or, when both exist, the same device and inode (hard links, bind mounts)."""
    with contextlib.suppress(OSError, RuntimeError):  # a symlink loop: compare inodes
        if a.resolve() == b.resolve():
            return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_paths(
    input_path: Path, output_path: Path, rejects_path: Path, *, regular: bool = True
) -> None:
    """Refuse, before anything is read, a run whose input, output and rejects are not
    three different files: writing one over another would replace the input or lose the
    rejects while the counts still reconcile. With `regular`, an existing output or
    rejects path must be a regular file (never a device, a FIFO or a directory)."""
    roles = [
        (f"input {input_path}", input_path),
        (f"output (--out) {output_path}", output_path),
        (f"rejects file (--rejects) {rejects_path}", rejects_path),
    ]
    for (first, a), (second, b) in itertools.combinations(roles, 2):
        if same_file(a, b):
            raise ScoringError(
                f"{second} is the same file as {first}; refusing to run (nothing read or "
                "written): give distinct paths"
            )
    for role, path in roles[1:]:
        if regular:
            with contextlib.suppress(OSError):
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise ScoringError(
                        f"{role} exists and is not a regular file; refusing to replace it"
                    )
        else:  # a directory output is replaced whole: it must not hold the input
            with contextlib.suppress(OSError, RuntimeError):
                if input_path.resolve().is_relative_to(path.resolve()):
                    raise ScoringError(f"{role} contains the {roles[0][0]}; refusing to replace it")


def os_reason(exc: BaseException) -> str:
    """An OS error's reason in words ('No space left on device'), else its message."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return " ".join(str(exc).split()) or type(exc).__name__  # one line


# --------------------------------------------------------------------------- files


@dataclass
class _Source:
    batches: Iterator[pa.RecordBatch]
    total: int  # rows (Parquet) or bytes (CSV) for the progress bar
    unit: str
    done: Callable[[], int]
    malformed: _MalformedLines | None = None
    expected_rows: int | None = None


class _MalformedLines:
    """CSV lines the parser could not read (wrong number of fields), as rejects rows: the
    line number, the id found at the id column's position (when the line has that many
    fields) and the field counts - never the line itself, whose undeclared columns may
    hold anything. They are spilled to a hidden Arrow file beside the rejects every
    `SPILL_ROWS` lines and appended to the rejects at the end, so a file of bad lines
    costs disk, not memory, and the rejects keep their order whatever the chunk size.

    Called by the CSV parser (`invalid_row_handler`), it never raises into the parser: a
    failure is kept in `error` for the reading loop to raise."""

    def __init__(self, beside: Path, schema: pa.Schema, header: list[str], id_col: str) -> None:
        self.path = beside.with_name(f".{beside.name}.{os.getpid()}.{secrets.token_hex(6)}.bad.tmp")
        self.schema = schema
        self.fields = len(header)
        self.id_index = header.index(id_col)
        self.count = 0
        self.error: BaseException | None = None
        self._held: list[tuple[int | None, str | None, int]] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def __call__(self, row: Any) -> str:
        try:
            self._held.append((row.number, self._id(row.text), row.actual_columns))
            self.count += 1
            if len(self._held) >= SPILL_ROWS:
                self.spill()
        except BaseException as exc:  # raised by the reading loop instead
            self.error = self.error or exc
        return "skip"

    def _id(self, text: str) -> str | None:
        """The id cell of a line that has one (stripped text), else None."""
        try:
            cells = next(csv.reader([text]), [])
        except csv.Error:
            return None
        if len(cells) <= self.id_index:
            return None
        return cells[self.id_index].strip() or None

    def _table(self) -> pa.Table:
        held, n = self._held, len(self._held)
        return pa.Table.from_arrays(
            [
                pa.nulls(n, pa.int64()),
                pa.array([line for line, _, _ in held], pa.int64()),
                pa.array([id_ for _, id_, _ in held], pa.string()),
                pa.array([EMPTY_ROW] * n, pa.string()),
                pa.nulls(n, pa.string()),
                pa.array(
                    [
                        f"{MALFORMED[:-1]}: {fields} field(s), the header has {self.fields})"
                        for _, _, fields in held
                    ],
                    pa.string(),
                ),
                pa.array([""] * n, pa.string()),
            ],
            schema=self.schema,
        )

    def spill(self) -> None:
        if not self._held:
            return
        table = self._table()
        self._held = []
        try:
            if self._writer is None:
                self._writer = pa.ipc.new_stream(str(self.path), self.schema)
            self._writer.write_table(table)
        except OSError as exc:
            raise ScoringError(
                f"cannot write {self.path} (malformed lines, beside the rejects file): "
                f"{os_reason(exc)}; nothing written"
            ) from None

    def check(self) -> None:
        if self.error is not None:
            if isinstance(self.error, ScoringError):
                raise self.error
            raise ScoringError(f"recording malformed CSV lines failed: {self.error}")

    def tables(self) -> Iterator[pa.Table]:
        """The rejects rows of every malformed line, in file order, a spill at a time."""
        self.check()
        if self._writer is None:
            if self._held:
                yield self._table()
            return
        self.spill()
        self._writer.close()
        self._writer = None
        with pa.OSFile(str(self.path)) as fh:
            for batch in pa.ipc.open_stream(fh):
                yield pa.Table.from_batches([batch])

    def remove(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self.path.unlink(missing_ok=True)


def _open_source(
    path: Path,
    pipeline: Pipeline,
    chunk: int,
    stack: ExitStack,
    beside: Path,
) -> _Source:
    """The input's batches (only the required columns), after checking that they are all
    there. `beside`: where a CSV's malformed lines are spilled (the rejects path)."""
    columns = required_columns(pipeline)
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise ScoringError(f"{path}: unsupported extension {fmt!r}; use .csv or .parquet")
    if not path.exists():
        raise ScoringError(f"input file not found: {path}")
    if not path.is_file():
        raise ScoringError(f"input {path} is not a regular file")
    try:
        if fmt == ".parquet":
            pf = stack.enter_context(pq.ParquetFile(path))
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise ScoringError(f"{path}: missing required column(s) {missing}")
            read = {"rows": 0}

            def parquet_batches() -> Iterator[pa.RecordBatch]:
                for b in pf.iter_batches(batch_size=chunk, columns=columns, use_threads=False):
                    read["rows"] += b.num_rows
                    yield b

            n = pf.metadata.num_rows
            return _Source(parquet_batches(), n, "rows", lambda: read["rows"], expected_rows=n)
        header = _csv_header(path)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ScoringError(f"{path}: missing required column(s) {missing}")
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise ScoringError(f"{path}: repeated column name(s) {dupes}")
        malformed = _MalformedLines(beside, rejects_schema(pipeline), header, pipeline.cohort.id)
        stack.callback(malformed.remove)
        # a native file: the reader's I/O threads never need the interpreter (see _finished)
        stream = stack.enter_context(pa.OSFile(str(path)))
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=8 << 20, use_threads=False),
            parse_options=pcsv.ParseOptions(
                ignore_empty_lines=False, newlines_in_values=True, invalid_row_handler=malformed
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                include_columns=columns,
                null_values=MISSING_MARKERS,
                strings_can_be_null=True,
            ),
        )
        stack.callback(_finished, reader)
        size = path.stat().st_size
        return _Source(_checked(reader, malformed), size, "bytes", stream.tell, malformed)
    except ScoringError:
        raise
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise ScoringError(f"{path}: cannot read as {fmt[1:]}: {os_reason(exc)}") from None


def _checked(reader: Any, malformed: _MalformedLines) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        malformed.check()
        yield batch
    malformed.check()


def _finished(reader: Any) -> None:
    """Close the CSV reader while the interpreter is fully alive: its parse options hold
    the (Python) malformed-line handler, which must not be released by an Arrow thread
    during interpreter shutdown."""
    with contextlib.suppress(Exception):
        reader.close()


def _csv_header(path: Path) -> list[str]:
    """The first record, decoding only the lines it spans (a bad byte further down is
    the reader's to report, with its row)."""

    def lines(fh: Any) -> Iterator[str]:
        first = True
        for raw in fh:
            yield raw.decode("utf-8-sig" if first else "utf-8")
            first = False

    try:
        with open(path, "rb") as fh:
            return next(csv.reader(lines(fh)))
    except StopIteration:
        raise ScoringError(f"{path}: empty file (no header)") from None
    except UnicodeDecodeError:
        raise ScoringError(f"{path}: the header is not UTF-8 text") from None


def _read(source: _Source, path: Path) -> Iterator[pa.RecordBatch]:
    """The source's batches; an error while reading names the input (one line)."""
    batches = source.batches
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except ScoringError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise ScoringError(f"cannot read {path}: {os_reason(exc)}; nothing written") from None
        yield batch


def _chunks(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Exactly `size` rows per chunk (the last may be shorter), whatever the reader's
    batch sizes: chunking depends only on the input."""
    buf: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        buf.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, size)
            rest = table.slice(size)
            buf, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buf)


def neutralise_formulas(table: pa.Table) -> pa.Table:
    """OWASP's defence against formula injection for a CSV a spreadsheet may open: a text
    cell starting with =, +, -, @, a tab, a CR (or NUL, or a full-width = + - @) gets a
    leading single quote, so a spreadsheet shows it as text instead of running it. Text
    that is a plain number (`-1.5`, `+3e2`) is left alone (a spreadsheet reads it as a
    number, never a formula); numeric columns are never touched."""
    columns = []
    for spec, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_string(spec.type) or pa.types.is_large_string(spec.type):
            risky = pc.and_(
                pc.match_substring_regex(column, FORMULA_START),
                pc.invert(pc.match_substring_regex(column, PLAIN_NUMBER)),
            )
            if pc.any(risky).as_py():
                quoted = pc.utf8_replace_slice(column, start=0, stop=0, replacement="'")
                column = pc.if_else(risky, quoted, column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


class _Writer:
    """Parquet or CSV, written to a hidden temporary file beside the target. Every OS
    error (a full disk, a read-only directory) becomes one `ScoringError` naming the
    target and the reason."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.fmt = path.suffix.lower()
        if self.fmt not in FORMATS:
            raise ScoringError(f"{path}: unsupported extension {self.fmt!r}; use .csv or .parquet")
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        self.rows = 0
        self.schema = schema
        self._w: pq.ParquetWriter | pcsv.CSVWriter
        with self._failing("create"):
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.fmt == ".parquet":
                self._w = pq.ParquetWriter(self.tmp, schema, compression="zstd")
            else:
                self._w = pcsv.CSVWriter(self.tmp, schema)

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise ScoringError(
                f"cannot {what} {self.path}: {os_reason(exc)}; nothing written"
            ) from None

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            if self.fmt == ".csv":
                table = neutralise_formulas(table)
            with self._failing("write"):
                self._w.write_table(table)
            self.rows += table.num_rows

    def close(self) -> int:
        """Close; return the row count read back from the file."""
        with self._failing("write"):
            self._w.close()
        with self._failing("read back"):
            if self.fmt == ".parquet":
                return int(pq.ParquetFile(self.tmp).metadata.num_rows)
            rows = 0
            with pa.OSFile(str(self.tmp)) as fh:
                reader = pcsv.open_csv(
                    fh,
                    read_options=pcsv.ReadOptions(use_threads=False),
                    parse_options=pcsv.ParseOptions(newlines_in_values=True),
                    convert_options=pcsv.ConvertOptions(
                        column_types={f.name: pa.string() for f in self.schema}
                    ),
                )
                for batch in reader:
                    rows += batch.num_rows
            return rows

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # closed or broken: removing it is what matters
            self._w.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def commit(self) -> None:
        with self._failing("replace"):
            os.replace(self.tmp, self.path)


def default_rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class ScoreSummary:
    input: str
    output: str
    rejects: str
    rows_in: int
    scored: int
    rejected: int
    seconds: float
    peak_rss_mib: float
    model_name: str
    model_version: str
    engine: str = "local"
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["rows_per_second"] = self.rows_per_second
        return out


def score_file(
    model: PersonalizeModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    model_name: str,
    model_version: str,
    explain: int = 3,
    rejects_path: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    threads: int | None = None,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score a referral list into `output_path` and `rejects_path` (see module doc)."""
    if chunk_size < 1:
        raise ScoringError("--chunk-size must be at least 1")
    if explain < 0:
        raise ScoringError("--explain must be 0 or more")
    start = time.perf_counter()
    source_path, out_path = Path(input_path), Path(output_path)
    rej_path = Path(rejects_path) if rejects_path else default_rejects_path(out_path)
    for path in (out_path, rej_path):
        if path.suffix.lower() not in FORMATS:
            raise ScoringError(
                f"{path}: unsupported extension {path.suffix!r}; use .csv or .parquet"
            )
    check_paths(source_path, out_path, rej_path)
    pipeline = model.pipeline
    previous_threads = fast_trees.threads()
    fast_trees.set_threads(threads or os.cpu_count() or 1)
    gc.freeze()  # the model's objects never need collecting; keeps GC passes short
    writers: list[_Writer] = []
    try:
        with ExitStack() as stack:
            source = _open_source(source_path, pipeline, chunk_size, stack, rej_path)
            out = _Writer(out_path, output_schema(pipeline, explain))
            writers.append(out)
            rej = _Writer(rej_path, rejects_schema(pipeline))
            writers.append(rej)
            seen = SeenIds()
            reasons: Counter[str] = Counter()
            rows_read = 0
            bar = _progress(source, progress, stack)
            # the next chunk is read while this one is scored (closed before the source)
            reading = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="scorer-read"))
            chunks = _ahead(_chunks(_read(source, source_path), chunk_size), reading)
            # a chunk's files are written (Arrow encodes and compresses without the GIL)
            # while the next one is scored, in input order, one chunk in flight at most;
            # leaving the block waits for that write, so nothing is discarded under it
            with ThreadPoolExecutor(1, thread_name_prefix="scorer-write") as background:
                writing: Future[None] | None = None
                for chunk, raw in chunks:
                    rows = np.arange(rows_read + 1, rows_read + chunk.num_rows + 1)
                    rows_read += chunk.num_rows
                    done = score_frame(
                        model,
                        raw,
                        rows,
                        seen.repeated,
                        explain=explain,
                        name=model_name,
                        version=model_version,
                    )
                    if writing is not None:
                        writing.result()  # its error (a full disk) stops the run here
                    writing = background.submit(_write_chunk, out, rej, done)
                    reasons.update(done.reasons)
                    bar(rows_read, source.done())
                    if on_chunk is not None:
                        on_chunk(rows_read)
                if writing is not None:
                    writing.result()
            malformed = 0
            if source.malformed is not None:
                for table in source.malformed.tables():
                    rej.write(table)
                malformed = source.malformed.count
            if malformed:
                reasons[f"{EMPTY_ROW}: {MALFORMED}"] += malformed
            rows_in = rows_read + malformed
            scored, rejected_rows = out.close(), rej.close()
            if source.expected_rows is not None and source.expected_rows != rows_in:
                raise ScoringError(
                    f"read {rows_in} rows but {source_path} declares {source.expected_rows}"
                )
            if scored != out.rows or rejected_rows != rej.rows or rows_in != scored + rejected_rows:
                raise ScoringError(
                    f"counts do not reconcile: {rows_in} input rows, {scored} scored, "
                    f"{rejected_rows} rejected; nothing written"
                )
            rej.commit()
            out.commit()
    except BaseException:
        for w in writers:
            w.discard()
        raise
    finally:
        gc.unfreeze()
        fast_trees.set_threads(previous_threads)
    summary = ScoreSummary(
        input=str(source_path),
        output=str(out_path),
        rejects=str(rej_path),
        rows_in=rows_in,
        scored=scored,
        rejected=rejected_rows,
        seconds=time.perf_counter() - start,
        peak_rss_mib=peak_rss_mib(),
        model_name=model_name,
        model_version=model_version,
        reasons=dict(reasons.most_common()),
    )
    log.info(
        "scored %s: %d input rows = %d scored + %d rejected; %.0f rows/s; peak RSS %.0f MiB;"
        " model %s/%s",
        source_path,
        summary.rows_in,
        summary.scored,
        summary.rejected,
        summary.rows_per_second,
        summary.peak_rss_mib,
        model_name,
        model_version,
    )
    return summary


def _ahead(
    chunks: Iterator[pa.Table], pool: ThreadPoolExecutor
) -> Iterator[tuple[pa.Table, pd.DataFrame]]:
    """Each chunk with its frame, the next one read and converted on `pool` (one Python
    thread: the reader's own threads stay off, so no Arrow worker runs Python code) while
    the caller scores this one. A reading error is raised here, in order."""

    def step() -> tuple[pa.Table, pd.DataFrame] | None:
        chunk = next(chunks, None)
        return None if chunk is None else (chunk, chunk.to_pandas(use_threads=False))

    pending = pool.submit(step)
    while (item := pending.result()) is not None:
        pending = pool.submit(step)
        yield item


def _write_chunk(out: _Writer, rej: _Writer, done: ScoredChunk) -> None:
    out.write(done.output)
    rej.write(done.rejects)


def _progress(source: _Source, show: bool, stack: ExitStack) -> Callable[[int, int], None]:
    """A rich progress bar (rows, rows/s, ETA) on stderr; a no-op when not shown."""
    if not show:
        return lambda rows, done: None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.perf_counter()
    progress = stack.enter_context(
        Progress(
            TextColumn("scoring"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rows]:>12,} rows"),
            TextColumn("{task.fields[rate]:>9,.0f} rows/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
    )
    task = progress.add_task("scoring", total=source.total or 1, rows=0, rate=0.0)

    def update(rows: int, done: int) -> None:
        rate = rows / max(time.perf_counter() - started, 1e-9)
        progress.update(task, completed=min(done, source.total), rows=rows, rate=rate)

    return update
