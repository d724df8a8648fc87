"""Reading and writing cohort tables (CSV or Parquet, chosen by extension)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = (".csv", ".parquet")
# the CSV cells read as missing: pandas' read_csv defaults, named here so that every reader
# of a CSV (`read_table`, the batch scorer's streaming reader) uses the same ones
MISSING_MARKERS = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]


class TableError(ValueError):
    """A table that cannot be read or written; the message names the file and why."""


def table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TableError(f"{path}: unsupported extension {suffix!r}; use .csv or .parquet")
    return suffix


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a cohort. CSV cells are read as text so validation can name bad values itself."""
    path = Path(path)
    fmt = table_format(path)
    if not path.exists():
        raise TableError(f"cohort file not found: {path}")
    try:
        if fmt == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=MISSING_MARKERS)
        return pd.read_parquet(path)
    except Exception as exc:  # a corrupt file must be a clear message, never a traceback
        raise TableError(f"{path}: cannot read as {fmt[1:]}: {exc}") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write CSV or Parquet atomically and deterministically.

    The frame goes to a temporary file in the target's directory and is renamed over the
    target only when complete, so a failure never leaves a partial file. Equal frames give
    byte-identical files.
    """
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        if fmt == ".csv":
            with open(tmp, "x", encoding="utf-8", newline="") as fh:
                frame.to_csv(fh, index=False, lineterminator="\n")
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            with open(tmp, "xb") as fh:
                pq.write_table(table, fh, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
