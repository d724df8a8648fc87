"""The clocks behind the service's limits, on a clock the test moves: failures age out of
their window and are shared by every process on the same audit database
(service.key_guard), and an unavailable audit database is tried once per retry interval and
reported once per outage (service.availability)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from personalize.service.audit import AuthFailure, Database
from personalize.service.availability import DatabaseAvailability, describe
from personalize.service.key_guard import FailureLedger, KeyGuard, Subject


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'service.db'}", b"k" * 32)
    db.create_schema()
    return db


def test_failures_wait_until_the_oldest_ages_out_of_the_window(database: Database) -> None:
    clock = Clock()
    ledger = FailureLedger(database, window=10.0, clock=clock)
    a, b = Subject("a", 3, "10.0.0.1"), Subject("b", 3, "10.0.0.1")
    assert [ledger.add([a]) for _ in range(3)] == [([], 0), ([], 0), ([a], 0)]
    assert ledger.wait([a]) == pytest.approx(10.0) and ledger.wait([b]) == 0
    clock.now += 4
    assert ledger.wait([a, b]) == pytest.approx(6.0)
    clock.now += 6.5  # the three aged out
    assert ledger.wait([a]) == 0
    assert ledger.add([a]) == ([], 0)


def test_every_process_on_one_database_counts_the_same_failures(database: Database) -> None:
    clock = Clock()
    first = FailureLedger(database, window=60.0, clock=clock)
    second = FailureLedger(Database(database.url, b"k" * 32), window=60.0, clock=clock)
    subject = Subject("key\0abc", 4, "10.0.0.1")
    first.add([subject])
    second.add([subject])
    first.add([subject])
    assert second.wait([subject]) == 0
    assert second.add([subject]) == ([subject], 0)  # the fourth, wherever it was counted
    assert first.wait([subject]) > 0
    # a failure that arrived with others, all having seen the count below the limit, is
    # told it went past it
    reached, seconds = first.add([subject])
    assert reached == [] and seconds == pytest.approx(60.0)
    with database.engine.connect() as connection:
        stored = set(connection.execute(select(AuthFailure.subject)).scalars())
    assert stored == {subject.digest} and "abc" not in subject.digest  # digests only


def test_old_failures_are_purged(database: Database) -> None:
    clock = Clock()
    ledger = FailureLedger(database, window=10.0, clock=clock)
    for i in range(5):
        ledger.add([Subject(f"s{i}", 10, "x")])
    clock.now += 100  # past the window and the purge interval
    ledger.add([Subject("new", 10, "x")])
    with database.engine.connect() as connection:
        assert len(connection.execute(select(AuthFailure.id)).all()) == 1


@pytest.mark.anyio
async def test_the_guard_counts_address_key_id_and_client_and_names_no_key_id(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="personalize")
    guard = KeyGuard(
        database,
        per_key=2,
        per_key_all=3,
        per_client=3,
        window=60.0,
        hash_slots=1,
        hash_wait=1.0,
        clock=Clock(),
    )
    key = "00112233aabbccdd"
    await guard.failed(guard.address("10.0.0.1"), *guard.key(key, "10.0.0.1"))
    await guard.failed(guard.address("10.0.0.1"), *guard.key(key, "10.0.0.1"))
    assert await guard.wait(*guard.key(key, "10.0.0.1")) == 60  # the key id from there
    assert await guard.wait(*guard.key(key, "10.0.0.2")) == 0  # not from elsewhere ...
    await guard.failed(guard.address("10.0.0.2"), *guard.key(key, "10.0.0.2"))
    assert await guard.wait(*guard.key(key, "10.0.0.3")) == 60  # ... until all addresses'
    assert await guard.wait(*guard.key("ffffffffffffffff", "10.0.0.3")) == 0
    for _ in range(2):
        await guard.failed(guard.address("10.0.0.2"))
    assert await guard.wait(guard.address("10.0.0.2")) == 60  # the address
    # a client's name from that address is counted apart: the address's garbage does not
    # lock out a client calling from it
    assert await guard.wait(guard.client("10.0.0.2", "https://ehr.example.org")) == 0
    for _ in range(3):
        await guard.failed(guard.client("10.0.0.9", "https://ehr.example.org"))
    assert await guard.wait(guard.client("10.0.0.9", "https://ehr.example.org")) == 60
    assert await guard.wait(guard.client("10.0.0.8", "https://ehr.example.org")) == 0
    text = caplog.text
    assert "10.0.0.2" in text and key not in text and "ehr.example.org" not in text


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


def test_a_failed_connection_is_described_without_the_server_s_message() -> None:
    class Refused(Exception):
        sqlstate = "08006"

    message = (
        'connection to server at "db.internal" (10.1.2.3), port 5432 failed: FATAL: '
        'database "trials" does not exist'
    )
    text = describe(OperationalError(None, None, Refused(message)))
    assert text.startswith("OperationalError (") and "SQLSTATE 08006" in text
    assert not any(word in text for word in ("db.internal", "10.1.2.3", "5432", "trials"))
