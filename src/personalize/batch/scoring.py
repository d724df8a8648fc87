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

import gc
import logging
import os
import resource
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

from personalize import fast_trees
from personalize.batch import ScoringError
from personalize.batch.checking import EMPTY_ROW, SeenIds
from personalize.batch.output import (
    FORMATS,
    ScoredChunk,
    Writer,
    output_schema,
    rejects_schema,
    score_frame,
)
from personalize.batch.paths import check_paths, default_rejects_path
from personalize.batch.reading import MALFORMED, Source, chunks_of, open_source, read_batches
from personalize.model import PersonalizeModel

log = logging.getLogger("personalize.batch.scoring")


DEFAULT_CHUNK = 50_000


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
    writers: list[Writer] = []
    try:
        with ExitStack() as stack:
            source = open_source(source_path, pipeline, chunk_size, stack, rej_path)
            out = Writer(out_path, output_schema(pipeline, explain))
            writers.append(out)
            rej = Writer(rej_path, rejects_schema(pipeline))
            writers.append(rej)
            seen = SeenIds()
            reasons: Counter[str] = Counter()
            rows_read = 0
            bar = _progress(source, progress, stack)
            # the next chunk is read while this one is scored (closed before the source)
            reading = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="scorer-read"))
            chunks = _ahead(chunks_of(read_batches(source, source_path), chunk_size), reading)
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


def _write_chunk(out: Writer, rej: Writer, done: ScoredChunk) -> None:
    out.write(done.output)
    rej.write(done.rejects)


def _progress(source: Source, show: bool, stack: ExitStack) -> Callable[[int, int], None]:
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
