"""`personalize serve` as real uvicorn processes on loopback: end to end with CLI keys,
several workers sharing the PostgreSQL audit database and Prometheus metrics, and the hot
swap under load while `champion` moves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from personalize.service.audit import AuditRecord, Database
from support.postgres import PostgresDatabase
from support.registry import STAMP_MODEL, TrainedRegistry
from support.servers import Server, cli, serve
from support.service import STAMP_PATIENT

pytestmark = pytest.mark.slow


def new_key(server: Server, role: str) -> dict[str, str]:
    made = cli("keys", "create", "--role", role, env=server.env)
    assert made.returncode == 0, made.stderr
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


def metric(text: str, metric_name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric_name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_serve_end_to_end_on_loopback(tmp_path: Path, trained_registry: TrainedRegistry) -> None:
    with serve(tmp_path, trained_registry) as server:
        clinician = new_key(server, "clinician")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            r = client.post(
                "/v1/recommendations",
                json={"patient": STAMP_PATIENT, "patient_ref": "MRN-7"},
                headers=clinician,
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"]["synthetic"] is True
            assert client.post("/v1/recommendations", json={"patient": {}}).status_code == 401
            assert client.get("/").status_code == 200
            assert client.get("/openapi.json").json()["components"]["schemas"]["Patient"]
        assert "MRN-7" not in server.output() and "6.25" not in server.output()
    assert "now serving personalize-stamp version 1" in server.output()


def test_two_workers_share_the_audit_database_keys_and_metrics(
    tmp_path: Path, trained_registry: TrainedRegistry, postgres_db: PostgresDatabase
) -> None:
    url = postgres_db.sqlalchemy_url
    with serve(
        tmp_path, trained_registry, workers=2, env={"PERSONALIZE_DATABASE_URL": url}
    ) as server:
        clinician = new_key(server, "clinician")
        n = 30
        for i in range(n):  # a new connection each time: the kernel spreads them over workers
            r = httpx.post(
                f"{server.url}/v1/recommendations",
                json={"patient": {**STAMP_PATIENT, "age": 30 + i}, "patient_ref": f"p{i}"},
                headers=clinician,
                timeout=30,
            )
            assert r.status_code == 200, r.text
        route = {"route": "/v1/recommendations", "status": "200", "method": "POST"}
        for _ in range(6):  # whichever worker answers the scrape, it reports all workers
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            assert metric(text, "personalize_http_requests_total", **route) == n
            assert metric(text, "personalize_predictions_total", channel="single") == n
            assert metric(text, "personalize_model_loaded", name=STAMP_MODEL, version="1") == 2
            hist = "personalize_http_request_duration_seconds_count"
            assert metric(text, hist, **route) == n

        db = Database(url)
        with db.session() as session:
            count = session.scalar(select(func.count()).select_from(AuditRecord))
            versions = set(session.scalars(select(AuditRecord.model_version)))
        db.dispose()
        assert count == n and versions == {"1"}

        key_id = clinician["Authorization"].split("_")[1]
        assert cli("keys", "revoke", key_id, env=server.env).returncode == 0
        for _ in range(6):
            r = httpx.post(
                f"{server.url}/v1/recommendations",
                json={"patient": STAMP_PATIENT},
                headers=clinician,
                timeout=30,
            )
            assert r.status_code == 401


def test_a_reload_reaches_every_worker(tmp_path: Path, trained_registry: TrainedRegistry) -> None:
    """POST /v1/admin/reload lands on one worker; the others follow through the database
    signal, not at their next registry poll (which this server never does)."""
    # its own copy of the registry: the test moves `champion`
    reg = trained_registry.copy(tmp_path / "registry")
    with serve(tmp_path, reg, workers=2) as server:
        admin, clinician = new_key(server, "admin"), new_key(server, "clinician")

        def versions(n: int = 24) -> set[str]:
            seen = set()
            for _ in range(n):  # new connections: the kernel spreads them over the workers
                r = httpx.post(
                    f"{server.url}/v1/recommendations",
                    json={"patient": STAMP_PATIENT},
                    headers=clinician,
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                seen.add(r.json()["model"]["version"])
            return seen

        assert versions() == {"1"}
        reg.set_champion("2")
        time.sleep(1.5)
        assert versions() == {"1"}  # no poll: nothing moves by itself
        reload = httpx.post(f"{server.url}/v1/admin/reload", headers=admin, timeout=60)
        assert reload.status_code == 200 and reload.json()["current"]["version"] == "2"
        deadline = time.time() + 20
        while versions() != {"2"}:
            assert time.time() < deadline, "a worker kept serving version 1"
            time.sleep(0.5)
        assert versions(40) == {"2"}


@pytest.fixture
def swap_server(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> Iterator[tuple[Server, TrainedRegistry]]:
    # its own copy of the registry: the test moves `champion`
    reg = trained_registry.copy(tmp_path / "registry")
    with serve(tmp_path, reg, workers=2, env={"PERSONALIZE_POLL_SECONDS": "0.3"}) as server:
        yield server, reg


def test_hot_swap_under_load_loses_no_request(
    swap_server: tuple[Server, TrainedRegistry],
) -> None:
    server, reg = swap_server
    clinician, admin = new_key(server, "clinician"), new_key(server, "admin")
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []
    errors: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/v1/recommendations", json={"patient": STAMP_PATIENT}, headers=clinician
                    )
                    seen.append((r.status_code, r.json().get("model", {}).get("version")))
                except httpx.HTTPError as exc:  # a dropped connection is a failed request
                    errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in ["2", "1", "2"]:
            time.sleep(1.5)
            reg.set_champion(version)
            reload = httpx.post(f"{server.url}/v1/admin/reload", headers=admin, timeout=60)
            assert reload.status_code == 200, reload.text
            assert reload.json()["current"]["version"] == version
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    assert len(seen) > 50
    assert {status for status, _ in seen} == {200}
    versions = [v for _, v in seen]
    assert set(versions) == {"1", "2"}
    assert versions[-1] == "2"  # both workers followed the last move
