"""`personalize score --engine spark`: the same scorer over PySpark, Parquet in and out.

The driver resolves the model once (an alias is pinned to its version), broadcasts the
pickled `PersonalizeModel`, and Spark runs `scoring.score_frame` - the local engine's
check-and-score function, hence the same `PersonalizeModel.predict_arrays` - over Arrow
batches with `mapInPandas`. What the local engine keeps in one process is done with Spark
operations first:

* row numbers (1-based, in read order) from `monotonically_increasing_id` and the
  partitions' row counts;
* repeated ids: a window over the normalised id (the scorer's own normalisation, as a
  pandas UDF) marks every occurrence after the first;
* rows are sorted by row number before scoring, so the output's order is the input's.

Output and rejects are Parquet directories written under hidden temporary names and
renamed (Hadoop FileSystem API) after the counts reconcile; an interrupted job leaves
nothing under the final names. See docs/scoring.md for cluster submission.
"""

from __future__ import annotations

import io
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from personalize.batch import ScoringError
from personalize.batch.checking import REJECT_FIELDS, required_columns
from personalize.batch.output import output_schema, rejects_schema, score_frame
from personalize.batch.paths import check_paths, default_rejects_path
from personalize.batch.scoring import ResolvedModel, ScoreSummary, peak_rss_mib
from personalize.data.cells import read_text, text_values

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

KIND = "_kind"
ROWS_PER_PARTITION = 250_000
ROW = "_row"
DUP = "_dup"
_worker_models: dict[str, Any] = {}


def session(master: str | None = None, app_name: str = "personalize-score") -> SparkSession:
    """The active Spark session, or a new one (`master` e.g. "local[2]" for one machine;
    under spark-submit the cluster's master is used)."""
    import sys

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
        if master.startswith("local"):
            # local workers must run this interpreter (the one with personalize installed);
            # PySpark reads PYSPARK_PYTHON when the context starts
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    kinds = {pa.string(): StringType(), pa.float64(): DoubleType(), pa.int64(): LongType()}
    return StructType([StructField(f.name, kinds[f.type], True) for f in schema])


def _combined_schema(out: pa.Schema, rej: pa.Schema) -> pa.Schema:
    """One schema for mapInPandas: output columns, then reject columns, row and kind."""
    fields = list(out)
    fields += [f for f in rej if f.name not in out.names and f.name != "row"]
    fields += [pa.field(ROW, pa.int64()), pa.field(KIND, pa.string())]
    return pa.schema(fields)


