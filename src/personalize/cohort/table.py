"""Reading and writing cohort tables (CSV or Parquet, chosen by extension)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

FORMATS = (".csv", ".parquet")


class TableError(Exception):
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
            return pd.read_csv(path, dtype=str, keep_default_na=True)
        return pd.read_parquet(path)
    except Exception as exc:  # a corrupt file must be a clear message, never a traceback
        raise TableError(f"{path}: cannot read as {fmt[1:]}: {exc}") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write atomically: a temporary file beside the target, renamed only when complete."""
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if fmt == ".csv":
            frame.to_csv(tmp, index=False, lineterminator="\n")
        else:
            frame.to_parquet(tmp, index=False, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
