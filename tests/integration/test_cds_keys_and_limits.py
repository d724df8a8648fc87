"""An EHR's keys and the limits that must not be turned against it, on a real
`personalize serve --workers 2` over PostgreSQL with loopback key servers: a key removed
from the EHR's JWK Set is refused once the stated cache time has passed and a new one is
accepted on first use; a key only signs with its declared algorithm; a client whose key
server hangs costs the other callers nothing (health, readiness, another EHR's calls) and
does not hold up shutdown; garbage from an address does not lock out a valid client or key
from it; failure counts are shared by both workers."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from personalize.service.audit import Database
from personalize.service.auth import create_key, split_key
from support.ehr import CdsClientKeys, Ehr, loopback_ehr
from support.postgres import PostgresDatabase
from support.registry import TrainedRegistry
from support.servers import Server, serve, stop

pytestmark = pytest.mark.slow

PUBLIC = "https://cds.example.test/personalize"
DISCOVERY_AUD = f"{PUBLIC}/cds-services"
CACHE_SECONDS = 3.0
PER_KEY = 4
PER_KEY_ALL = 12
PER_CLIENT = 8


@contextlib.contextmanager
def hung_server() -> Iterator[str]:
    """A key server that accepts connections, reads the request and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    stopping = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
    finally:
        stopping.set()
        listener.close()
        for conn in held:
            conn.close()


@dataclass
class Setup:
    ehr: Ehr
    client: CdsClientKeys
    hung: list[CdsClientKeys]
    server: Server
    database_url: str


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[Setup]:
    from support.postgres import postgres_database

    tmp = tmp_path_factory.mktemp("keys")
    with postgres_database() as db, loopback_ehr() as ehr, hung_server() as hung_url:
        yield from _running(tmp, trained_registry, db, ehr, hung_url)


def _running(
    tmp: Path, trained: TrainedRegistry, db: PostgresDatabase, ehr: Ehr, hung_url: str
) -> Iterator[Setup]:
    client = CdsClientKeys("https://ehr.example.org", ehr.jwks_url)
    ehr.jwks["keys"].append(client.jwk())
    hung = [CdsClientKeys(f"https://hung-{i}.example.org", hung_url) for i in range(2)]
    clients = tmp / "cds-clients.yaml"
    entries = [{"iss": c.iss, "jwks_url": c.jwks_url} for c in (client, *hung)]
    clients.write_text(yaml.safe_dump({"clients": entries}))
    env = {
        "PERSONALIZE_CDS_CLIENTS": str(clients),
        "PERSONALIZE_PUBLIC_URL": PUBLIC,
        "PERSONALIZE_DATABASE_URL": db.sqlalchemy_url,
        "PERSONALIZE_CDS_KEYS_CACHE_SECONDS": str(CACHE_SECONDS),
        "PERSONALIZE_AUTH_FAILURES_PER_KEY": str(PER_KEY),
        "PERSONALIZE_AUTH_FAILURES_PER_KEY_ALL": str(PER_KEY_ALL),
        "PERSONALIZE_AUTH_FAILURES_PER_CLIENT": str(PER_CLIENT),
    }
    with serve(tmp, trained, workers=2, env=env) as server:
        yield Setup(ehr, client, hung, server, db.sqlalchemy_url)


