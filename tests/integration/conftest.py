"""The service in process on the shared trained registry (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from personalize.service.app import create_app
from support.registry import TrainedRegistry
from support.service import settings


@pytest.fixture
def app(tmp_path: Path, trained_registry: TrainedRegistry) -> FastAPI:
    """An app serving the STAMP champion, with its own audit database and model cache."""
    return create_app(settings(tmp_path, trained_registry))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client of `app`, its lifespan running (the model loaded)."""
    with TestClient(app) as c:
        yield c
