"""What failed API-key checks may cost the server.

Checking a key's secret is deliberately slow (scrypt, tens of milliseconds and 16 MiB), so a
guesser could make the server do that work as fast as it can send requests. Three limits:

- failures per key id and per client address within a sliding window: past the limit the
  request gets 429 with ``Retry-After`` before any database read or hash. A secret this
  process has already verified for that key id still passes (no hash needed), so a locked
  key id or a shared proxy address does not lock out callers whose key works;
- a bound on the hashes computed at once: a check that waits longer than a moment for a
  slot gets 503 with ``Retry-After`` instead of queueing without end;
- (in `personalize.service.auth`) the same hash for an unknown or revoked key id as for a
  known one, so the answer's timing does not tell which ids exist.

Per process and in memory: each worker counts its own failures. Counted on the event loop
only (the key check is a coroutine), so no lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from personalize.service.config import Settings

log = logging.getLogger("personalize.service.auth")

SUBJECTS = 10_000  # client addresses or key ids remembered per ledger (least recent dropped)


class HashingBusy(Exception):
    """No hashing slot came free in time."""


class FailureLedger:
    """Recent failures per subject; a subject with `limit` failures in the last `window`
    seconds waits until the oldest of them ages out."""

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        subjects: int = SUBJECTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._subjects = subjects
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, subject: str) -> float:
        """Seconds until `subject` may try again; 0 if it may now."""
        failures = self._failures.get(subject)
        if failures is None:
            return 0.0
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def add(self, subject: str) -> bool:
        """Count a failure; True when it is the one that reaches the limit."""
        failures = self._failures.get(subject)
        if failures is None:
            failures = self._failures[subject] = deque(maxlen=self.limit)
            while len(self._failures) > self._subjects:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(subject)
        self.wait(subject)  # drop the failures that aged out
        failures.append(self._clock())
        return len(failures) == self.limit


class KeyGuard:
    """The failure ledgers and hashing slots of one app."""

    def __init__(
        self,
        *,
        per_key: int,
        per_client: int,
        window: float,
        hash_slots: int,
        hash_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = FailureLedger(per_key, window, clock)
        self.clients = FailureLedger(per_client, window, clock)
        self.hash_slots = hash_slots
        self.hash_wait = hash_wait
        self._slots: tuple[asyncio.AbstractEventLoop, anyio.Semaphore] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyGuard:
        return cls(
            per_key=settings.auth_failures_per_key,
            per_client=settings.auth_failures_per_client,
            window=settings.auth_failure_window,
            hash_slots=settings.auth_hash_concurrency,
            hash_wait=settings.auth_hash_wait,
        )

    def wait(self, client: str, key_id: str | None) -> int:
        """Whole seconds the caller must wait (its address or key id is over its limit);
        0 if it may try now."""
        seconds = self.clients.wait(client)
        if key_id is not None:
            seconds = max(seconds, self.keys.wait(key_id))
        return math.ceil(seconds) if seconds > 0 else 0

    def failed(self, client: str, key_id: str | None) -> None:
        """Count a failed check against the address and the key id (whether or not the id
        exists: counting only known ids would tell which exist). The log names the address
        that reaches its limit, never a key id."""
        if self.clients.add(client):
            log.warning(
                "%d failed API-key checks from %s within %g s: its checks get 429 until "
                "they age out",
                self.clients.limit,
                client,
                self.clients.window,
            )
        if key_id is not None and self.keys.add(key_id):
            log.warning(
                "%d failed API-key checks for one key id within %g s (last from %s): checks "
                "of that id get 429 until they age out, except with a secret already verified",
                self.keys.limit,
                self.keys.window,
                client,
            )

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


__all__ = ["FailureLedger", "HashingBusy", "KeyGuard"]
