"""PostgreSQL on 127.0.0.1:5432 (PERSONALIZE_PG_URL): a fresh database per test. The tests
skip without a server unless PERSONALIZE_REQUIRE_POSTGRES is set (in CI it is)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

PG = os.environ.get("PERSONALIZE_PG_URL", "postgresql://postgres@127.0.0.1:5432")


def postgres_or_skip() -> None:
    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("PERSONALIZE_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"no PostgreSQL reachable at {PG}: {exc}")


@dataclass(frozen=True)
class PostgresDatabase:
    name: str

    @property
    def url(self) -> str:
        """The libpq URL (what MLflow's tracking server takes)."""
        return f"{PG}/{self.name}"

    @property
    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL with the psycopg 3 driver (what the service takes)."""
        return f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{self.name}"


@contextlib.contextmanager
def postgres_database(prefix: str = "personalize_test") -> Iterator[PostgresDatabase]:
    """A fresh database, dropped afterwards (skips without PostgreSQL, see above)."""
    postgres_or_skip()
    database = PostgresDatabase(f"{prefix}_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database.name}"')
    try:
        yield database
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
