"""The service under test in process: its settings on a trained registry, API keys, and a
STAMP patient every field of which is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personalize.service.auth import create_key
from personalize.service.config import Settings
from support.registry import TrainedRegistry

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


def settings(tmp: Path, trained: TrainedRegistry, **overrides: Any) -> Settings:
    """Settings serving the registry's STAMP champion, with an audit database and model
    cache of their own under `tmp`, no registry polling and quick retries."""
    values: dict[str, Any] = {
        "model_uri": trained.champion(),
        "tracking_uri": trained.uri,
        "database_url": f"sqlite:///{tmp / 'service.db'}",
        "cache_dir": tmp / "cache",
        "poll_seconds": 0,
        "retry_seconds": 0.2,
        "registry_timeout": 20,
    }
    values.update(overrides)
    return Settings(**values)


def key(app: Any, role: str) -> dict[str, str]:
    """Headers with a new API key of `role` for a created app."""
    _, secret = create_key(app.state.database, role)
    return {"Authorization": f"Bearer {secret}"}