def _as_pandas(table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """Arrow to the pandas types PySpark converts back exactly: float64 (NaN becomes
    null, as the local engine's nulls are), nullable Int64, object strings with None."""
    frame = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    for f in schema:
        if f.name in table.column_names:
            values = table.column(f.name)
        else:
            values = pa.nulls(table.num_rows, f.type)
        if f.type == pa.float64():
            frame[f.name] = values.to_numpy(zero_copy_only=False)
        elif f.type == pa.int64():
            frame[f.name] = pd.array(values.to_pylist(), dtype=pd.Int64Dtype())
        else:
            frame[f.name] = pd.Series(values.to_pylist(), dtype=object)
    return frame


def _scorer(
    payload: Any,
    token: str,
    explain: int,
    name: str,
    version: str,
    columns: list[str],
    schema: pa.Schema,
) -> Any:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import joblib

        from personalize import fast_trees

        fast_trees.set_threads(1)  # Spark runs one worker per core already
        model = _worker_models.get(token)  # once per worker process, not per task
        if model is None:
            _worker_models.clear()
            model = _worker_models[token] = joblib.load(io.BytesIO(payload.value))
        for pdf in batches:
            rows = pdf[ROW].to_numpy(dtype=np.int64)
            dup = pdf[DUP].to_numpy(dtype=bool)

            def repeated(ids: np.ndarray, positions: np.ndarray, dup: np.ndarray = dup) -> Any:
                return dup[positions]

            done = score_frame(
                model,
                pdf[columns],
                rows,
                repeated,
                explain=explain,
                name=name,
                version=version,
            )
            out = _as_pandas(done.output, schema)
            out[ROW] = pd.array(done.rows, dtype=pd.Int64Dtype())
            out[KIND] = pd.Series(["scored"] * len(out), dtype=object)
            rej = _as_pandas(done.rejects, schema)
            rej[ROW] = pd.array(done.rejects.column("row").to_pylist(), dtype=pd.Int64Dtype())
            rej[KIND] = pd.Series(["rejected"] * len(rej), dtype=object)
            yield pd.concat([out, rej], ignore_index=True)[schema.names]

    return run


def _numbered(df: DataFrame) -> DataFrame:
    """Add 1-based row numbers in read order."""
    from pyspark.sql import functions as F

    tagged = df.withColumn("_pid", F.spark_partition_id()).withColumn(
        "_mid", F.monotonically_increasing_id()
    )
    rows = tagged.groupBy("_pid").count().collect()
    counts: dict[int, int] = {int(r[0]): int(r[1]) for r in rows}
    offsets, total = {}, 0
    for pid in sorted(counts):
        offsets[pid] = total
        total += counts[pid]
    offset = F.create_map(*[x for pid, off in offsets.items() for x in (F.lit(pid), F.lit(off))])
    if not offsets:
        offset = F.create_map(F.lit(0), F.lit(0))
    local = F.col("_mid") - F.col("_pid").cast("long") * F.lit(1 << 33)
    return tagged.withColumn(ROW, offset[F.col("_pid")] + local + 1).drop("_pid", "_mid")


def _flag_repeats(df: DataFrame, id_col: str) -> DataFrame:
    """DUP: the id (normalised as the scorer does) already appeared on an earlier row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")  # type: ignore[call-overload]
    def normalised(ids: pd.Series) -> pd.Series:
        return pd.Series(text_values(read_text(ids)), dtype=object)

    keyed = df.withColumn("_key", normalised(F.col(id_col).cast("string")))
    first = Window.partitionBy("_key").orderBy(ROW)
    return keyed.withColumn(DUP, F.col("_key").isNotNull() & (F.row_number().over(first) > 1)).drop(
        "_key"
    )


def _fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _temp_beside(path: str) -> str:
    head, _, name = path.rstrip("/").rpartition("/")
    return f"{head}/.{name}.{secrets.token_hex(6)}.tmp" if head else f".{name}.tmp"


def _replace(spark: SparkSession, tmp: str, final: str) -> None:
    fs, src = _fs(spark, tmp)
    _, dst = _fs(spark, final)
    if fs.exists(dst):
        fs.delete(dst, True)
    if not fs.rename(src, dst):
        raise ScoringError(f"could not move {tmp} to {final}")


def _delete(spark: SparkSession, path: str) -> None:
    fs, p = _fs(spark, path)
    if fs.exists(p):
        fs.delete(p, True)


def _uri(path: str | Path) -> str:
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def score_spark(
    resolved: ResolvedModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    explain: int = 3,
    rejects_path: str | Path | None = None,
    chunk_size: int = 10_000,
    spark: SparkSession | None = None,
) -> ScoreSummary:
    """Score a Parquet referral list with Spark into Parquet directories `output_path`
    and `rejects_path` (default: OUTPUT's name + .rejects)."""
    import joblib
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    start = time.perf_counter()
    spark = spark or session()
    model = resolved.model
    pipeline = model.pipeline
    src, out_uri = _uri(input_path), _uri(output_path)
    rej_uri = _uri(rejects_path or default_rejects_path(Path(str(output_path))))
    if not any("://" in str(p) for p in (input_path, output_path, rej_uri)):
        check_paths(Path(src), Path(out_uri), Path(rej_uri), regular=False)
    if not src.rstrip("/").endswith(".parquet") and not Path(src).is_dir():
        raise ScoringError(f"{input_path}: the Spark engine reads Parquet (a file or directory)")
    columns = required_columns(pipeline)
    try:
        df = spark.read.parquet(src)
    except Exception as exc:
        raise ScoringError(f"{input_path}: cannot read as Parquet: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ScoringError(f"{input_path}: missing required column(s) {missing}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_size))

    buf = io.BytesIO()
    joblib.dump(model, buf)
    payload = spark.sparkContext.broadcast(buf.getvalue())
    out_schema = output_schema(pipeline, explain)
    schema = _combined_schema(out_schema, rejects_schema(pipeline))

    numbered = _numbered(df.select(*columns))
    rows_in = numbered.count()
    # contiguous row ranges, in order: part files follow the input's order
    parts = max(spark.sparkContext.defaultParallelism, -(-rows_in // ROWS_PER_PARTITION), 1)
    prepared = (
        _flag_repeats(numbered, pipeline.cohort.id)
        .repartitionByRange(parts, ROW)
        .sortWithinPartitions(ROW)
    )
    token = secrets.token_hex(8)
    scored = prepared.mapInPandas(
        _scorer(payload, token, explain, resolved.name, resolved.version, columns, schema),
        _spark_schema(schema),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    tmp_out, tmp_rej = _temp_beside(out_uri), _temp_beside(rej_uri)
    try:
        counts: dict[str, int] = {r[0]: int(r[1]) for r in scored.groupBy(KIND).count().collect()}
        n_scored, n_rejected = int(counts.get("scored", 0)), int(counts.get("rejected", 0))
        scored.filter(F.col(KIND) == "scored").select(*out_schema.names).write.parquet(tmp_out)
        scored.filter(F.col(KIND) == "rejected").withColumnRenamed(ROW, "row").select(
            *rejects_schema(pipeline).names
        ).write.parquet(tmp_rej)
        written = spark.read.parquet(tmp_out).count()
        written_rej = spark.read.parquet(tmp_rej).count()
        if rows_in != n_scored + n_rejected or written != n_scored or written_rej != n_rejected:
            raise ScoringError(
                f"counts do not reconcile: {rows_in} input rows, {written} scored, "
                f"{written_rej} rejected; nothing written"
            )
        reasons = {
            f"{r['column']}: {r['reason']}": int(r["count"])
            for r in spark.read.parquet(tmp_rej)
            .groupBy("column", "reason")
            .count()
            .orderBy(F.desc("count"), "column", "reason")
            .collect()
        }
        _replace(spark, tmp_rej, rej_uri)
        _replace(spark, tmp_out, out_uri)
    except BaseException:
        _delete(spark, tmp_out)
        _delete(spark, tmp_rej)
        raise
    finally:
        scored.unpersist()
        payload.unpersist()
    return ScoreSummary(
        input=str(input_path),
        output=str(output_path),
        rejects=str(rejects_path or default_rejects_path(Path(str(output_path)))),
        rows_in=rows_in,
        scored=n_scored,
        rejected=n_rejected,
        seconds=time.perf_counter() - start,
        peak_rss_mib=peak_rss_mib(),
        model_name=resolved.name,
        model_version=resolved.version,
        engine="spark",
        reasons=reasons,
    )


__all__ = ["REJECT_FIELDS", "score_spark", "session"]
