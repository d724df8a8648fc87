"""Real processes on loopback: `personalize serve` on a free port, the `personalize` CLI,
and waiting for a server to answer."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.registry import TrainedRegistry

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(
    url: str, process: subprocess.Popen[Any], output: Callable[[], str], timeout: float = 120
) -> None:
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


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate, then kill if it has not ended within 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`personalize *args` in a subprocess, with `env` added to this environment."""
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

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    tmp: Path,
    trained: TrainedRegistry,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`personalize serve` of the registry's STAMP champion as a subprocess on a free
    loopback port, its audit database and cache under `tmp`; `env` overrides."""
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
                trained.champion(),
                "--tracking-uri",
                trained.uri,
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
        wait_ok(server.url + "/readyz", process, server.output)
        yield server
    finally:
        stop(process)


def new_key(url: str, role: str = "clinician") -> dict[str, str]:
    """Headers with a new key stored in the audit database at `url`."""
    from personalize.service.audit import Database
    from personalize.service.auth import create_key

    db = Database(url)
    try:
        db.create_schema()
        _, full = create_key(db, role)
    finally:
        db.dispose()
    return {"Authorization": f"Bearer {full}"}


def client_from(address: str) -> Any:
    """An httpx client whose connections come from `address` (any 127.x address is
    loopback): a caller at its own address, for the per-address limits."""
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)
