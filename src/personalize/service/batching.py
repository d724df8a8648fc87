"""Dynamic batching: concurrent requests share one scoring call and one audit transaction.

Scoring one patient is mostly fixed cost (building the frame, one pass over the learner's
and every bootstrap member's trees, the calibration maps): eight patients cost little more
than one. Writing the audit rows is one transaction either way. So each worker process
has one scoring thread: a request hands it a job and waits; the thread takes every job
queued at that moment (up to `max_patients` patients), does each model's share in one
call and hands each request its own result. Nothing waits for a batch to fill: an idle
service answers a lone request at once, and a busy one batches what arrived while the
previous call ran.

Per-patient answers do not depend on the batch (every step of predict is row by row; the
tests compare batched answers with single ones bit for bit), and each job is done with the
`LoadedModel` its request read at the start, so a hot swap mid-batch keeps its promise. If
a combined call fails, each job is retried alone, so one request's failure stays its own.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("personalize.service.batching")

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class _Queued(Generic[Job, Result]):
    model: Any  # the LoadedModel the request started with
    job: Job
    size: int
    future: Future[Result] = field(default_factory=Future)


class Batcher(Generic[Job, Result]):
    """`work(model, jobs) -> one result per job`, for many requests at once, through one
    scoring thread. `size(job)` counts a job's patients."""

    def __init__(
        self,
        work: Callable[[Any, Sequence[Job]], list[Result]],
        size: Callable[[Job], int],
        max_patients: int = 64,
    ) -> None:
        self.work = work
        self.size = size
        self.max_patients = max_patients
        self._queue: queue.SimpleQueue[_Queued[Job, Result] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, model: Any, job: Job) -> Result:
        """The job's result, done together with whatever else is queued; the event loop
        serves other requests meanwhile. Re-raises the job's exception."""
        queued: _Queued[Job, Result] = _Queued(model, job, self.size(job))
        self._ensure_thread()
        self._queue.put(queued)
        return await asyncio.wrap_future(queued.future)

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken by the scoring thread (approximate while it runs)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the scoring thread after the jobs queued so far (the server has stopped
        taking requests when its lifespan ends); a later job starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="personalize-scoring", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        carry: _Queued[Job, Result] | None = None  # taken, but over the last batch's bound
        stop = False
        while not stop:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch, size = [first], first.size
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if size + nxt.size > self.max_patients:
                    carry = nxt
                    break
                batch.append(nxt)
                size += nxt.size
            by_model: dict[int, list[_Queued[Job, Result]]] = {}
            for queued in batch:
                by_model.setdefault(id(queued.model), []).append(queued)
            for group in by_model.values():
                self._do(group)
        if carry is not None:
            self._do([carry])

    def _do(self, group: list[_Queued[Job, Result]]) -> None:
        # a request cancelled while queued (its client went away) is dropped; the others
        # can no longer be cancelled, so their results always land
        group = [queued for queued in group if queued.future.set_running_or_notify_cancel()]
        if not group:
            return
        try:
            results = self.work(group[0].model, [queued.job for queued in group])
        except Exception as exc:  # handed to the waiting requests
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            log.warning("a combined call failed (%s); doing each request alone", type(exc).__name__)
            for queued in group:
                self._retry(queued)
            return
        for queued, result in zip(group, results, strict=True):
            queued.future.set_result(result)

    def _retry(self, queued: _Queued[Job, Result]) -> None:
        """One job alone, after a combined call failed (its future is already running)."""
        try:
            queued.future.set_result(self.work(queued.model, [queued.job])[0])
        except Exception as exc:
            queued.future.set_exception(exc)
