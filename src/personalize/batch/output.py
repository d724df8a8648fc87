"""What a scoring run writes: the output and rejects schemas, a scored chunk as an Arrow
table, CSV cells safe to open in a spreadsheet, and files written beside their targets and
renamed only when the run has completed."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from personalize.batch import ScoringError, os_reason
from personalize.batch.checking import check_chunk
from personalize.config import Pipeline
from personalize.learners import ARM_DRIVER
from personalize.model import PersonalizeModel, Predictions

FORMATS = (".csv", ".parquet")
# a spreadsheet reads a cell starting with one of these as a formula (OWASP's list, with
# the NUL of ASVS and the full-width forms some spreadsheets also accept)
FORMULA_START = r"^[=+\-@\t\r\x00\x{ff1d}\x{ff0b}\x{ff0d}\x{ff20}]"  # RE2 syntax
PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # read as a number, never run


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


class Writer:
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
