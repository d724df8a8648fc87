"""The service's keys, audit database and pseudonym key under failure and abuse: the audit
database dropped while serving (503 with Retry-After, readiness, one log line, recovery),
an audit write that fails, failed key checks limited per key id and per address, the same
time for unknown and known key ids, bounded hashing, and the pseudonym key kept outside the
audit database (strength, production, key file, development key). Real uvicorn and
PostgreSQL where the behaviour involves them."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import statistics
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, text

from personalize.service.audit import (
    LEGACY_PSEUDONYM_SECRET,
    AuditRecord,
    Database,
    ServiceSecret,
)
from personalize.service.auth import revoke_key, split_key
from personalize.service.config import Settings, SettingsError
from support.postgres import PG, PostgresDatabase
from support.registry import TrainedRegistry
from support.servers import Server, cli, client_from, new_key, serve
from support.service import STAMP_PATIENT

pytestmark = pytest.mark.slow

SECRET = "a-pseudonym-key-of-more-than-32-bytes-for-tests"
OUTAGE_LINE = "audit database unavailable"
RECOVERY_LINE = "audit database answers again"


def recommend(server: Server, headers: dict[str, str], ref: str = "MRN-4711") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/recommendations",
        json={"patient": STAMP_PATIENT, "patient_ref": ref},
        headers=headers,
        timeout=30,
    )


def pseudonym(key: bytes, ref: str) -> str:
    return hmac.new(key, ref.encode(), hashlib.sha256).hexdigest()


def audit_rows(url: str) -> dict[str, str | None]:
    """audit id -> patient pseudonym, of every row in the audit database at `url`."""
    db = Database(url)
    try:
        with db.session() as session:
            rows = session.execute(select(AuditRecord.id, AuditRecord.patient_pseudonym)).all()
    finally:
        db.dispose()
    return {row.id: row.patient_pseudonym for row in rows}


def lines(server: Server, needle: str) -> list[str]:
    return [line for line in server.output().splitlines() if needle in line]


def admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as connection:
        connection.execute(sql)


def wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not come back:\n" + server.output()[-3000:]
        time.sleep(0.2)


def assert_retry_later(r: httpx.Response) -> None:
    """503 with a Retry-After in whole seconds and a short JSON body: no traceback."""
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail) < 200 and "Traceback" not in detail


# --------------------------------------------------------------------------- the audit database


def test_audit_database_dropped_while_serving_503_then_recovery(
    tmp_path: Path, trained_registry: TrainedRegistry, postgres_db: PostgresDatabase
) -> None:
    url = postgres_db.sqlalchemy_url
    env = {"PERSONALIZE_DATABASE_URL": url, "PERSONALIZE_PSEUDONYM_SECRET": SECRET}
    with serve(tmp_path, trained_registry, env=env) as server:
        clinician = new_key(url)
        assert recommend(server, clinician).status_code == 200

        admin(f'DROP DATABASE "{postgres_db.name}" WITH (FORCE)')
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # several retry intervals (0.5 s) long
            assert_retry_later(recommend(server, clinician))
            time.sleep(0.05)
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["status"] == "audit database unavailable"
        assert int(ready.headers["retry-after"]) >= 1
        assert len(lines(server, OUTAGE_LINE)) == 1, server.output()[-3000:]
        assert "Traceback" not in server.output()
        outage = lines(server, OUTAGE_LINE)[0]  # classes and SQLSTATE, no server message
        assert postgres_db.name not in outage and "5432" not in outage, outage

        admin(f'CREATE DATABASE "{postgres_db.name}"')  # back, and empty
        wait_ready(server)
        assert recommend(server, clinician).status_code == 401  # its key went with the data
        clinician = new_key(url)
        r = recommend(server, clinician, ref="MRN-0815")
        assert r.status_code == 200, r.text
        rows = audit_rows(url)
        assert rows == {r.json()["audit_id"]: pseudonym(SECRET.encode(), "MRN-0815")}
    output = server.output()
    assert len(lines(server, OUTAGE_LINE)) == 1 and len(lines(server, RECOVERY_LINE)) == 1
    assert "Traceback" not in output
    assert "MRN-" not in output and "6.25" not in output  # no patient values in the log


def test_a_failed_audit_write_is_503_and_no_answer_goes_without_its_row(
    tmp_path: Path, trained_registry: TrainedRegistry, postgres_db: PostgresDatabase
) -> None:
    url = postgres_db.sqlalchemy_url
    env = {"PERSONALIZE_DATABASE_URL": url, "PERSONALIZE_PSEUDONYM_SECRET": SECRET}
    with serve(tmp_path, trained_registry, env=env) as server:
        clinician = new_key(url)
        assert recommend(server, clinician).status_code == 200

        with psycopg.connect(postgres_db.url, autocommit=True) as connection:
            connection.execute("DROP TABLE audit_log")  # keys still readable, writes fail
        first = recommend(server, clinician)
        assert_retry_later(first)
        assert "audit log" in first.json()["detail"]
        given: list[str] = []
        deadline = time.monotonic() + 30
        while len(given) < 3:  # until the service has recreated the table and answers again
            assert time.monotonic() < deadline, server.output()[-3000:]
            r = recommend(server, clinician)
            if r.status_code == 200:
                given.append(r.json()["audit_id"])
            else:
                assert_retry_later(r)
                time.sleep(0.1)
        assert set(given) <= set(audit_rows(url)), "an answer without its audit row"
    assert len(lines(server, OUTAGE_LINE)) == 1 and len(lines(server, RECOVERY_LINE)) == 1
    assert "Traceback" not in server.output()


# --------------------------------------------------------------------------- failed key checks


def model_card(client: httpx.Client, server: Server, key: str) -> httpx.Response:
    return client.get(f"{server.url}/v1/model", headers={"Authorization": f"Bearer {key}"})


def unknown_key() -> str:
    return f"pz_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def test_failed_key_checks_are_limited_per_key_id_and_per_address(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    env = {
        "PERSONALIZE_AUTH_FAILURES_PER_KEY": "3",
        "PERSONALIZE_AUTH_FAILURES_PER_KEY_ALL": "5",
        "PERSONALIZE_AUTH_FAILURES_PER_CLIENT": "5",
        "PERSONALIZE_AUTH_FAILURE_WINDOW": "60",
    }
    with serve(tmp_path, trained_registry, env=env) as server:
        url = server.env["PERSONALIZE_DATABASE_URL"]
        valid = new_key(url)["Authorization"].removeprefix("Bearer ")
        key_id = split_key(valid)[0]  # type: ignore[index]
        wrong = f"pz_{key_id}_{secrets.token_urlsafe(32)}"
        with (
            client_from("127.0.0.1") as one,
            client_from("127.0.0.2") as two,
            client_from("127.0.0.5") as five,
        ):
            assert model_card(one, server, valid).status_code == 200
            for _ in range(3):
                assert model_card(one, server, wrong).status_code == 401
            # the key id is locked from that address, before any hash is computed ...
            locked = model_card(one, server, wrong)
            assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 60
            # ... not from another, until the key id's bound over all addresses (5)
            assert [model_card(two, server, wrong).status_code for _ in range(3)] == [
                401,
                401,
                429,
            ]
            assert model_card(five, server, wrong).status_code == 429
            # the secret already verified passes: its owner is not locked out
            assert model_card(five, server, valid).status_code == 200

        unknown = [unknown_key() for _ in range(7)]
        with client_from("127.0.0.3") as three, client_from("127.0.0.4") as four:
            for key in unknown[:5]:  # unknown ids count against the address
                assert model_card(three, server, key).status_code == 401
            blocked = model_card(three, server, unknown[5])
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
            assert model_card(three, server, "pz_not-a-key").status_code == 429
            assert model_card(three, server, valid).status_code == 200  # verified before
            assert model_card(four, server, unknown[6]).status_code == 401  # another address
            # a key id with a usable row is checked whatever its address did: a valid key
            # behind an address others abuse (a proxy, a NAT) still works
            fresh = new_key(url)["Authorization"].removeprefix("Bearer ")
            assert model_card(three, server, fresh).status_code == 200
            assert model_card(four, server, fresh).status_code == 200
            # verified before but revoked since: no way around the limit to a hash
            db = Database(url)
            revoke_key(db, split_key(fresh)[0])  # type: ignore[index]
            db.dispose()
            assert model_card(three, server, fresh).status_code == 429
            assert model_card(four, server, fresh).status_code == 401
    output = server.output()
    assert "from 127.0.0.3" in output  # the address that reached its limit is named
    for key in [wrong, *unknown]:  # key ids of failed checks are not
        assert split_key(key)[0] not in output  # type: ignore[index]


def median_seconds(client: httpx.Client, server: Server, keys: list[str], status: int) -> float:
    times = []
    for key in keys:
        start = time.perf_counter()
        r = model_card(client, server, key)
        times.append(time.perf_counter() - start)
        assert r.status_code == status, r.text
    return statistics.median(times)


def test_unknown_key_ids_cost_the_time_of_known_ones_and_hashing_is_bounded(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    env = {
        "PERSONALIZE_AUTH_FAILURES_PER_KEY": "10000",
        "PERSONALIZE_AUTH_FAILURES_PER_CLIENT": "10000",
        "PERSONALIZE_AUTH_HASH_CONCURRENCY": "1",
        "PERSONALIZE_AUTH_HASH_WAIT": "0.02",
    }
    with serve(tmp_path, trained_registry, env=env) as server:
        valid = new_key(server.env["PERSONALIZE_DATABASE_URL"])["Authorization"][7:]
        key_id = split_key(valid)[0]  # type: ignore[index]
        with client_from("127.0.0.1") as client:
            assert model_card(client, server, valid).status_code == 200
            n = 15
            for _ in range(2):  # warm both paths up
                median_seconds(client, server, [unknown_key()], 401)
            known = [f"pz_{key_id}_{secrets.token_urlsafe(32)}" for _ in range(n)]
            t_known = median_seconds(client, server, known, 401)
            t_unknown = median_seconds(client, server, [unknown_key() for _ in range(n)], 401)
            t_valid = median_seconds(client, server, [valid] * n, 200)
        # the same scrypt either way: an unknown id is not answered faster
        assert t_unknown > 0.6 * t_known, (t_unknown, t_known)
        # a key verified once is not hashed again
        assert t_valid < 0.5 * t_known, (t_valid, t_known)

        # many checks at once: one hash at a time, the rest wait a moment, then 503
        statuses: list[tuple[int, str | None]] = []
        barrier = threading.Barrier(12)

        def attempt() -> None:
            with client_from("127.0.0.1") as client:
                barrier.wait()
                r = model_card(client, server, unknown_key())
                statuses.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=attempt) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = [code for code, _ in statuses]
        assert len(codes) == 12 and set(codes) <= {401, 503}, codes
        assert codes.count(503) >= 6, codes  # 12 hashes of ~30 ms do not fit in 20 ms
        assert all(after == "1" for code, after in statuses if code == 503)
        with client_from("127.0.0.1") as client:
            assert model_card(client, server, valid).status_code == 200


# --------------------------------------------------------------------------- the pseudonym key


def test_a_short_pseudonym_secret_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PERSONALIZE_PSEUDONYM_SECRET", "s3cret")
    with pytest.raises(SettingsError, match=r"PERSONALIZE_PSEUDONYM_SECRET: .*at least 32"):
        Settings.from_env()
    monkeypatch.delenv("PERSONALIZE_PSEUDONYM_SECRET")
    short = tmp_path / "short.key"
    short.write_text("x" * 31 + "\n")
    monkeypatch.setenv("PERSONALIZE_PSEUDONYM_SECRET_FILE", str(short))
    with pytest.raises(SettingsError, match=r"PERSONALIZE_PSEUDONYM_SECRET_FILE.*at least 32"):
        Settings.from_env()
    monkeypatch.setenv("PERSONALIZE_PSEUDONYM_SECRET_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(SettingsError, match=r"PERSONALIZE_PSEUDONYM_SECRET_FILE.*cannot read"):
        Settings.from_env()


def test_production_refuses_to_start_without_a_pseudonym_key(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    env = {
        "PERSONALIZE_ENV": "production",
        "PERSONALIZE_DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
        "PERSONALIZE_PSEUDONYM_SECRET": "",
        "PERSONALIZE_PSEUDONYM_SECRET_FILE": "",
    }
    args = ["serve", "--model", trained_registry.champion(), "--tracking-uri", trained_registry.uri]
    args += ["--port", "9"]  # never reached
    refused = cli(*args, env=env)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "PERSONALIZE_PSEUDONYM_SECRET" in said and "production" in said, said
    assert "Traceback" not in said


def test_the_pseudonym_key_file_is_used_and_nothing_secret_is_in_the_audit_database(
    tmp_path: Path, trained_registry: TrainedRegistry, postgres_db: PostgresDatabase
) -> None:
    key_file = tmp_path / "secrets" / "pseudonym.key"
    key_file.parent.mkdir()
    key = secrets.token_hex(32).encode()
    key_file.write_bytes(key + b"\n")
    key_file.chmod(0o600)
    url = postgres_db.sqlalchemy_url
    env = {
        "PERSONALIZE_ENV": "production",
        "PERSONALIZE_DATABASE_URL": url,
        "PERSONALIZE_PSEUDONYM_SECRET_FILE": str(key_file),
    }
    with serve(tmp_path, trained_registry, env=env) as server:
        r = recommend(server, new_key(url), ref="MRN-1234")
        assert r.status_code == 200, r.text
    assert audit_rows(url) == {r.json()["audit_id"]: pseudonym(key, "MRN-1234")}
    db = Database(url)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ServiceSecret)) == 0
    db.dispose()
    assert not (tmp_path / "models" / "pseudonym.key").exists()


def test_development_generates_a_private_key_file_outside_the_database(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    ids = []
    for _ in range(2):  # the second start reuses the key: same patient, same pseudonym
        with serve(tmp_path, trained_registry) as server:
            r = recommend(server, new_key(server.env["PERSONALIZE_DATABASE_URL"]), ref="MRN-77")
            assert r.status_code == 200, r.text
            ids.append(r.json()["audit_id"])
        assert "development key" in server.output()
    key_file = tmp_path / "models" / "pseudonym.key"  # the server runs in tmp_path
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_bytes().strip()
    assert len(key) >= 32
    url = server.env["PERSONALIZE_DATABASE_URL"]
    rows = audit_rows(url)
    assert [rows[i] for i in ids] == [pseudonym(key, "MRN-77")] * 2
    db = Database(url)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM service_secrets")).scalar() == 0
    db.dispose()


def test_a_pseudonym_key_left_in_the_database_by_an_earlier_version_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.create_schema()
    with db.session() as session:
        session.add(ServiceSecret(name=LEGACY_PSEUDONYM_SECRET, value="0" * 64))
        session.commit()
    caplog.set_level(logging.WARNING, logger="personalize")
    db.create_schema()  # what the service does at startup
    db.dispose()
    warned = [r.getMessage() for r in caplog.records if "service_secrets" in r.getMessage()]
    assert len(warned) == 1 and "delete that row" in warned[0]
    assert "0" * 64 not in warned[0]
