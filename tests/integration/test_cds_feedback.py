"""CDS Hooks feedback against a real `personalize serve`: only the caller a card was given to
may file feedback on it, once per card and outcome, and only coded values are kept (the
override reason's code from the card's own list, a parsed time). Two registered EHRs, each
with its own key set on loopback; the uniqueness across two workers on PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from personalize.service.audit import CdsFeedback, make_engine
from personalize.service.cds_clients import CdsClient
from personalize.service.cds_hooks import OVERRIDE_REASONS, OVERRIDE_SYSTEM
from support.ehr import CdsClientKeys, loopback_ehr
from support.postgres import postgres_database
from support.registry import TrainedRegistry
from support.servers import Server, cli, serve

pytestmark = pytest.mark.slow

PUBLIC = "https://cds.example.test/personalize"
SERVICE_ID = "personalize-recommendation"
SERVICE_AUD = f"{PUBLIC}/cds-services/{SERVICE_ID}"
FEEDBACK_AUD = f"{SERVICE_AUD}/feedback"
PATIENT = {"resourceType": "Patient", "id": "pat-9", "gender": "male", "birthDate": "1966-03-02"}
FREE_TEXT = "Jane Doe MRN 12345 DOB 1960-01-01 declined"


class Caller:
    """Who sends a request: a registered EHR (a fresh JWT each call) or an API key."""

    def __init__(self, keys: CdsClientKeys | None = None, api_key: str | None = None) -> None:
        self.keys, self.api_key = keys, api_key

    def headers(self, aud: str = SERVICE_AUD) -> dict[str, str]:
        token = self.keys.token(aud) if self.keys is not None else self.api_key
        return {"Authorization": f"Bearer {token}"}

    @property
    def key_id(self) -> str:
        assert self.keys is not None
        return CdsClient(self.keys.iss, self.keys.jwks_url).key_id


@contextlib.contextmanager
def two_ehrs_and_service(
    tmp: Path, trained: TrainedRegistry, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[tuple[Caller, Caller, Server]]:
    """The service with two registered EHRs, A and B, each signing with its own keys."""
    with loopback_ehr() as ehr_a, loopback_ehr() as ehr_b:
        a = CdsClientKeys("https://ehr-a.example.org", ehr_a.jwks_url)
        b = CdsClientKeys("https://ehr-b.example.org", ehr_b.jwks_url)
        ehr_a.jwks["keys"].append(a.jwk())
        ehr_b.jwks["keys"].append(b.jwk())
        clients = tmp / "cds-clients.yaml"
        registered = [{"iss": c.iss, "jwks_url": c.jwks_url} for c in (a, b)]
        clients.write_text(yaml.safe_dump({"clients": registered}))
        settings = {"PERSONALIZE_CDS_CLIENTS": str(clients), "PERSONALIZE_PUBLIC_URL": PUBLIC}
        with serve(tmp, trained, workers=workers, env={**settings, **(env or {})}) as server:
            yield Caller(a), Caller(b), server


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[tuple[Caller, Caller, Server]]:
    with two_ehrs_and_service(tmp_path_factory.mktemp("feedback"), trained_registry) as running:
        yield running


def card_for(server: Server, caller: Caller) -> dict[str, Any]:
    """A patient-view card given to `caller`."""
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/7", "patientId": "pat-9"},
        "prefetch": {"patient": PATIENT, "observations": None},
    }
    r = httpx.post(
        f"{server.url}/cds-services/{SERVICE_ID}", json=body, headers=caller.headers(), timeout=30
    )
    assert r.status_code == 200, r.text
    card: dict[str, Any] = r.json()["cards"][0]
    return card


def item(card: str, outcome: str = "accepted", **fields: Any) -> dict[str, Any]:
    return {"card": card, "outcome": outcome, "outcomeTimestamp": "2026-11-29T10:00:00Z", **fields}


def overridden(card: str, code: str = "patient-preference", **reason: Any) -> dict[str, Any]:
    coding = {"system": OVERRIDE_SYSTEM, "code": code, **reason}
    return item(card, "overridden", overrideReason={"reason": coding})


def send(server: Server, caller: Caller, *items: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/cds-services/{SERVICE_ID}/feedback",
        json={"feedback": list(items)},
        headers=caller.headers(FEEDBACK_AUD),
        timeout=30,
    )


@contextlib.contextmanager
def database_of(server: Server) -> Iterator[Engine]:
    engine = make_engine(server.env["PERSONALIZE_DATABASE_URL"])
    try:
        yield engine
    finally:
        engine.dispose()


def rows_for(server: Server, card: str) -> list[Any]:
    """The feedback rows kept for a card (given as its uuid)."""
    with database_of(server) as engine, engine.connect() as connection:
        found = select(CdsFeedback).where(CdsFeedback.card == uuid.UUID(card).hex)
        return list(connection.execute(found).all())


def database_bytes(server: Server) -> bytes:
    """Everything the SQLite database holds on disk, its write-ahead log included."""
    path = Path(server.env["PERSONALIZE_DATABASE_URL"].removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def problem_fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return [p["field"] for p in r.json()["detail"]]


def test_the_card_offers_coded_override_reasons(setup: tuple[Caller, Caller, Server]) -> None:
    a, _, server = setup
    reasons = card_for(server, a)["overrideReasons"]
    assert {r["code"] for r in reasons} == set(OVERRIDE_REASONS)
    assert all(r["system"] == OVERRIDE_SYSTEM and r["display"] for r in reasons)


def test_free_text_in_the_override_reason_is_refused_and_not_stored(
    setup: tuple[Caller, Caller, Server],
) -> None:
    a, _, server = setup
    card = card_for(server, a)["uuid"]
    # what the review stored: another system, its own code, a patient in the display
    foreign = {"system": "https://ehr.example.org/reasons", "code": "pt-decline"}
    r = send(server, a, item(card, "overridden", overrideReason={"reason": foreign}))
    assert problem_fields(r) == ["feedback.0.overrideReason.reason"]
    foreign["display"] = FREE_TEXT
    r = send(server, a, item(card, "overridden", overrideReason={"reason": foreign}))
    assert problem_fields(r) == ["feedback.0.overrideReason.reason"]
    msg = r.json()["detail"][0]["msg"]
    assert OVERRIDE_SYSTEM in msg and all(code in msg for code in OVERRIDE_REASONS)
    # this service's system with the free text as the code
    assert problem_fields(send(server, a, overridden(card, code=FREE_TEXT))) == [
        "feedback.0.overrideReason.reason"
    ]
    assert rows_for(server, card) == []
    assert b"MRN 12345" not in database_bytes(server)


def test_outcome_timestamp_must_be_a_fhir_instant(setup: tuple[Caller, Caller, Server]) -> None:
    a, _, server = setup
    card = card_for(server, a)["uuid"]
    for when in ("yesterday", "2026-11-29", "2026-11-29T10:00:00", "2026-02-30T10:00:00Z"):
        r = send(server, a, item(card, outcomeTimestamp=when))
        assert problem_fields(r) == ["feedback.0.outcomeTimestamp"], when
    missing = item(card)
    del missing["outcomeTimestamp"]
    assert problem_fields(send(server, a, missing)) == ["feedback.0.outcomeTimestamp"]
    assert rows_for(server, card) == []


def test_suggestions_and_misplaced_reasons_are_refused(
    setup: tuple[Caller, Caller, Server],
) -> None:
    a, _, server = setup
    card = card_for(server, a)["uuid"]
    r = send(server, a, item(card, acceptedSuggestions=[{"id": "anything"}]))
    assert problem_fields(r) == ["feedback.0.acceptedSuggestions"]
    assert "no suggestions" in r.json()["detail"][0]["msg"]
    accepted_with_reason = {**overridden(card), "outcome": "accepted"}
    r = send(server, a, accepted_with_reason)
    assert r.status_code == 422 and "overrideReason" in r.json()["detail"][0]["msg"]
    assert send(server, a, item(card, acceptedSuggestions=[])).status_code == 200


def test_legitimate_feedback_is_kept_coded_with_a_parsed_time(
    setup: tuple[Caller, Caller, Server],
) -> None:
    a, _, server = setup
    accepted, declined = card_for(server, a)["uuid"], card_for(server, a)["uuid"]
    reason = overridden(declined, code="already-tried", display=FREE_TEXT)
    reason["overrideReason"]["userComment"] = FREE_TEXT
    reason["outcomeTimestamp"] = "2026-11-29T11:30:00.123456789+01:00"
    r = send(server, a, item(accepted), reason)
    assert r.status_code == 200, r.text

    (kept,) = rows_for(server, accepted)
    assert kept.outcome == "accepted" and kept.override_reason is None
    assert kept.key_id == a.key_id and kept.service_id == SERVICE_ID
    (row,) = rows_for(server, declined)
    assert row.outcome == "overridden" and row.override_reason == "already-tried"
    # SQLite gives the UTC time back without its zone; PostgreSQL with it
    assert row.outcome_at.replace(tzinfo=UTC) == datetime(2026, 11, 29, 10, 30, 0, 123456, UTC)
    assert b"MRN 12345" not in database_bytes(server)  # neither display nor comment


def test_another_client_cannot_file_feedback_on_a_card(
    setup: tuple[Caller, Caller, Server],
) -> None:
    a, b, server = setup
    card = card_for(server, a)["uuid"]
    r = send(server, b, item(card))
    assert r.status_code == 404, r.text
    # the same answer as for a card that does not exist: nothing says A's card is there
    nowhere = str(uuid.uuid4())
    absent = send(server, b, item(nowhere))
    assert absent.status_code == 404
    assert r.json()["detail"].replace(card, nowhere) == absent.json()["detail"]
    assert rows_for(server, card) == []
    assert send(server, a, item(card)).status_code == 200  # A's own feedback still counts
    (row,) = rows_for(server, card)
    assert row.key_id == a.key_id


def test_an_api_key_cannot_file_feedback_on_a_clients_card(
    setup: tuple[Caller, Caller, Server],
) -> None:
    a, _, server = setup
    made = cli("keys", "create", "--role", "clinician", env=server.env)
    assert made.returncode == 0, made.stderr
    key = Caller(api_key=made.stdout.strip())
    clients_card = card_for(server, a)["uuid"]
    assert send(server, key, item(clients_card)).status_code == 404
    assert rows_for(server, clients_card) == []
    # a card given to the key is the key's to give feedback on, and not the client's
    keys_card = card_for(server, key)["uuid"]
    assert send(server, a, item(keys_card)).status_code == 404
    assert send(server, key, item(keys_card)).status_code == 200
    (row,) = rows_for(server, keys_card)
    assert key.api_key is not None and key.api_key.split("_")[1] == row.key_id  # its id


def test_feedback_is_once_per_card_and_outcome(setup: tuple[Caller, Caller, Server]) -> None:
    a, _, server = setup
    card, other = card_for(server, a)["uuid"], card_for(server, a)["uuid"]
    # what the review sent: 100 rows on one card
    assert problem_fields(send(server, a, *[item(card)] * 100)) == ["feedback"]
    # twice in one request, the second spelt in capitals
    r = send(server, a, item(card), item(card.upper()))
    assert r.status_code == 422 and card.upper() in r.json()["detail"][0]["msg"]
    assert rows_for(server, card) == []

    assert send(server, a, item(card)).status_code == 200
    again = send(server, a, item(other), item(card))
    assert again.status_code == 409 and card in again.json()["detail"]
    assert rows_for(server, other) == []  # all or nothing: the new card's item is not kept
    assert len(rows_for(server, card)) == 1
    # another outcome on the same card is its own feedback
    assert send(server, a, overridden(card)).status_code == 200
    assert sorted(r.outcome for r in rows_for(server, card)) == ["accepted", "overridden"]


@pytest.fixture(scope="module")
def on_postgres(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[tuple[Caller, Caller, Server]]:
    """Two workers on PostgreSQL, started on a database an earlier version wrote feedback to
    (table cds_feedback, reason as given)."""
    with postgres_database() as database:
        with make_engine(database.url).begin() as connection:
            connection.execute(
                text("CREATE TABLE cds_feedback (id VARCHAR(32) PRIMARY KEY, override_reason TEXT)")
            )
        env = {"PERSONALIZE_DATABASE_URL": database.url}
        tmp = tmp_path_factory.mktemp("feedback-pg")
        with two_ehrs_and_service(tmp, trained_registry, workers=2, env=env) as running:
            yield running


def test_an_earlier_versions_feedback_table_is_reported_at_startup(
    on_postgres: tuple[Caller, Caller, Server],
) -> None:
    _, _, server = on_postgres
    log = server.output()
    assert "still holds table cds_feedback, where an earlier version" in log, log[-2000:]
    assert "Feedback now goes to cds_feedback_v2" in log


def test_concurrent_feedback_on_two_workers_is_kept_once(
    on_postgres: tuple[Caller, Caller, Server],
) -> None:
    a, _, server = on_postgres
    card = card_for(server, a)["uuid"]
    n = 8
    headers = [a.headers(FEEDBACK_AUD) for _ in range(n)]  # a fresh JWT each
    start = threading.Barrier(n)
    codes: list[int] = []

    def post(i: int) -> None:
        with httpx.Client(timeout=30) as http:  # its own connection: both workers answer
            start.wait()
            r = http.post(
                f"{server.url}/cds-services/{SERVICE_ID}/feedback",
                json={"feedback": [item(card)]},
                headers={**headers[i], "Connection": "close"},
            )
            codes.append(r.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * (n - 1), codes
    (row,) = rows_for(server, card)
    # the database itself refuses a second row, whoever writes it
    second = {**row._asdict(), "id": uuid.uuid4().hex, "key_id": "someone-else"}
    with database_of(server) as engine, pytest.raises(IntegrityError), engine.begin() as c:
        c.execute(insert(CdsFeedback), [second])
