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
* for k = 1..K (`--explain K`): `driver_k_feature`, `driver_k_value` (the patient's value,
  as text), `driver_k_contribution` (on the outcome's scale; positive favours the
  treatment arm); empty where a patient has fewer than k drivers;
* `warnings`: JSON list of extrapolation warnings (as the service returns them);
* `model_name`, `model_version`.

Rejects columns: `row` (1-based position among the rows the reader could parse), `line`
(for a CSV line that could not be parsed at all: its line number in the file), the id
column, `column`, `value`, `reason`, `other_problems` (further problems of the same row).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import resource
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
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
        h = pd.util.hash_array(ids.astype(object))
        _, first = np.unique(h, return_index=True)
        dup = np.ones(len(h), dtype=bool)
        dup[first] = False
        for run in self.runs:
            pos = np.searchsorted(run, h)
            dup |= run[np.minimum(pos, len(run) - 1)] == h
        self.runs.append(np.unique(h))
        while len(self.runs) > 1 and len(self.runs[-1]) >= len(self.runs[-2]) // 2:
            merged = np.union1d(self.runs.pop(), self.runs.pop())
            self.runs.append(merged)
        return dup


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
    fields += [pa.field("recommendation", pa.string()), pa.field("rationale", pa.string())]
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


def _value_text(col: pd.Series, rows: np.ndarray) -> list[str | None]:
    """The patient's value as text: the level, or the number as Python prints it."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        values = col.astype(object).to_numpy()[rows]
        return [None if v is None or v != v else str(v) for v in values]
    numbers = col.to_numpy(dtype=float)[rows].tolist()
    return [None if v != v else repr(v) for v in numbers]


def output_table(
    pred: Predictions, ids: np.ndarray, schema: pa.Schema, name: str, version: str
) -> pa.Table:
    """The scorer's columns from predict's arrays (same numbers, drivers as columns)."""
    n = len(ids)
    cols: dict[str, Any] = {schema.field(0).name: ids, **pred.answer()}
    names = np.asarray([*pred.driver_names, None], dtype=object)
    for k in range(pred.driver_index.shape[1]):
        index = pred.driver_index[:, k]
        feature = names[index]  # index -1 -> None
        value = np.full(n, None, dtype=object)
        for j in np.unique(index[index >= 0]).tolist():
            if pred.driver_names[j] == ARM_DRIVER:
                continue
            at = np.flatnonzero(index == j)
            value[at] = _value_text(pred.X[pred.driver_names[j]], at)
        contribution = np.where(index >= 0, pred.driver_contribution[:, k], np.nan)
        cols[f"driver_{k + 1}_feature"] = feature
        cols[f"driver_{k + 1}_value"] = value
        cols[f"driver_{k + 1}_contribution"] = pa.array(contribution, mask=index < 0)
    cols["warnings"] = [json.dumps(w) if w else "[]" for w in pred.warnings]
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


# --------------------------------------------------------------------------- files


class _Counting:
    """A binary file that counts the bytes read (CSV progress)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.read_bytes = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.read_bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


@dataclass
class _Source:
    batches: Iterator[pa.RecordBatch]
    total: int  # rows (Parquet) or bytes (CSV) for the progress bar
    unit: str
    done: Callable[[], int]
    malformed: list[tuple[int | None, str]] = field(default_factory=list)
    expected_rows: int | None = None


def _open_source(path: Path, columns: list[str], chunk: int, stack: ExitStack) -> _Source:
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise ScoringError(f"{path}: unsupported extension {fmt!r}; use .csv or .parquet")
    if not path.exists():
        raise ScoringError(f"input file not found: {path}")
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
        counting = _Counting(stack.enter_context(path.open("rb")))
        malformed: list[tuple[int | None, str]] = []

        def bad_row(row: Any) -> str:
            malformed.append((row.number, row.text))
            return "skip"

        reader = pcsv.open_csv(
            counting,
            read_options=pcsv.ReadOptions(block_size=8 << 20, use_threads=False),
            parse_options=pcsv.ParseOptions(
                ignore_empty_lines=False, newlines_in_values=True, invalid_row_handler=bad_row
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                include_columns=columns,
                null_values=MISSING_MARKERS,
                strings_can_be_null=True,
            ),
        )
        return _Source(
            iter(reader), path.stat().st_size, "bytes", lambda: counting.read_bytes, malformed
        )
    except ScoringError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise ScoringError(f"{path}: cannot read as {fmt[1:]}: {exc}") from None


def _csv_header(path: Path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise ScoringError(f"{path}: empty file (no header)") from None


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


class _Writer:
    """Parquet or CSV, written to a hidden temporary file beside the target."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.fmt = path.suffix.lower()
        if self.fmt not in FORMATS:
            raise ScoringError(f"{path}: unsupported extension {self.fmt!r}; use .csv or .parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        self.rows = 0
        self.schema = schema
        self._w: pq.ParquetWriter | pcsv.CSVWriter
        if self.fmt == ".parquet":
            self._w = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        else:
            self._w = pcsv.CSVWriter(self.tmp, schema)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._w.write_table(table)
            self.rows += table.num_rows

    def close(self) -> int:
        """Close; return the row count read back from the file."""
        self._w.close()
        if self.fmt == ".parquet":
            return int(pq.ParquetFile(self.tmp).metadata.num_rows)
        rows = 0
        with open(self.tmp, "rb") as fh:
            reader = pcsv.open_csv(
                fh,
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
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> None:
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
    pipeline = model.pipeline
    columns = required_columns(pipeline)
    previous_threads = fast_trees.threads()
    fast_trees.set_threads(threads or os.cpu_count() or 1)
    gc.freeze()  # the model's objects never need collecting; keeps GC passes short
    writers: list[_Writer] = []
    try:
        with ExitStack() as stack:
            source = _open_source(source_path, columns, chunk_size, stack)
            out = _Writer(out_path, output_schema(pipeline, explain))
            writers.append(out)
            rej = _Writer(rej_path, rejects_schema(pipeline))
            writers.append(rej)
            seen = SeenIds()
            reasons: Counter[str] = Counter()
            rows_read = 0
            bar = _progress(source, progress, stack)
            for chunk in _chunks(source.batches, chunk_size):
                raw = chunk.to_pandas()
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
                out.write(done.output)
                rej.write(done.rejects)
                reasons.update(done.reasons)
                bar(rows_read, source.done())
                if on_chunk is not None:
                    on_chunk(rows_read)
            if source.malformed:
                rej.write(_malformed_table(source.malformed, pipeline))
                reasons["(row): malformed CSV line"] += len(source.malformed)
            rows_in = rows_read + len(source.malformed)
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


def _malformed_table(malformed: list[tuple[int | None, str]], pipeline: Pipeline) -> pa.Table:
    frame = pd.DataFrame(
        {
            "row": pd.array([None] * len(malformed), dtype="Int64"),
            "line": pd.array([n for n, _ in malformed], dtype="Int64"),
            pipeline.cohort.id: [None] * len(malformed),
            "column": [EMPTY_ROW] * len(malformed),
            "value": [text for _, text in malformed],
            "reason": ["malformed CSV line (wrong number of fields)"] * len(malformed),
            "other_problems": [""] * len(malformed),
        }
    )
    return pa.Table.from_pandas(frame, schema=rejects_schema(pipeline), preserve_index=False)


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
