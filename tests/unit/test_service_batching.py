"""Dynamic batching (service.batching): concurrent requests share one scoring call, each gets
exactly its own rows, bit for bit what it would get alone, on the model it started with."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from personalize.service.app import create_app
from personalize.service.batching import Batcher
from personalize.service.recommend import score
from support.registry import TrainedRegistry
from support.service import STAMP_PATIENT, settings


class Recorder:
    """Work that records its calls (a job is a list of patients); the first call waits for
    `release`, so the jobs submitted meanwhile queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[int]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, model: Any, jobs: Sequence[list[dict[str, Any]]]) -> list[Any]:
        with self.lock:
            self.calls.append((model, [p["i"] for job in jobs for p in job]))
        self.entered.set()
        assert self.release.wait(30)
        if any(p.get("fail") for job in jobs for p in job):
            raise ValueError("cannot score this patient")
        return [[(model, p["i"] * 10) for p in job] for job in jobs]


def batcher_of(recorder: Any, max_patients: int = 64) -> Batcher[Any, Any]:
    return Batcher(recorder, size=len, max_patients=max_patients)


def submit_all(
    batcher: Batcher[Any, Any], requests: list[tuple[Any, list[dict[str, Any]]]], recorder: Recorder
) -> list[Any]:
    """Submit the first request, wait until it is being scored, queue the others, release."""
    results: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        model, patients = requests[i]
        try:
            results[i] = asyncio.run(batcher.submit(model, patients))
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    assert recorder.entered.wait(30)
    for t in threads[1:]:
        t.start()
    while batcher.waiting < len(requests) - 1:  # all queued behind the first call
        threading.Event().wait(0.005)
    recorder.release.set()
    for t in threads:
        t.join(30)
    return results


def test_queued_requests_are_scored_together_and_each_gets_its_own_rows() -> None:
    recorder = Recorder()
    batcher = batcher_of(recorder)
    model = object()
    requests = [(model, [{"i": 10 * r + k} for k in range(r % 3 + 1)]) for r in range(8)]
    try:
        results = submit_all(batcher, requests, recorder)
    finally:
        batcher.close()
    for (m, patients), got in zip(requests, results, strict=True):
        assert got == [(m, p["i"] * 10) for p in patients]
    # the first request alone, then the seven that queued meanwhile in one call
    assert len(recorder.calls) == 2
    assert recorder.calls[0][1] == [p["i"] for p in requests[0][1]]
    assert sorted(recorder.calls[1][1]) == sorted(p["i"] for _, ps in requests[1:] for p in ps)


def test_each_model_is_scored_separately_and_max_patients_bounds_a_call() -> None:
    recorder = Recorder()
    batcher = batcher_of(recorder, max_patients=4)
    old, new = object(), object()
    requests = [(old, [{"i": 0}])] + [
        (old if r % 2 else new, [{"i": r}, {"i": 100 + r}]) for r in range(1, 7)
    ]
    try:
        results = submit_all(batcher, requests, recorder)
    finally:
        batcher.close()
    for (m, patients), got in zip(requests, results, strict=True):
        assert got == [(m, p["i"] * 10) for p in patients]  # scored by its own model
    for model, ids in recorder.calls[1:]:
        assert len(ids) <= 4
        owners = {m for m, ps in requests for p in ps if p["i"] in ids}
        assert owners == {model}


def test_a_failing_request_fails_alone() -> None:
    recorder = Recorder()
    batcher = batcher_of(recorder)
    model = object()
    requests = [(model, [{"i": r, "fail": r == 3}]) for r in range(6)]
    try:
        results = submit_all(batcher, requests, recorder)
    finally:
        batcher.close()
    for r, got in enumerate(results):
        if r == 3:
            assert isinstance(got, ValueError)
        else:
            assert got == [(model, r * 10)]


def test_a_request_cancelled_while_queued_is_dropped_and_the_others_answered() -> None:
    """A client that goes away while its request waits (the task is cancelled) must not
    break the scoring thread for everyone else."""
    recorder = Recorder()
    batcher = batcher_of(recorder)
    model = object()
    first: list[Any] = []
    holder = threading.Thread(
        target=lambda: first.append(asyncio.run(batcher.submit(model, [{"i": 1}])))
    )
    holder.start()
    assert recorder.entered.wait(30)

    async def rest() -> list[Any]:
        gone = asyncio.create_task(batcher.submit(model, [{"i": 2}]))
        kept = asyncio.create_task(batcher.submit(model, [{"i": 3}]))
        while batcher.waiting < 2:
            await asyncio.sleep(0.005)
        gone.cancel()
        outcome = await asyncio.gather(gone, return_exceptions=True)
        await asyncio.sleep(0.05)  # the cancellation reaches the queued job's future
        recorder.release.set()
        return [await kept, outcome]

    try:
        kept, gone = asyncio.run(rest())
        holder.join(30)
        assert first == [[(model, 10)]]
        assert kept == [(model, 30)]
        assert isinstance(gone[0], asyncio.CancelledError)
        assert [ids for _, ids in recorder.calls] == [[1], [3]]  # 2 was never scored
        assert asyncio.run(batcher.submit(model, [{"i": 4}])) == [(model, 40)]  # still alive
    finally:
        batcher.close()


def test_the_scoring_thread_restarts_after_close() -> None:
    batcher = batcher_of(lambda model, jobs: [[p["i"] for p in job] for job in jobs])
    assert asyncio.run(batcher.submit(None, [{"i": 1}, {"i": 2}])) == [1, 2]
    batcher.close()
    assert asyncio.run(batcher.submit(None, [{"i": 3}])) == [3]
    assert asyncio.run(batcher.submit(None, [])) == []
    batcher.close()


@pytest.mark.slow
def test_a_patient_scored_in_a_batch_gets_the_same_bits_as_alone(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    """What makes batching safe: every step of predict is row by row."""
    app = create_app(settings(tmp_path, trained_registry))
    with TestClient(app):
        loaded = app.state.holder.current
        patients = [
            loaded.contract.validate(p, ())
            for p in (
                STAMP_PATIENT,
                {**STAMP_PATIENT, "age": 30, "phq8": 20, "treatment_preference": "CBT"},
                {"sex": "male"},
                {**STAMP_PATIENT, "mme": 400, "delivery": None},
            )
        ]
        together = score(loaded, patients, 3)
        alone = [score(loaded, [p], 3)[0] for p in patients]
    assert together == alone
