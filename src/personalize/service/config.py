"""Every setting of the service, read from the environment in one place.

`Settings.from_env()` is the only reader of ``PERSONALIZE_*`` (and ``MLFLOW_TRACKING_URI``)
variables; everything else receives a `Settings` object. docs/service.md lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_PIPELINE = "pipelines/stamp.yaml"
DEFAULT_CDS_SERVICE_ID = "personalize-recommendation"
PACKAGE_DIR = Path(__file__).resolve().parent

# environment variable -> Settings field
ENV = {
    "PERSONALIZE_MODEL_URI": "model_uri",
    "PERSONALIZE_PIPELINE": "pipeline",
    "PERSONALIZE_TRACKING_URI": "tracking_uri",
    "MLFLOW_TRACKING_URI": "tracking_uri",
    "PERSONALIZE_DATABASE_URL": "database_url",
    "PERSONALIZE_CACHE_DIR": "cache_dir",
    "PERSONALIZE_POLL_SECONDS": "poll_seconds",
    "PERSONALIZE_RETRY_SECONDS": "retry_seconds",
    "PERSONALIZE_REGISTRY_TIMEOUT": "registry_timeout",
    "PERSONALIZE_BATCH_MAX": "batch_max",
    "PERSONALIZE_MAX_BODY_BYTES": "max_body_bytes",
    "PERSONALIZE_EXPLAIN": "explain",
    "PERSONALIZE_PSEUDONYM_SECRET": "pseudonym_secret",
    "PERSONALIZE_FHIR_MAPPING": "fhir_mapping",
    "PERSONALIZE_CDS_SERVICE_ID": "cds_service_id",
    "PERSONALIZE_PAGE_DIR": "page_dir",
}


class SettingsError(Exception):
    """A setting that cannot be used; the message names the variable and the reason."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str | None = Field(
        default=None,
        description="models:/<name>@<alias> or models:/<name>/<version>; "
        "default models:/<pipeline's registry name>@champion",
    )
    pipeline: Path = Field(
        default=Path(DEFAULT_PIPELINE),
        description="pipeline file whose registry.model_name names the default model",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default the SQLite store under models/"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the audit database (API keys, audit log, secrets); "
        "default SQLite at models/service.db",
    )
    cache_dir: Path = Field(
        default=Path("models/cache"), description="local copies of loaded models"
    )
    poll_seconds: float = Field(
        default=30.0, ge=0, description="how often to check whether the alias moved; 0: never"
    )
    retry_seconds: float = Field(
        default=5.0, gt=0, description="retry interval while no model is loaded"
    )
    registry_timeout: float = Field(
        default=10.0,
        gt=0,
        description="at startup, how long to wait for the registry before using the cache",
    )
    batch_max: int = Field(default=1000, ge=1, description="patients per batch request")
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="largest accepted request body"
    )
    explain: int = Field(default=3, ge=0, le=50, description="top drivers per patient")
    pseudonym_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for patient pseudonyms; default: generated once, kept in the "
        "audit database",
    )
    fhir_mapping: Path = Field(
        default=PACKAGE_DIR / "fhir_mapping.yaml",
        description="FHIR R4 -> feature mapping for CDS Hooks",
    )
    cds_service_id: str = Field(default=DEFAULT_CDS_SERVICE_ID, pattern=r"^[A-Za-z0-9_.-]+$")
    page_dir: Path = Field(
        default=PACKAGE_DIR / "page", description="static files of the clinician page"
    )

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from personalize.service.holder import parse_model_uri

        parse_model_uri(value)  # raises ValueError with the reason
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from environment variables (see ENV), then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source: dict[str, str] = {}
        for var, name in ENV.items():
            raw = env.get(var)
            if raw is None or raw == "" or name in values:
                continue
            values[name] = raw
            source[name] = var
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False, include_input=False):
                field = str(err["loc"][0]) if err["loc"] else "(settings)"
                problems.append(f"{source.get(field, field)}: {err['msg']}")
            raise SettingsError("invalid service settings: " + "; ".join(problems)) from None

    # ------------------------------------------------------------------ derived values

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        from personalize.registry import default_tracking_uri

        return default_tracking_uri()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        store = Path("models").resolve()
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'service.db'}"

    def resolved_model_uri(self) -> str:
        """The configured model URI, or models:/<the pipeline's model name>@champion."""
        if self.model_uri:
            return self.model_uri
        from personalize.config import PipelineError, load_pipeline

        try:
            spec = load_pipeline(self.pipeline)
        except PipelineError as exc:
            raise SettingsError(
                f"no model URI: set PERSONALIZE_MODEL_URI (or --model), or point "
                f"PERSONALIZE_PIPELINE at a pipeline file ({exc})"
            ) from None
        return f"models:/{spec.registry.model_name}@champion"
