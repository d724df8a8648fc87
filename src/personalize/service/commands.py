"""What `personalize serve` and `personalize keys ...` do (the Typer wrappers live in
personalize.cli and import this module only when such a command runs)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from copy import deepcopy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from personalize.service.audit import Database
from personalize.service.auth import ROLE_NAMES, create_key, list_keys, revoke_key
from personalize.service.config import Settings, SettingsError
from personalize.service.request_limits import (
    DEFAULT_HEADER_LIMITS,
    HeaderLimits,
    LimitedHttpToolsProtocol,
)


class CommandError(Exception):
    """A problem to report to the user (no traceback)."""


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus the service's own lines at `level` (PERSONALIZE_LOG_LEVEL;
    no patient data in them)."""
    from uvicorn.config import LOGGING_CONFIG

    config = deepcopy(LOGGING_CONFIG)
    config["loggers"]["personalize"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve(
    *,
    model: str | None,
    pipeline: Path | None,
    host: str,
    port: int,
    workers: int,
    tracking_uri: str | None,
    echo: Any = print,
) -> None:
    """Resolve the settings once, hand them to every worker through the environment, run
    uvicorn. Several workers get a fresh Prometheus multiprocess directory. Each connection
    is held to the header limits (`request_limits`); X-Forwarded-* headers count only from
    the proxies PERSONALIZE_TRUSTED_PROXIES names (uvicorn would believe loopback's)."""
    if workers < 1:
        raise CommandError("--workers: need at least 1")
    settings = _settings(model_uri=model, pipeline=pipeline, tracking_uri=tracking_uri)
    try:
        model_uri = settings.resolved_model_uri()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    env = {
        "PERSONALIZE_MODEL_URI": model_uri,
        "PERSONALIZE_TRACKING_URI": settings.resolved_tracking_uri(),
        "PERSONALIZE_DATABASE_URL": settings.resolved_database_url(),
        "PERSONALIZE_CACHE_DIR": str(Path(settings.cache_dir).resolve()),
    }
    os.environ.update(env)
    own_metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="personalize-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    echo(
        f"serving {model_uri} (registry {env['PERSONALIZE_TRACKING_URI']}) on "
        f"http://{host}:{port} with {workers} worker(s); audit database "
        f"{_redact(env['PERSONALIZE_DATABASE_URL'])}"
    )
    try:
        config = TcpConfig(
            "personalize.service.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=log_config(settings.log_level),
            http=LimitedHttpToolsProtocol,
            header_limits=HeaderLimits.from_settings(settings),
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=list(settings.trusted_proxies),
        )
        server = uvicorn.Server(config)
        if workers > 1:  # what uvicorn.run does, with the socket above
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
        if workers == 1 and not server.started:
            raise CommandError("the server did not start (see the log above)")
    except KeyboardInterrupt:
        pass
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


class TcpConfig(uvicorn.Config):
    """uvicorn's config, with a listening socket that suits several workers, and the header
    limits `LimitedHttpToolsProtocol` reads from it (`header_limits`; the config is what
    uvicorn hands each connection's protocol, in every worker).

    uvicorn binds one ``socket.socket(family)`` and hands a copy to every worker. Two
    problems follow. Its ``proto`` is 0, so asyncio does not set TCP_NODELAY on the
    connections it accepts, and a response body written after its headers can wait for the
    client's delayed ACK (about 40 ms on Linux; Kludex/uvicorn#3149). And all workers wait
    on one accept queue: whichever wakes first accepts every pending connection, so a
    client or proxy that opens its keep-alive connections together lands them all on one
    worker while the others idle. Here the socket is TCP, and each worker opens its own
    with SO_REUSEPORT (where the platform has it), so the kernel spreads connections over
    the workers."""

    def __init__(
        self, app: Any, *, header_limits: HeaderLimits = DEFAULT_HEADER_LIMITS, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_limits = header_limits

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        address = sock.getsockname()
        if not hasattr(socket, "SO_REUSEPORT"):
            family, kind = sock.family, sock.type
            return socket.socket(family, kind, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.close()
        return WorkerListener.bound(sock.family, address)


class WorkerListener(socket.socket):
    """A TCP listening socket bound with SO_REUSEPORT that each worker process opens for
    itself: pickled to a worker (uvicorn spawns them), it is re-created there, not shared."""

    @classmethod
    def bound(cls, family: int, address: Any) -> WorkerListener:
        sock = cls(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.set_inheritable(True)
        return sock

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerListener.bound, (self.family, self.getsockname()))


def _redact(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def _database(database_url: str | None) -> Database:
    settings = _settings(database_url=database_url)
    db = Database(settings.resolved_database_url())
    db.create_schema()
    return db


def keys_create(role: str, note: str | None, database_url: str | None) -> tuple[str, str]:
    if role not in ROLE_NAMES:
        raise CommandError(f"--role: choose one of {', '.join(ROLE_NAMES)}")
    db = _database(database_url)
    try:
        return create_key(db, role, note)
    finally:
        db.dispose()


def keys_revoke(key_id: str, database_url: str | None) -> None:
    db = _database(database_url)
    try:
        if not revoke_key(db, key_id):
            raise CommandError(f"no key with id {key_id!r}")
    finally:
        db.dispose()


def _utc(value: datetime) -> str:
    """ISO 8601 in UTC (SQLite returns naive datetimes; they were written in UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def keys_list(database_url: str | None) -> list[dict[str, Any]]:
    db = _database(database_url)
    try:
        return [
            {
                "key_id": k.key_id,
                "role": k.role,
                "note": k.note,
                "created_at": _utc(k.created_at),
                "revoked_at": _utc(k.revoked_at) if k.revoked_at else None,
            }
            for k in list_keys(db)
        ]
    finally:
        db.dispose()


__all__ = ["CommandError", "keys_create", "keys_list", "keys_revoke", "serve"]
