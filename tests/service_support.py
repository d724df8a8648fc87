"""Shared by the service tests (no tests here): one trained registry per test session, apps
with their own audit database, keys, PostgreSQL databases and real `personalize serve`
processes on loopback."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from personalize import registry
from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import simulate

VENV_BIN = Path(sys.executable).parent
PG = os.environ.get("PERSONALIZE_PG_URL", "postgresql://postgres@127.0.0.1:5432")
STAMP_MODEL = "personalize-stamp"


def small(name: str, learners: list[str]) -> Pipeline:
    spec = load_pipeline(f"pipelines/{name}.yaml")
    return spec.model_copy(
        update={
            "training": spec.training.model_copy(update={"bootstrap": 10, "learners": learners}),
            "gates": spec.gates.model_copy(
                update={"calibration_slope": (-100.0, 100.0), "max_ece": 1.0}
            ),
        }
    )


@dataclass(frozen=True)
class Registry:
    root: Path
    db: Path
    # model name -> registered versions; champion is the first
    versions: dict[str, list[str]]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"

    def champion(self, name: str = STAMP_MODEL) -> str:
        return registry.ModelRef(name, alias=registry.CHAMPION).uri

    def copy(self, into: Path) -> Registry:
        """An independent registry (own aliases) sharing the read-only artifacts."""
        into.mkdir(parents=True, exist_ok=True)
        db = into / "mlflow.db"
        shutil.copy(self.db, db)
        return Registry(self.root, db, self.versions)

    def set_champion(self, version: str, name: str = STAMP_MODEL) -> None:
        MlflowClient(self.uri).set_registered_model_alias(name, registry.CHAMPION, version)


@functools.cache
def trained_registry() -> Registry:
    """Trained once per session: STAMP v1 (champion) and v2, OPTIMUM (another cohort, no
    preference field) and STAMP with a continuous outcome."""
    registry.quiet_mlflow()
    root = Path(tempfile.mkdtemp(prefix="personalize-service-tests-"))
    atexit.register(shutil.rmtree, root, True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    versions: dict[str, list[str]] = {}
    plan = [
        ("stamp", "stamp", 500, 1, ["t", "effect_linear"]),
        ("stamp", "stamp", 400, 2, ["effect_linear"]),
        ("optimum", "optimum", 300, 1, ["effect_linear"]),
        ("stamp-continuous", "stamp", 400, 1, ["effect_linear"]),
    ]
    for pipeline, scenario, n, seed, learners in plan:
        reg = registry.train(small(pipeline, learners), simulate(scenario, n, seed).cohort, uri)
        versions.setdefault(reg.model_name, []).append(reg.version)
    client = MlflowClient(uri)
    for name, vs in versions.items():
        client.set_registered_model_alias(name, registry.CHAMPION, vs[0])
    return Registry(root, root / "mlflow.db", versions)


def settings(tmp: Path, reg: Registry | None = None, **overrides: Any) -> Any:
    from personalize.service.config import Settings

    reg = reg or trained_registry()
    values: dict[str, Any] = {
        "model_uri": reg.champion(),
        "tracking_uri": reg.uri,
        "database_url": f"sqlite:///{tmp / 'service.db'}",
        "cache_dir": tmp / "cache",
        "poll_seconds": 0,
        "retry_seconds": 0.2,
        "registry_timeout": 20,
    }
    values.update(overrides)
    return Settings(**values)


def key(app: Any, role: str) -> dict[str, str]:
    from personalize.service.auth import create_key

    _, secret = create_key(app.state.database, role)
    return {"Authorization": f"Bearer {secret}"}


STAMP_PATIENT: dict[str, Any] = {
    "age": 58,
    "sex": "female",
    "bpi_severity": 6.25,
    "bpi_interference": 5.5,
    "odi": 44,
    "mme": 60,
    "pain_duration_years": 12,
    "phq8": 9,
    "gad7": 7,
    "pcs": 24,
    "ffmq_nonjudging": 9,
    "expectancy": 6,
    "treatment_preference": "MBT",
    "sf12_mcs": 42,
    "sf12_pcs": 33,
    "delivery": "remote",
}


# --------------------------------------------------------------------------- PostgreSQL


def postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("PERSONALIZE_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"no PostgreSQL reachable at {PG}: {exc}")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database, dropped afterwards; yields its SQLAlchemy URL."""
    postgres_or_skip()
    import psycopg

    name = f"personalize_service_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- real servers


def wait_ok(url: str, process: subprocess.Popen[Any], output: Any, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's output if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{output()[-4000:]}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "personalize"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    tmp: Path,
    reg: Registry,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Iterator[Server]:
    """`personalize serve` as a subprocess on a free loopback port."""
    port = free_port()
    run_env = {
        **os.environ,
        "PERSONALIZE_DATABASE_URL": f"sqlite:///{tmp / 'service.db'}",
        "PERSONALIZE_CACHE_DIR": str(tmp / "cache"),
        "PERSONALIZE_POLL_SECONDS": "0",
        "PERSONALIZE_RETRY_SECONDS": "0.5",
        **(env or {}),
    }
    run_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / f"server-{port}.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "personalize"),
                "serve",
                "--model",
                reg.champion(),
                "--tracking-uri",
                reg.uri,
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=run_env,
            cwd=tmp,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, run_env)
    try:
        wait_ok(server.url + ("/readyz" if ready else "/healthz"), process, server.output)
        yield server
    finally:
        server.stop()