def discover(server: Server, token: str, address: str = "127.0.0.1") -> httpx.Response:
    """A CDS call with a client's JWT, on a new connection (so either worker may take it)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=30) as http:
        return http.get(f"{server.url}/cds-services", headers={"Authorization": f"Bearer {token}"})


def on_both_workers(server: Server, token_of: Any, n: int = 12) -> list[int]:
    """Statuses of `n` calls on new connections (SO_REUSEPORT spreads them over both
    workers); `token_of()` gives a fresh token each time (a jti is used once)."""
    return [discover(server, token_of()).status_code for _ in range(n)]


def test_a_removed_key_is_refused_after_the_cache_time_and_a_new_one_works_at_once(
    setup: Setup,
) -> None:
    ehr, client, server = setup.ehr, setup.client, setup.server
    assert set(on_both_workers(server, lambda: client.token(DISCOVERY_AUD))) == {200}

    # rotation: the EHR publishes a new key, then signs with it
    rotated = CdsClientKeys(client.iss, ehr.jwks_url, "RS256")
    ehr.jwks["keys"].append(rotated.jwk())
    time.sleep(2.1)  # the refresh interval since the last fetch (a second's margin)
    assert set(on_both_workers(server, lambda: rotated.token(DISCOVERY_AUD))) == {200}

    # the old key is removed: refused by every worker once its cached copy has expired
    ehr.jwks["keys"] = [rotated.jwk()]
    removed_at = time.monotonic()
    time.sleep(CACHE_SECONDS + 0.5)
    refused = [
        discover(server, client.token(DISCOVERY_AUD), "127.0.0.2") for _ in range(PER_CLIENT)
    ]
    assert {r.status_code for r in refused} == {401}, [r.text for r in refused]
    assert "no key with this 'kid'" in refused[0].json()["detail"]
    assert time.monotonic() - removed_at < CACHE_SECONDS + 3

    # a key signs only with the algorithm it declares (RS256, not PS256 or RS512)
    for alg in ("PS256", "RS512"):
        rotated.algorithm = alg
        r = discover(server, rotated.token(DISCOVERY_AUD), "127.0.0.3")
        assert r.status_code == 401 and f"is for RS256, not {alg}" in r.json()["detail"]
    rotated.algorithm = "RS256"
    now = int(time.time())
    r = discover(server, rotated.token(DISCOVERY_AUD, nbf=now + 120), "127.0.0.3")
    assert r.status_code == 401 and "'nbf' is in the future" in r.json()["detail"]
    # the tests below sign as the EHR does now, with the rotated key
    client.private, client.kid, client.algorithm = rotated.private, rotated.kid, "RS256"


def test_a_hung_key_server_costs_the_other_callers_nothing(setup: Setup) -> None:
    server, good, hung = setup.server, setup.client, setup.hung[0]
    results: list[tuple[int, float]] = []

    def made_up_kid() -> None:
        hung.kid = secrets.token_hex(6)
        token = hung.token(DISCOVERY_AUD)
        started = time.monotonic()
        r = discover(server, token, "127.0.0.5")
        results.append((r.status_code, time.monotonic() - started))

    storm = [threading.Thread(target=made_up_kid) for _ in range(50)]
    for thread in storm:
        thread.start()
    time.sleep(0.3)  # the storm's requests are waiting on the hung key server now
    others: dict[str, list[float]] = {"healthz": [], "readyz": [], "other client": []}
    with httpx.Client(timeout=30) as http:
        while any(t.is_alive() for t in storm):
            for name, call in (
                ("healthz", lambda: http.get(f"{server.url}/healthz")),
                ("readyz", lambda: http.get(f"{server.url}/readyz")),
                ("other client", lambda: discover(server, good.token(DISCOVERY_AUD))),
            ):
                started = time.monotonic()
                assert call().status_code == 200
                others[name].append(time.monotonic() - started)
            time.sleep(0.05)
    for thread in storm:
        thread.join()
    codes = [code for code, _ in results]
    assert len(codes) == 50 and set(codes) <= {401, 429}, codes
    # released together at the fetch deadline, the failures still keep to the limit
    assert codes.count(401) <= PER_CLIENT, codes
    # the key server's deadline (5 s) bounds every refusal; after the first fetch failed,
    # the others are refused at once (the breaker), not one every 5 s
    assert max(s for _, s in results) < 8, sorted(s for _, s in results)
    for name, seconds in others.items():
        assert seconds and max(seconds) < 1.0, (name, seconds)
    # while the breaker is open, a call naming the hung client is answered at once
    hung.kid = "another-made-up-kid"
    started = time.monotonic()
    r = discover(server, hung.token(DISCOVERY_AUD), "127.0.0.6")
    assert r.status_code == 401 and time.monotonic() - started < 1.0
    assert "cannot be" in r.json()["detail"]


def test_garbage_from_an_address_does_not_lock_out_a_valid_client_or_key(setup: Setup) -> None:
    server, good = setup.server, setup.client
    stranger = CdsClientKeys("https://not-registered.example.org", "https://x/jwks")
    address = "127.0.0.7"
    statuses = [
        discover(server, t, address).status_code
        for t in ["not-a-jwt.at.all"] * 5 + [stranger.token(DISCOVERY_AUD)] * 5
    ]
    assert statuses[:PER_CLIENT] == [401] * PER_CLIENT and set(statuses[PER_CLIENT:]) == {429}
    # ... and the registered client calling from the same address is not refused
    assert discover(server, good.token(DISCOVERY_AUD), address).status_code == 200

    # forged tokens in the client's own name count per address and client
    forger = CdsClientKeys(good.iss, good.jwks_url, "RS256")
    forger.kid = good.kid
    forged = [discover(server, forger.token(DISCOVERY_AUD), "127.0.0.8") for _ in range(10)]
    assert [r.status_code for r in forged] == [401] * PER_CLIENT + [429] * 2
    assert discover(server, good.token(DISCOVERY_AUD), "127.0.0.8").status_code == 200
    assert discover(server, good.token(DISCOVERY_AUD), "127.0.0.9").status_code == 200

    # API keys: unknown ids from an address reach its limit; a real key from it still works
    db = Database(setup.database_url)
    try:
        _, valid = create_key(db, "clinician")
    finally:
        db.dispose()
    with httpx.Client(
        transport=httpx.HTTPTransport(local_address="127.0.0.10"), timeout=30
    ) as http:

        def card(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
            return http.get(f"{server.url}/v1/model", headers=headers).status_code

        unknown = [f"pz_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}" for _ in range(10)]
        codes = [card(k) for k in unknown]
        assert codes == [401] * PER_CLIENT + [429] * 2, codes
        assert card(valid) == 200


def test_failure_counts_are_shared_by_both_workers(setup: Setup) -> None:
    db = Database(setup.database_url)
    try:
        _, valid = create_key(db, "clinician")
    finally:
        db.dispose()
    key_id = split_key(valid)[0]  # type: ignore[index]

    def card(key: str, address: str) -> int:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(transport=transport, timeout=30) as http:  # new connection
            headers = {"Authorization": f"Bearer {key}"}
            return http.get(f"{setup.server.url}/v1/model", headers=headers).status_code

    def wrong() -> str:
        return f"pz_{key_id}_{secrets.token_urlsafe(32)}"

    holder = httpx.Client(  # one keep-alive connection: one worker
        transport=httpx.HTTPTransport(local_address="127.0.0.13"), timeout=30
    )
    with holder:
        headers = {"Authorization": f"Bearer {valid}"}
        assert holder.get(f"{setup.server.url}/v1/model", headers=headers).status_code == 200
        codes = [card(wrong(), "127.0.0.12") for _ in range(PER_KEY + 6)]
        # counted per process, the two workers would allow up to twice the limit
        assert codes == [401] * PER_KEY + [429] * 6, codes
        assert card(valid, "127.0.0.17") == 200  # the key from elsewhere is not locked out
        # from all addresses, a key id may cost at most PER_KEY_ALL hashes in the window
        for address in ("127.0.0.14", "127.0.0.15"):
            assert [card(wrong(), address) for _ in range(PER_KEY)] == [401] * PER_KEY
        assert card(wrong(), "127.0.0.16") == 429
        # a secret the worker verified before still passes (no hash needed)
        assert holder.get(f"{setup.server.url}/v1/model", headers=headers).status_code == 200


def test_shutdown_is_not_held_by_a_hung_key_server(setup: Setup) -> None:
    server, hung = setup.server, setup.hung[1]
    waiting = threading.Thread(
        target=lambda: discover(server, hung.token(DISCOVERY_AUD), "127.0.0.11"), daemon=True
    )
    waiting.start()
    time.sleep(0.5)  # its fetch of the hung key server is in flight
    started = time.monotonic()
    stop(server.process)
    assert time.monotonic() - started < 10
    assert "Traceback" not in server.output()
