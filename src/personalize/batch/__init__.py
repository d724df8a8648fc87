"""Scoring referral lists: streaming on one machine, or through PySpark.

`ScoringError` is what every part of a run raises for a problem to report in one line
(nothing is written under the final names); `os_reason` words an OS error for it."""

from __future__ import annotations

import os


class ScoringError(Exception):
    """A run that cannot complete (unreadable input, missing columns, counts that do not
    reconcile); nothing is written under the final names."""


def os_reason(exc: BaseException) -> str:
    """An OS error's reason in words ('No space left on device'), else its message."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return " ".join(str(exc).split()) or type(exc).__name__  # one line
