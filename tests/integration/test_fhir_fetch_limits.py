"""What a CDS request and the FHIR servers it names can make the service do, on a real
`personalize serve` process: request values that cannot be fetched with are a 400 naming the
field (nothing is sent), a Bundle's `next` link outside the registered base or malformed is
not followed (the token never leaves the base), a slow or dripping server holds a call no
longer than the fetch deadline, and a server that just hung is not asked again for a while.
Never a 5xx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import yaml
from test_cds_clients import PUBLIC, SERVICE_AUD, SERVICE_ID, bearer, hook, stock

from personalize.service import fhir_fetch
from support.ehr import CdsClientKeys, Ehr, loopback_ehr
from support.misbehaving_fhir import LINK_TRICKS, MisbehavingFhir, misbehaving_fhir
from support.registry import TrainedRegistry
from support.servers import Server, serve

pytestmark = pytest.mark.slow

DEADLINE = fhir_fetch.DEADLINE_SECONDS
MARGIN = 3.0  # the call's own work on a busy machine
TOKEN = "Bearer ehr-access-token-1"


@dataclass
class Running:
    ehr: Ehr
    bad: MisbehavingFhir
    client: CdsClientKeys
    server: Server

    def post(self, body: dict[str, Any]) -> tuple[httpx.Response, float]:
        """A CDS call and how long it took."""
        started = time.monotonic()
        r = httpx.post(
            f"{self.server.url}/cds-services/{SERVICE_ID}",
            json=body,
            headers=bearer(self.client.token(SERVICE_AUD)),
            timeout=60,
        )
        return r, time.monotonic() - started


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[Running]:
    """One service; its client registers the good EHR (with a trailing slash) and each
    misbehaving base."""
    tmp = tmp_path_factory.mktemp("fhir-limits")
    with loopback_ehr() as ehr, misbehaving_fhir() as bad:
        client = CdsClientKeys("https://ehr.example.org", ehr.jwks_url)
        ehr.jwks["keys"].append(client.jwk())
        stock(ehr)
        servers = [ehr.fhir + "/"] + [bad.base(n) for n in ("slow", "drip", *LINK_TRICKS)]
        clients = tmp / "cds-clients.yaml"
        entry = {"iss": client.iss, "jwks_url": ehr.jwks_url, "fhir_servers": servers}
        clients.write_text(yaml.safe_dump({"clients": [entry]}))
        env = {"PERSONALIZE_CDS_CLIENTS": str(clients), "PERSONALIZE_PUBLIC_URL": PUBLIC}
        with serve(tmp, trained_registry, env=env) as server:
            yield Running(ehr, bad, client, server)


def tokens_outside(seen: list[Any], base_path: str) -> list[str]:
    """Paths outside `base_path` that a request carrying the token reached."""
    return [s.path for s in seen if s.authorization and not s.path.startswith(base_path + "/")]


def test_request_values_that_cannot_be_fetched_with_are_a_400_naming_them(
    running: Running,
) -> None:
    ehr = running.ehr
    ehr.seen.clear()
    port = ehr.url.rsplit(":", 1)[1]
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "newline": (hook(fhir_server=ehr.fhir + "\n"), "fhirServer contains U+000A"),
        "tab": (hook(fhir_server=ehr.fhir + "\t"), "fhirServer contains U+0009"),
        "space": (hook(fhir_server=" " + ehr.fhir), "fhirServer contains U+0020"),
        "userinfo": (
            hook(fhir_server=f"http://127.0.0.1:{port}@evil.example/fhir"),
            "fhirServer has userinfo",
        ),
        "scheme": (hook(fhir_server=f"file://127.0.0.1:{port}/fhir"), "fhirServer is not an"),
        "long": (hook(fhir_server=ehr.fhir + "/" + "x" * 3000), "longer than 2048"),
    }
    token_newline = hook(fhir_server=ehr.fhir)
    token_newline["fhirAuthorization"]["access_token"] = "ehr-access-token-1\r\nX-Injected: 1"
    cases["token newline"] = (token_newline, "fhirAuthorization.access_token")
    token_long = hook(fhir_server=ehr.fhir)
    token_long["fhirAuthorization"]["access_token"] = "t" * (fhir_fetch.MAX_TOKEN_CHARS + 1)
    cases["token long"] = (token_long, "fhirAuthorization.access_token is longer than 8192")
    patient_newline = hook(fhir_server=ehr.fhir)
    patient_newline["context"]["patientId"] = "pat-9\n"
    cases["context"] = (patient_newline, "context.patientId")
    for name, (body, detail) in cases.items():
        r, _ = running.post(body)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert detail in r.json()["detail"], (name, r.text)
        assert "ehr-access-token-1" not in r.text
    assert ehr.fhir_requests() == []  # nothing was sent for any of them

    # the registered server (with a trailing slash) in other spellings of the same URL
    for spelling in (ehr.fhir, ehr.fhir.replace("http://", "HTTP://"), ehr.fhir + "/x/../"):
        r, _ = running.post(hook(fhir_server=spelling))
        assert r.status_code == 200, (spelling, r.text)
    assert ehr.fhir_requests() and tokens_outside(ehr.fhir_requests(), "/fhir") == []
    # a path that only looks like the base is another server
    r, _ = running.post(hook(fhir_server=ehr.fhir + "/../admin"))
    assert r.status_code == 412 and "not a FHIR server registered" in r.json()["detail"]


@pytest.mark.parametrize(
    ("trick", "note"),
    [
        ("dotdot", "the next page link is outside the FHIR server's base; not followed"),
        ("encoded", "the next page link is outside the FHIR server's base; not followed"),
        ("newline", "the next page link contains U+000A"),
        ("long", "the next page link is longer than 2048 characters"),
    ],
)
def test_a_next_link_outside_the_base_or_malformed_is_not_followed(
    running: Running, trick: str, note: str
) -> None:
    bad = running.bad
    r, _ = running.post(hook(fhir_server=bad.base(trick)))
    assert r.status_code == 412, r.text  # the search is left out, with the reason
    assert f"observations: not fetched from the FHIR server ({note}" in r.json()["detail"]
    seen = bad.seen_under(trick)
    assert any(s.path.startswith(f"/{trick}/fhir/Observation") for s in seen)
    assert tokens_outside(seen, f"/{trick}/fhir") == []
    assert all(s.authorization == TOKEN for s in seen)
    assert not [s for s in bad.seen if "/other/" in s.path]


def test_a_slow_server_costs_one_caller_the_deadline_and_the_next_nothing(
    running: Running,
) -> None:
    bad = running.bad
    r, took = running.post(hook(fhir_server=bad.base("slow")))
    assert r.status_code == 412, r.text
    detail = r.json()["detail"]
    assert "patient: not fetched from the FHIR server (the FHIR server did not answer" in detail
    assert "observations: not fetched from the FHIR server (the FHIR server timed out" in detail
    assert took < DEADLINE + MARGIN, took
    asked = len(bad.seen_under("slow"))
    assert asked == 1  # the queries after the one that hung were not sent

    # the breaker: the next caller is told at once, and the server is not asked
    r, took = running.post(hook(fhir_server=bad.base("slow")))
    assert r.status_code == 412, r.text
    assert "timed out or could not be reached a moment ago; not asked again" in r.text
    assert took < 1.5, took
    assert len(bad.seen_under("slow")) == asked

    # per server: the same client's good server still answers
    r, _ = running.post(hook(fhir_server=running.ehr.fhir))
    assert r.status_code == 200, r.text


def test_a_dripping_server_is_cut_off_at_the_deadline(running: Running) -> None:
    r, took = running.post(hook(fhir_server=running.bad.base("drip")))
    assert r.status_code == 412, r.text
    why = f"the FHIR server did not answer within {DEADLINE:g} s"
    assert f"patient: not fetched from the FHIR server ({why})" in r.json()["detail"]
    assert took < DEADLINE + MARGIN, took


def test_all_pages_of_one_call_together_are_capped(running: Running) -> None:
    bad = running.bad

    async def run() -> fhir_fetch.Fetched:
        return await fhir_fetch.fetch(
            fhir_fetch.requested_server(bad.base("big")),
            "ehr-access-token-1",
            {"observations": "Observation?subject={{context.patientId}}"},
            {"patientId": "pat-9"},
            breaker=fhir_fetch.CircuitBreaker(),
            client_id="https://ehr.example.org",
        )

    fetched = anyio.run(run)
    assert fetched.prefetch == {}
    (note,) = fetched.notes
    assert f"larger than {fhir_fetch.MAX_TOTAL_BYTES} bytes in all" in note
    pages = [s for s in bad.seen_under("big") if s.path.startswith("/big/fhir/Observation")]
    assert len(pages) == 3  # 4 MiB each: the third passes the total


def test_the_service_never_answered_5xx_nor_logged_the_token(running: Running) -> None:
    log = running.server.output()
    assert " 500 " not in log and "Traceback" not in log
    assert "ehr-access-token-1" not in log
