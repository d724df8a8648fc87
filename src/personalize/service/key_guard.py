"""What failed credential checks may cost the server, and who they may lock out.

Checking an API key's secret is deliberately slow (scrypt, tens of milliseconds and 16 MiB),
so a guesser could make the server do that work as fast as it can send requests. Limits:

- failures within a sliding window, counted per subject: an address; an API key id from
  one address; an API key id from all addresses (a higher bound on what one key id may
  cost); an address and the CDS client a JWT claims to be. Past a subject's limit, a check
  that would need work gets 429 with ``Retry-After``: an unknown or malformed API key from
  an address over its limit (no scrypt), a key id over its limits (no scrypt, except a
  secret this process has verified before). A credential that can be checked cheaply is
  always checked, so a valid one is not refused because others failed from its address: a
  known key id is checked whatever else its address sent, and a client's JWT is verified
  (its keys are cached) and counted per address *and client*;
- the failures live in the audit database, so the limits hold across workers and replicas
  (a failure costs one insert; a request that passes costs nothing here);
- a bound on the hashes computed at once per process: a check that waits longer than a
  moment for a slot gets 503 with ``Retry-After`` instead of queueing without end;
- (in `personalize.service.auth`) the same hash for an unknown or revoked key id as for a
  known one, so the answer's timing does not tell which ids exist while under the limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from personalize.service.audit import AuthFailure, Database
from personalize.service.auth import VerifiedSecrets

if TYPE_CHECKING:
    from personalize.service.config import Settings

log = logging.getLogger("personalize.service.auth")

PURGE_SECONDS = 60.0  # how often a process deletes failures older than the window


class HashingBusy(Exception):
    """No hashing slot came free in time."""


@dataclass(frozen=True)
class Subject:
    """What failures are counted against, with its limit; `shown` is what a log line may
    name (an address; never a key id)."""

    name: str
    limit: int
    shown: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:40]


_COUNTS = (
    select(AuthFailure.subject, func.count(), func.min(AuthFailure.at))
    .where(AuthFailure.subject.in_(bindparam("subjects", expanding=True)))
    .where(AuthFailure.at > bindparam("since"))
    .group_by(AuthFailure.subject)
)


class FailureLedger:
    """Recent failures per subject in the audit database; a subject with `limit` failures
    in the last `window` seconds waits until the oldest of them ages out."""

    def __init__(
        self, database: Database, window: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.database = database
        self.window = window
        self._clock = clock
        self._purged_at = -math.inf
        self._lock = threading.Lock()

    def wait(self, subjects: Sequence[Subject]) -> float:
        """Seconds until every subject may try again; 0 if all may now."""
        now = self._clock()
        counts = self._counts(subjects, now)
        seconds = 0.0
        for subject in subjects:
            count, oldest = counts.get(subject.digest, (0, now))
            if count >= subject.limit:
                seconds = max(seconds, oldest + self.window - now, 1e-3)
        return seconds

    def add(self, subjects: Sequence[Subject]) -> tuple[list[Subject], float]:
        """Count a failure against each subject: the subjects it brings to their limit, and
        the seconds to wait when it went past one (failures that arrived together, each
        having seen the count below the limit)."""
        now = self._clock()
        rows = [{"subject": s.digest, "at": now} for s in subjects]
        with self._lock:
            purge, self._purged_at = (
                (True, now) if now - self._purged_at > PURGE_SECONDS else (False, self._purged_at)
            )
        try:
            with self.database.engine.begin() as connection:
                if purge:
                    connection.execute(
                        delete(AuthFailure).where(AuthFailure.at <= now - self.window)
                    )
                connection.execute(insert(AuthFailure), rows)
        except SQLAlchemyError as exc:
            self.database.availability.failed(exc)
            raise
        counts = self._counts(subjects, now)
        reached = [s for s in subjects if counts.get(s.digest, (0, now))[0] == s.limit]
        seconds = 0.0
        for subject in subjects:
            count, oldest = counts.get(subject.digest, (0, now))
            if count > subject.limit:
                seconds = max(seconds, oldest + self.window - now, 1e-3)
        return reached, seconds

    def _counts(self, subjects: Sequence[Subject], now: float) -> dict[str, tuple[int, float]]:
        try:
            with self.database.engine.connect() as connection:
                found = connection.execute(
                    _COUNTS,
                    {"subjects": [s.digest for s in subjects], "since": now - self.window},
                ).all()
        except SQLAlchemyError as exc:
            self.database.availability.failed(exc)
            raise
        self.database.availability.answered()
        return {row[0]: (int(row[1]), float(row[2])) for row in found}


class KeyGuard:
    """The failure limits and hashing slots of one app."""

    def __init__(
        self,
        database: Database,
        *,
        per_key: int,
        per_key_all: int,
        per_client: int,
        window: float,
        hash_slots: int,
        hash_wait: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = FailureLedger(database, window, clock)
        self.per_key = per_key
        self.per_key_all = per_key_all
        self.per_client = per_client
        self.window = window
        self.hash_slots = hash_slots
        self.hash_wait = hash_wait
        self.verified = VerifiedSecrets()  # secrets this process has checked
        self._slots: tuple[asyncio.AbstractEventLoop, anyio.Semaphore] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, database: Database) -> KeyGuard:
        return cls(
            database,
            per_key=settings.auth_failures_per_key,
            per_key_all=settings.auth_failures_per_key_all,
            per_client=settings.auth_failures_per_client,
            window=settings.auth_failure_window,
            hash_slots=settings.auth_hash_concurrency,
            hash_wait=settings.auth_hash_wait,
        )

    # ------------------------------------------------------------------ subjects

    def address(self, address: str) -> Subject:
        """Failures from an address: gates what cannot be checked cheaply (an unknown or
        malformed key, a JWT of no registered client)."""
        return Subject(f"address\0{address}", self.per_client, address)

    def key(self, key_id: str, address: str) -> tuple[Subject, Subject]:
        """Failures for an API key id from this address, and from all addresses."""
        return (
            Subject(f"key\0{address}\0{key_id}", self.per_key, address),
            Subject(f"key\0{key_id}", self.per_key_all, address),
        )

    def client(self, address: str, iss: str) -> Subject:
        """Failures from an address in the name of one registered CDS client."""
        return Subject(f"client\0{address}\0{iss}", self.per_client, address)

    # ------------------------------------------------------------------ counting

    async def wait(self, *subjects: Subject) -> int:
        """Whole seconds the caller must wait (a subject is over its limit); 0 if it may
        try now. Reads the audit database (off the event loop)."""
        seconds = await anyio.to_thread.run_sync(self.ledger.wait, subjects)
        return math.ceil(seconds) if seconds > 0 else 0

    async def failed(self, *subjects: Subject) -> int:
        """Count a failed check against each subject; whole seconds to wait when this
        failure went past a limit (answer 429, not 401), else 0. The log names the address
        of a subject that reaches its limit, never a key id or a client."""
        reached, seconds = await anyio.to_thread.run_sync(self.ledger.add, subjects)
        for subject in reached:
            log.warning(
                "%d failed credential checks within %g s (%s, last from %s): its checks get "
                "429 until they age out",
                subject.limit,
                self.window,
                subject.name.split("\0", 1)[0],
                subject.shown,
            )
        return math.ceil(seconds) if seconds > 0 else 0

    @asynccontextmanager
    async def hashing(self) -> AsyncIterator[None]:
        """A hashing slot, waited for at most `hash_wait` seconds (else `HashingBusy`)."""
        slots = self._current_slots()
        try:
            with anyio.fail_after(self.hash_wait):
                await slots.acquire()
        except TimeoutError:
            raise HashingBusy from None
        try:
            yield
        finally:
            slots.release()

    def _current_slots(self) -> anyio.Semaphore:
        # a semaphore belongs to one event loop; an app normally runs in one, but a test
        # client starts a loop per session
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, anyio.Semaphore(self.hash_slots))
        return self._slots[1]


__all__ = ["FailureLedger", "HashingBusy", "KeyGuard", "Subject"]
