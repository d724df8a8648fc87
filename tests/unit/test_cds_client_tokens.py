"""The registered CDS clients file and the JWT checks that need no server: a JWK Set in a
local file (cached with an expiry, read again when a new kid appears, at most once per
refresh interval), the key's declared algorithm, the clients file's errors, the lifetime
limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from personalize.service.cds_clients import CdsClient, ClientRejected, TrustedClients
from personalize.service.key_sets import KeyNotFound, KeyPolicy, KeySet, KeySetUnavailable
from support.ehr import CdsClientKeys

AUD = "https://cds.example.test/cds-services/svc"
ISS = "https://ehr.example.org"

pytestmark = pytest.mark.anyio


def write_keys(path: Path, *clients: CdsClientKeys) -> None:
    path.write_text(json.dumps({"keys": [c.jwk() for c in clients]}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_jwk_set_in_a_file_verifies_and_picks_up_a_new_key(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    url = f"file://{jwks}"
    first = CdsClientKeys(ISS, url, "ES384")
    write_keys(jwks, first)
    trusted = TrustedClients([CdsClient(ISS, url)], KeyPolicy(refresh_seconds=0.01))
    call = await trusted.verify(first.token(AUD), AUD)
    assert call.client.iss == ISS and call.jti

    rotated = CdsClientKeys(ISS, url, "RS384")  # the EHR adds a key: no restart needed
    write_keys(jwks, first, rotated)
    time.sleep(0.02)
    assert (await trusted.verify(rotated.token(AUD), AUD)).client.iss == ISS

    now = int(time.time())
    refusals = {
        "more than 300 s": first.token(AUD, exp=now + 301),
        "'iat' is in the future": first.token(AUD, iat=now + 120, exp=now + 180),
        "'nbf' is in the future": first.token(AUD, nbf=now + 120),
        "jku": first.token(AUD, headers={"jku": "file:///etc/passwd"}),
        "kid": first.token(AUD, headers={"kid": None}),
        "not a JWT": "a.b.c",
    }
    for reason, token in refusals.items():
        with pytest.raises(ClientRejected, match=reason) as refused:
            await trusted.verify(token, AUD)
        assert refused.value.claimed == (None if reason == "not a JWT" else trusted.clients[ISS])
    jwks.unlink()
    stranger = CdsClientKeys(ISS, url)
    time.sleep(0.02)
    with pytest.raises(ClientRejected, match="cannot be"):
        await trusted.verify(stranger.token(AUD), AUD)


async def test_a_key_is_used_only_with_the_algorithm_it_declares(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    url = f"file://{jwks}"
    rsa = CdsClientKeys(ISS, url, "RS256")
    undeclared = CdsClientKeys(ISS, url, "RS256")
    ec = CdsClientKeys(ISS, url, "ES256")
    entries = [rsa.jwk(), {k: v for k, v in undeclared.jwk().items() if k != "alg"}, ec.jwk()]
    jwks.write_text(json.dumps({"keys": entries}))
    trusted = TrustedClients([CdsClient(ISS, url)])
    await trusted.verify(rsa.token(AUD), AUD)
    for other in ("PS256", "RS512"):
        rsa.algorithm = other
        with pytest.raises(ClientRejected, match=f"is for RS256, not {other}"):
            await trusted.verify(rsa.token(AUD), AUD)
    undeclared.algorithm = "PS384"  # no declared alg: any RSA algorithm of the key's type
    await trusted.verify(undeclared.token(AUD), AUD)
    ec.private = rsa.private  # an RSA signature under an EC key's kid
    ec.algorithm = "RS256"
    with pytest.raises(ClientRejected, match="is for ES256, not RS256"):
        await trusted.verify(ec.token(AUD), AUD)


async def test_a_removed_key_is_refused_once_the_cache_time_has_passed(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    kept, removed = CdsClientKeys(ISS, "x"), CdsClientKeys(ISS, "x")
    write_keys(jwks, kept, removed)
    clock = Clock()
    keys = KeySet(f"file://{jwks}", KeyPolicy(cache_seconds=300, refresh_seconds=2), clock=clock)
    assert await keys.key(removed.kid)
    write_keys(jwks, kept)  # the EHR revokes a key
    clock.now += 299
    assert await keys.key(removed.kid)  # within the stated cache time
    clock.now += 2
    with pytest.raises(KeyNotFound):
        await keys.key(removed.kid)
    assert await keys.key(kept.kid)


async def test_unknown_kids_fetch_at_most_once_per_refresh_interval(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    first, added = CdsClientKeys(ISS, "x"), CdsClientKeys(ISS, "x")
    write_keys(jwks, first)
    clock = Clock()
    keys = KeySet(f"file://{jwks}", KeyPolicy(refresh_seconds=2), clock=clock)
    await keys.key(first.kid)
    write_keys(jwks, first, added)
    with pytest.raises(KeyNotFound):  # fetched a moment ago: not again yet
        await keys.key(added.kid)
    clock.now += 2
    assert await keys.key(added.kid)  # first use after the interval: fetched, accepted
    with pytest.raises(KeyNotFound):
        await keys.key("made-up")
    write_keys(jwks, first)
    with pytest.raises(KeyNotFound):  # the made-up kid may not trigger another fetch yet
        await keys.key("made-up-2")
    assert await keys.key(added.kid)  # still in the cached copy


async def test_a_failing_key_server_is_not_asked_again_until_the_breaker_closes(
    tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    client = CdsClientKeys(ISS, "x")
    clock = Clock()
    policy = KeyPolicy(cache_seconds=60, refresh_seconds=1, breaker_seconds=30, max_bytes=4096)
    keys = KeySet(f"file://{jwks}", policy, clock=clock)
    jwks.write_text(json.dumps({"keys": [client.jwk()], "padding": "x" * 5000}))
    with pytest.raises(KeySetUnavailable, match="over 4096 bytes"):
        await keys.key(client.kid)
    write_keys(jwks, client)
    clock.now += 10
    with pytest.raises(KeySetUnavailable, match="not tried again for 20 s"):
        await keys.key(client.kid)
    clock.now += 20
    assert await keys.key(client.kid)
    jwks.write_text("not json")
    clock.now += 61  # expired: fetched again, fails, and the expired keys are gone
    with pytest.raises(KeySetUnavailable, match="not JSON"):
        await keys.key(client.kid)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients: {}", "top-level 'clients:' list"),
        ("clients: [{iss: a}]", r"clients\[0\].jwks_url: required"),
        ("clients: [{iss: a, jwks_url: 'ftp://x'}]", "http"),
        ("clients: [{iss: a, jwks_url: 'https://x', fhir_server: []}]", "unknown field"),
        ("clients: [{iss: a, jwks_url: 'https://x', fhir_servers: ['x']}]", "fhir_servers"),
        (
            "clients: [{iss: a, jwks_url: 'https://x', fhir_servers: ['https://e.org/f hir']}]",
            r"fhir_servers\[0\]",
        ),
        (
            "clients: [{iss: a, jwks_url: 'https://x'}, {iss: a, jwks_url: 'https://y'}]",
            "registered twice",
        ),
        ("clients: [", "cannot read"),
    ],
)
def test_the_clients_file_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        TrustedClients.load(path)


def test_a_client_may_send_the_service_only_to_its_own_fhir_servers() -> None:
    client = CdsClient(ISS, "https://ehr.example.org/jwks", ("https://ehr.example.org/fhir/",))
    assert client.allows_fhir_server("https://ehr.example.org/fhir")
    assert not client.allows_fhir_server("https://ehr.example.org/fhir/../admin")
    assert not client.allows_fhir_server("http://169.254.169.254/latest")
