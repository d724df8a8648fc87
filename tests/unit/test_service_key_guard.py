"""The clocks behind the service's limits, on a clock the test moves: failures age out of
their window (service.key_guard), and an unavailable audit database is tried once per
retry interval and reported once per outage (service.availability)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from personalize.service.availability import DatabaseAvailability
from personalize.service.key_guard import FailureLedger, KeyGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_wait_until_the_oldest_ages_out_of_the_window() -> None:
    clock = Clock()
    ledger = FailureLedger(limit=3, window=10.0, clock=clock)
    assert [ledger.add("a") for _ in range(3)] == [False, False, True]
    assert ledger.wait("a") == pytest.approx(10.0) and ledger.wait("b") == 0
    clock.now += 4
    assert ledger.add("a") is True  # still at the limit (a sliding window, not a counter)
    clock.now += 6.5  # the first three aged out, the fourth has not
    assert ledger.wait("a") == 0
    assert ledger.add("a") is False


def test_the_ledger_remembers_a_bounded_number_of_subjects() -> None:
    ledger = FailureLedger(limit=1, window=60.0, clock=Clock(), subjects=2)
    for subject in ("a", "b", "c"):
        ledger.add(subject)
    assert ledger.wait("a") == 0 and ledger.wait("b") > 0 and ledger.wait("c") > 0


def test_the_guard_counts_address_and_key_id_and_names_no_key_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="personalize")
    guard = KeyGuard(
        per_key=2, per_client=3, window=60.0, hash_slots=1, hash_wait=1.0, clock=Clock()
    )
    guard.failed("10.0.0.1", "00112233aabbccdd")
    assert guard.wait("10.0.0.2", "00112233aabbccdd") == 0
    guard.failed("10.0.0.2", "00112233aabbccdd")
    assert guard.wait("10.0.0.3", "00112233aabbccdd") == 60  # the key id, from anywhere
    assert guard.wait("10.0.0.3", "ffffffffffffffff") == 0
    guard.failed("10.0.0.2", None)
    guard.failed("10.0.0.2", None)
    assert guard.wait("10.0.0.2", None) == 60  # the address, whatever it sends
    text = caplog.text
    assert "10.0.0.2" in text and "00112233aabbccdd" not in text


def test_an_outage_is_logged_once_and_tried_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="personalize")
    clock = Clock()
    availability = DatabaseAvailability("audit database", retry_seconds=2.0, clock=clock)
    assert availability.due() and not availability.down
    down = OperationalError("SELECT 1", {}, Exception("connection refused"))
    for _ in range(5):
        availability.failed(down)
    assert availability.down and availability.retry_after == "2"
    assert not availability.due()
    clock.now += 2.5
    assert availability.due() and not availability.due()  # one caller gets the attempt
    availability.answered()
    availability.answered()
    assert not availability.down and availability.due()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("audit database unavailable" in m for m in messages) == 1
    assert sum("audit database answers again" in m for m in messages) == 1


def test_a_request_specific_error_is_no_outage_and_its_values_are_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="personalize")
    availability = DatabaseAvailability(retry_seconds=2.0, clock=Clock())
    availability.failed(IntegrityError("INSERT", {"benefit": 0.123}, Exception("dup 0.123")))
    assert not availability.down
    assert "IntegrityError" in caplog.text and "0.123" not in caplog.text
