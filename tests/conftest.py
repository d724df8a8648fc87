"""Fixtures for every test folder. Pytest puts this folder on sys.path (the conftest of a
folder without __init__.py), so the `support` package imports as `support`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.postgres import PostgresDatabase, postgres_database
from support.registry import TrainedRegistry, train_registry


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """The registry the service, scoring and page tests share (support/registry.py says
    what it holds), trained on first use. Read-only: a test that moves an alias works on
    `trained_registry.copy(tmp_path / "registry")`."""
    return train_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def postgres_db() -> Iterator[PostgresDatabase]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with postgres_database() as database:
        yield database
