"""An EHR calling the CDS Hooks service as CDS Hooks 2.0 has it: a registered client signs
each call with its own key (JWK Set served on loopback), leaves prefetch out for the service
to fetch from its FHIR server (on loopback, recording what it is asked), and sends feedback.
Real `personalize serve` processes; the jti replay check across two workers on PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from sqlalchemy import create_engine, select

from personalize.service.audit import CdsFeedback
from support.ehr import CdsClientKeys, Ehr, loopback_ehr
from support.postgres import postgres_database
from support.registry import TrainedRegistry
from support.servers import Server, cli, serve

pytestmark = pytest.mark.slow

PUBLIC = "https://cds.example.test/personalize"
SERVICE_ID = "personalize-recommendation"
SERVICE_AUD = f"{PUBLIC}/cds-services/{SERVICE_ID}"
DISCOVERY_AUD = f"{PUBLIC}/cds-services"
LOCAL = "urn:personalize:feature"


def observation(code: str, value: Any, when: str = "2026-10-01") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/pat-9"},
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value},
        "extension": [{"url": "https://ehr.example.org/fhir/ext/source", "valueString": "x"}],
    }


def stock(ehr: Ehr) -> None:
    """One patient with five observations (three pages at two per page) and one opioid."""
    ehr.patients["pat-9"] = {
        "resourceType": "Patient",
        "id": "pat-9",
        "gender": "male",
        "birthDate": "1966-03-02",
    }
    ehr.observations[:] = [
        observation("phq8", 12),
        observation("odi", 40),
        observation("odi", 10, when="2019-01-01"),  # older: not used
        observation("bpi_severity", 7.25),
        observation("gad7", 9),
    ]
    ehr.medications[:] = [
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/pat-9"},
            "medicationCodeableConcept": {"text": "oxycodone 10 MG Oral Tablet"},
            "dosageInstruction": [
                {
                    "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                }
            ],
        }
    ]


def hook(prefetch: dict[str, Any] | None = None, fhir_server: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "6b1f3f7a-0f6f-4c2b-9d7e-3d1f2f0f9a11",
        "context": {"userId": "Practitioner/7", "patientId": "pat-9"},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": "ehr-access-token-1",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Patient.read patient/Observation.read",
            "subject": "personalize",
        }
    return body


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def ehr_and_service(
    tmp: Path, trained: TrainedRegistry, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[tuple[Ehr, CdsClientKeys, Server]]:
    with loopback_ehr() as ehr:
        client = CdsClientKeys("https://ehr.example.org", ehr.jwks_url)
        ehr.jwks["keys"].append(client.jwk())
        stock(ehr)
        clients = tmp / "cds-clients.yaml"
        clients.write_text(
            yaml.safe_dump(
                {
                    "clients": [
                        {
                            "iss": client.iss,
                            "jwks_url": ehr.jwks_url,
                            "fhir_servers": [ehr.fhir],
                        }
                    ]
                }
            )
        )
        settings = {"PERSONALIZE_CDS_CLIENTS": str(clients), "PERSONALIZE_PUBLIC_URL": PUBLIC}
        with serve(tmp, trained, workers=workers, env={**settings, **(env or {})}) as server:
            yield ehr, client, server


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[tuple[Ehr, CdsClientKeys, Server]]:
    with ehr_and_service(tmp_path_factory.mktemp("cds"), trained_registry) as running:
        yield running


def test_a_registered_client_discovers_and_gets_a_card_from_fetched_data(
    setup: tuple[Ehr, CdsClientKeys, Server],
) -> None:
    ehr, client, server = setup
    r = httpx.get(server.url + "/cds-services", headers=bearer(client.token(DISCOVERY_AUD)))
    assert r.status_code == 200 and r.json()["services"][0]["id"] == SERVICE_ID
    wrong = httpx.get(server.url + "/cds-services", headers=bearer(client.token(SERVICE_AUD)))
    assert wrong.status_code == 401 and "aud" in wrong.json()["detail"]

    ehr.seen.clear()
    r = httpx.post(
        f"{server.url}/cds-services/{SERVICE_ID}",
        json=hook(fhir_server=ehr.fhir),
        headers=bearer(client.token(SERVICE_AUD)),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    detail = card["detail"]
    assert "phq8 from Observation" in detail and "bpi_severity from Observation" in detail
    assert "odi from Observation urn:personalize:feature|odi (2026-10-01)" in detail
    assert "gad7 from Observation" in detail  # on the third page of the search
    assert "mme from 1 active MedicationRequest(s), 1 opioid" in detail
    assert "age from Patient.birthDate" in detail
    fetched = ehr.fhir_requests()
    assert fetched and all(s.authorization == "Bearer ehr-access-token-1" for s in fetched)
    assert any(s.path.startswith("/fhir/Patient/pat-9") for s in fetched)
    assert sum(s.path.startswith("/fhir/Observation") for s in fetched) == 3  # paged
    card_url = f"{SERVICE_AUD}/model-card"
    assert card["source"]["url"] == card_url
    assert card["links"] == [
        {"label": card["links"][0]["label"], "url": card_url, "type": "absolute"}
    ]
    page = httpx.get(f"{server.url}/cds-services/{SERVICE_ID}/model-card")
    assert page.status_code == 200 and "Intended use" in page.text
    assert "ehr-access-token-1" not in server.output()  # no token in the logs

    # feedback on that card is stored against its recommendation, coded; unknown cards are
    # refused (tests/integration/test_cds_feedback.py has the rest)
    reason = card["overrideReasons"][0]
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": reason,
                    "userComment": "patient prefers group sessions",
                },
                "outcomeTimestamp": "2026-11-29T10:00:00Z",
            }
        ]
    }
    url = f"{server.url}/cds-services/{SERVICE_ID}/feedback"
    r = httpx.post(url, json=body, headers=bearer(client.token(f"{SERVICE_AUD}/feedback")))
    assert r.status_code == 200, r.text
    engine = create_engine(server.env["PERSONALIZE_DATABASE_URL"])
    with engine.connect() as connection:
        (row,) = connection.execute(select(CdsFeedback)).all()
    assert row.card == card["uuid"].replace("-", "") and row.outcome == "overridden"
    assert row.override_reason == reason["code"] and row.key_id.startswith("cds-")
    assert "group sessions" not in json.dumps([str(v) for v in row])  # free text not kept
    body["feedback"][0]["card"] = "00000000-0000-4000-8000-000000000000"
    r = httpx.post(url, json=body, headers=bearer(client.token(SERVICE_AUD)))
    assert r.status_code == 404


def test_tokens_that_must_not_pass(setup: tuple[Ehr, CdsClientKeys, Server]) -> None:
    ehr, client, server = setup
    url = f"{server.url}/cds-services/{SERVICE_ID}"
    stranger = CdsClientKeys("https://elsewhere.example.org", ehr.jwks_url)
    impostor = CdsClientKeys(client.iss, ehr.jwks_url)
    impostor.kid = client.kid  # same kid, another private key
    now = int(time.time())
    # the client's public key as an HMAC secret: the classic algorithm confusion (built by
    # hand, since PyJWT itself refuses to sign that way)
    hs256 = hand_signed(
        {"alg": "HS256", "kid": client.kid},
        {"iss": client.iss, "aud": SERVICE_AUD, "iat": now, "exp": now + 60, "jti": "h"},
        json.dumps(client.jwk()).encode(),
    )
    unsigned = jwt.encode(
        {"iss": client.iss, "aud": SERVICE_AUD, "iat": now, "exp": now + 60, "jti": "n"},
        None,
        algorithm="none",
        headers={"kid": client.kid},
    )
    cases = {
        "expired": client.token(SERVICE_AUD, iat=now - 400, exp=now - 100),
        "too long": client.token(SERVICE_AUD, exp=now + 3600),
        "wrong aud": client.token(DISCOVERY_AUD),
        "unknown iss": stranger.token(SERVICE_AUD),
        "foreign jku": client.token(SERVICE_AUD, headers={"jku": "https://evil.example/jwks"}),
        "other key": impostor.token(SERVICE_AUD),
        "HS256": hs256,
        "alg none": unsigned,
        "no jti": client.token(SERVICE_AUD, jti=None),
    }
    full = {"patient": ehr.patients["pat-9"], "observations": None}
    for name, token in cases.items():
        r = httpx.post(url, json=hook(full), headers=bearer(token), timeout=30)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert "JWT refused" in r.json()["detail"], name
    log = server.output()
    assert client.kid not in log and "BEGIN" not in log  # nothing about keys in the logs

    token = client.token(SERVICE_AUD)
    assert httpx.post(url, json=hook(full), headers=bearer(token), timeout=30).status_code == 200
    replay = httpx.post(url, json=hook(full), headers=bearer(token), timeout=30)
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]


def test_what_the_service_fetches_and_from_where(
    setup: tuple[Ehr, CdsClientKeys, Server],
) -> None:
    ehr, client, server = setup
    url = f"{server.url}/cds-services/{SERVICE_ID}"
    with loopback_ehr() as other:  # a server the client did not register
        stock(other)
        r = httpx.post(
            url,
            json=hook(fhir_server=other.fhir),
            headers=bearer(client.token(SERVICE_AUD)),
            timeout=30,
        )
        assert r.status_code == 412 and "not a FHIR server registered" in r.json()["detail"]
        assert other.seen == []  # no request reached it

    # null prefetch is "no data": a card without those values, nothing fetched
    ehr.seen.clear()
    nothing = {"patient": ehr.patients["pat-9"], "observations": None, "medications": None}
    r = httpx.post(
        url,
        json=hook(nothing, fhir_server=ehr.fhir),
        headers=bearer(client.token(SERVICE_AUD)),
        timeout=30,
    )
    assert r.status_code == 200 and ehr.fhir_requests() == []
    detail = r.json()["cards"][0]["detail"]
    assert "Not available from the record" in detail and "phq8 from" not in detail

    # an OperationOutcome in place of the Bundle: no data, and the card says so
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "too-costly"}],
    }
    r = httpx.post(
        url,
        json=hook({**nothing, "observations": outcome}),
        headers=bearer(client.token(SERVICE_AUD)),
        timeout=30,
    )
    assert r.status_code == 200
    card = r.json()["cards"][0]
    assert card["indicator"] == "warning"
    assert "OperationOutcome (too-costly); no data" in card["detail"]

    # no patient from prefetch and none to fetch: 412
    r = httpx.post(
        url,
        json=hook({"patient": None, "observations": None}),
        headers=bearer(client.token(SERVICE_AUD)),
        timeout=30,
    )
    assert r.status_code == 412 and "patient" in r.json()["detail"]


def test_a_clinician_api_key_still_works_on_the_cds_routes(
    setup: tuple[Ehr, CdsClientKeys, Server],
) -> None:
    ehr, _, server = setup
    made = cli("keys", "create", "--role", "clinician", env=server.env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    prefetch = {"patient": ehr.patients["pat-9"], "observations": None}
    r = httpx.post(
        f"{server.url}/cds-services/{SERVICE_ID}",
        json=hook(prefetch, fhir_server=ehr.fhir),
        headers=bearer(key),
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_a_replayed_jti_is_refused_by_every_worker(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    with postgres_database() as database:
        env = {"PERSONALIZE_DATABASE_URL": database.url}
        with ehr_and_service(tmp_path, trained_registry, workers=2, env=env) as running:
            ehr, client, server = running
            url = f"{server.url}/cds-services/{SERVICE_ID}"
            prefetch = {"patient": ehr.patients["pat-9"], "observations": None}
            token = client.token(SERVICE_AUD)
            codes = []
            with httpx.Client(timeout=30) as http:  # new connections: both workers answer
                for _ in range(12):
                    r = http.post(
                        url, json=hook(prefetch), headers={**bearer(token), "Connection": "close"}
                    )
                    codes.append(r.status_code)
            assert codes.count(200) == 1 and codes.count(401) == 11, codes
