"""Reading a referral list in Arrow batches: Parquet, or CSV with the lines the parser
cannot read reported by number and spilled to disk as they come (memory stays bounded)."""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from personalize.batch import ScoringError, os_reason
from personalize.batch.checking import EMPTY_ROW, required_columns
from personalize.batch.output import FORMATS, rejects_schema
from personalize.config import Pipeline
from personalize.data.table import MISSING_MARKERS

MALFORMED = "malformed CSV line (wrong number of fields)"
SPILL_ROWS = 16_384  # malformed lines held in memory before they are spilled to disk


@dataclass
class Source:
    batches: Iterator[pa.RecordBatch]
    total: int  # rows (Parquet) or bytes (CSV) for the progress bar
    unit: str
    done: Callable[[], int]
    malformed: MalformedLines | None = None
    expected_rows: int | None = None


class MalformedLines:
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


def open_source(
    path: Path,
    pipeline: Pipeline,
    chunk: int,
    stack: ExitStack,
    beside: Path,
) -> Source:
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
            return Source(parquet_batches(), n, "rows", lambda: read["rows"], expected_rows=n)
        header = _csv_header(path)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ScoringError(f"{path}: missing required column(s) {missing}")
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise ScoringError(f"{path}: repeated column name(s) {dupes}")
        malformed = MalformedLines(beside, rejects_schema(pipeline), header, pipeline.cohort.id)
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
        return Source(_checked(reader, malformed), size, "bytes", stream.tell, malformed)
    except ScoringError:
        raise
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise ScoringError(f"{path}: cannot read as {fmt[1:]}: {os_reason(exc)}") from None


def _checked(reader: Any, malformed: MalformedLines) -> Iterator[pa.RecordBatch]:
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


def read_batches(source: Source, path: Path) -> Iterator[pa.RecordBatch]:
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


def chunks_of(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
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
