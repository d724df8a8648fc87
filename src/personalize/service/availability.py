"""Whether the audit database answers, as this process last saw it.

Every request needs the database (its key is read there, its recommendation audited there),
so while it is gone a request can only get 503. This keeps that cheap and quiet: one log
line when the database stops answering and one when it answers again (not a traceback per
request), and while it is down at most one attempt per retry interval touches it; every
other request gets 503 at once with a ``Retry-After`` of that interval. Per process: each
worker or replica notices on its own.

The log names the error's classes and SQLSTATE only: never the driver's message (a failed
connection's names its host, port and database) or a statement's parameters, which can hold
patient-derived values.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DataError, IntegrityError

log = logging.getLogger("personalize.service.availability")


def describe(exc: BaseException) -> str:
    """The error's classes and SQLSTATE: never the driver's message, which names the host,
    port, database and user of a failed connection, or a statement's values."""
    words = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        words += f" ({type(orig).__module__}.{type(orig).__qualname__})"
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate:
            words += f" SQLSTATE {sqlstate}"
    return words


def is_outage(exc: BaseException) -> bool:
    """An error of the database rather than of one request's values: connection, missing
    table, timeout. A constraint or data error concerns that request only."""
    return not isinstance(exc, (IntegrityError, DataError))


class DatabaseAvailability:
    """Up or down, when it went down, and when the database was last tried."""

    def __init__(
        self,
        what: str = "audit database",
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = -math.inf

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def retry_after(self) -> str:
        """The ``Retry-After`` header value: the retry interval in whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_seconds)))

    def due(self) -> bool:
        """Whether to try the database now: always while it is up; while it is down, once per
        retry interval (the caller that gets True makes the attempt)."""
        with self._lock:
            if self._down_since is None:
                return True
            now = self._clock()
            if now - self._last_try < self.retry_seconds:
                return False
            self._last_try = now
            return True

    def failed(self, exc: BaseException) -> None:
        """A call to the database raised `exc`: the first outage error is logged, the rest
        of the outage is not."""
        if not is_outage(exc):
            log.error("%s refused a write: %s", self.what, describe(exc))
            return
        with self._lock:
            now = self._clock()
            self._last_try = now
            if self._down_since is not None:
                return
            self._down_since = now
        log.error(
            "%s unavailable: %s; requests get 503 (Retry-After %s s) until it answers "
            "again, tried every %g s",
            self.what,
            describe(exc),
            self.retry_after,
            self.retry_seconds,
        )

    def answered(self) -> None:
        """A call to the database succeeded: if it was down, say once that it is back."""
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            since = self._down_since
            self._down_since = None
        if since is not None:
            log.warning(
                "%s answers again after %.1f s unavailable; serving requests",
                self.what,
                self._clock() - since,
            )
