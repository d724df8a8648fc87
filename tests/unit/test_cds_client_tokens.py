"""The registered CDS clients file and the JWT checks that need no server: a JWK Set in a
local file (read again when a new kid appears), the clients file's errors, replay by the
`first_use` callback, the lifetime limits."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from personalize.service.cds_clients import CdsClient, ClientRejected, TrustedClients
from support.ehr import CdsClientKeys

AUD = "https://cds.example.test/cds-services/svc"
ISS = "https://ehr.example.org"


def write_keys(path: Path, *clients: CdsClientKeys) -> None:
    path.write_text(json.dumps({"keys": [c.jwk() for c in clients]}))


def fresh(seen: set[str]) -> Any:
    def first_use(client: CdsClient, jti: str, expires_at: datetime) -> bool:
        if jti in seen:
            return False
        seen.add(jti)
        return True

    return first_use


def test_a_jwk_set_in_a_file_verifies_and_picks_up_a_new_key(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    url = f"file://{jwks}"
    first = CdsClientKeys(ISS, url, "ES384")
    write_keys(jwks, first)
    trusted = TrustedClients([CdsClient(ISS, url)])
    seen: set[str] = set()
    call = trusted.verify(first.token(AUD), AUD, fresh(seen))
    assert call.client.iss == ISS and len(seen) == 1

    rotated = CdsClientKeys(ISS, url, "RS384")  # the EHR adds a key: no restart needed
    write_keys(jwks, first, rotated)
    assert trusted.verify(rotated.token(AUD), AUD, fresh(seen)).client.iss == ISS

    token = first.token(AUD)
    trusted.verify(token, AUD, fresh(seen))
    with pytest.raises(ClientRejected, match="replay"):
        trusted.verify(token, AUD, fresh(seen))
    now = int(time.time())
    with pytest.raises(ClientRejected, match="more than 300 s"):
        trusted.verify(first.token(AUD, exp=now + 301), AUD, fresh(seen))
    with pytest.raises(ClientRejected, match="in the future"):
        trusted.verify(first.token(AUD, iat=now + 120, exp=now + 180), AUD, fresh(seen))
    with pytest.raises(ClientRejected, match="jku"):
        trusted.verify(first.token(AUD, headers={"jku": "file:///etc/passwd"}), AUD, fresh(seen))
    with pytest.raises(ClientRejected, match="kid"):
        trusted.verify(first.token(AUD, headers={"kid": None}), AUD, fresh(seen))
    with pytest.raises(ClientRejected, match="not a JWT"):
        trusted.verify("a.b.c", AUD, fresh(seen))
    jwks.unlink()
    stranger = CdsClientKeys(ISS, url)
    with pytest.raises(ClientRejected, match="cannot be fetched"):
        trusted.verify(stranger.token(AUD), AUD, fresh(seen))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients: {}", "top-level 'clients:' list"),
        ("clients: [{iss: a}]", r"clients\[0\].jwks_url: required"),
        ("clients: [{iss: a, jwks_url: 'ftp://x'}]", "http"),
        ("clients: [{iss: a, jwks_url: 'https://x', fhir_server: []}]", "unknown field"),
        ("clients: [{iss: a, jwks_url: 'https://x', fhir_servers: ['x']}]", "fhir_servers"),
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
