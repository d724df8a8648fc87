"""Every setting of the service, read from the environment in one place.

`Settings` (pydantic-settings) reads ``PERSONALIZE_<FIELD>`` for each field below, and
``MLFLOW_TRACKING_URI`` when ``PERSONALIZE_TRACKING_URI`` is unset; an empty variable counts
as unset. Everything else receives a `Settings` object; `Settings.from_env` is the entry
point that turns an invalid value into a `SettingsError` naming the variable.
docs/service.md lists them all.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from personalize.service import pseudonyms

ENV_PREFIX = "PERSONALIZE_"
DEFAULT_PIPELINE = "pipelines/stamp.yaml"
DEFAULT_CDS_SERVICE_ID = "personalize-recommendation"
PACKAGE_DIR = Path(__file__).resolve().parent


class SettingsError(Exception):
    """A setting that cannot be used; the message names the variable and the reason."""


def proxy_networks(value: Any) -> tuple[str, ...]:
    """Comma-separated addresses or networks, each checked (uvicorn would take a mistyped
    one as a name that never matches) and written in its normal form."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item == "*":
            raise ValueError("'*' would let every caller choose its address: name the proxies")
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or a network (CIDR, no host bits)"
            ) from None
    return tuple(networks)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        validate_by_name=True,
    )

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
        default=None,
        validation_alias=AliasChoices(f"{ENV_PREFIX}TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default the SQLite store under models/",
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
    max_recommendation_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="largest body of POST /v1/recommendations (one patient); at most "
        "max_body_bytes",
    )
    max_feedback_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="largest body of CDS Hooks feedback (a few items of codes, each with a "
        "comment of at most 2,000 characters); at most max_body_bytes",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="largest request line plus headers, counted as they arrive: 431 and "
        "the connection closed beyond",
    )
    max_headers: int = Field(
        default=100, ge=10, description="most header fields in one request: 431 beyond"
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode, BeforeValidator(proxy_networks)] = Field(
        default=(),
        description="comma-separated addresses or networks (CIDR) of the reverse proxies "
        "whose X-Forwarded-For and X-Forwarded-Proto are believed; empty: none, the "
        "client address is the connection's peer",
    )
    explain: int = Field(default=3, ge=0, le=50, description="top drivers per patient")
    env: Literal["development", "production"] = Field(
        default="development",
        description="production: refuse to start without a pseudonym key outside the database",
    )
    pseudonym_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for patient pseudonyms (at least 32 bytes); default outside "
        "production: generated once into models/pseudonym.key",
    )
    pseudonym_secret_file: Path | None = Field(
        default=None,
        description="a file holding the pseudonym HMAC key, instead of PSEUDONYM_SECRET",
    )
    auth_failures_per_key: int = Field(
        default=10,
        ge=1,
        description="failed key checks per key id from one address in the window before 429",
    )
    auth_failures_per_key_all: int = Field(
        default=100,
        ge=1,
        description="failed key checks per key id from all addresses in the window before 429",
    )
    auth_failures_per_client: int = Field(
        default=30,
        ge=1,
        description="failed checks per client address (of unknown keys, of tokens of no "
        "registered client) and per address and CDS client, in the window, before 429",
    )
    auth_failure_window: float = Field(
        default=60.0, gt=0, description="seconds a failed key check counts against key and client"
    )
    auth_hash_concurrency: int = Field(
        default=2, ge=1, description="key hashes (scrypt) computed at once per process"
    )
    auth_hash_wait: float = Field(
        default=1.0, gt=0, description="seconds a key check waits for a hashing slot before 503"
    )
    cds_keys_cache_seconds: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="how long a CDS client's fetched JWK Set is trusted: a key removed from "
        "it is refused at most this long after its removal",
    )
    cds_keys_refresh_seconds: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="at most one JWK Set fetch per client in this interval when a token "
        "names a key id the cached set lacks (a rotated key is accepted on first use)",
    )
    fhir_mapping: Path = Field(
        default=PACKAGE_DIR / "fhir_mapping.yaml",
        description="FHIR R4 -> feature mapping for CDS Hooks",
    )
    cds_service_id: str = Field(default=DEFAULT_CDS_SERVICE_ID, pattern=r"^[A-Za-z0-9_.-]+$")
    cds_clients: Path | None = Field(
        default=None,
        description="YAML file of the CDS clients (EHRs) trusted to call the CDS Hooks "
        "routes with their own JWTs: iss, jwks_url, fhir_servers; unset: API keys only",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="the service's public base URL, as EHRs call it: the audience of CDS "
        "clients' JWTs and the base of the card's links; required with cds_clients",
    )
    page_dir: Path = Field(
        default=PACKAGE_DIR / "page", description="static files of the clinician page"
    )
    log_level: str = Field(
        default="INFO", description="level of the `personalize` logger under `personalize serve`"
    )

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # personalize.registry imports MLflow (seconds): only when a model URI is given
        from personalize.registry import ModelRef

        ModelRef.parse(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _pseudonym_key(self) -> Settings:
        secret = self.pseudonym_secret.get_secret_value() if self.pseudonym_secret else None
        pseudonyms.explicit_key(secret, self.pseudonym_secret_file, self.env)
        return self

    @model_validator(mode="after")
    def _cds_clients(self) -> Settings:
        if self.cds_clients is not None and self.public_url is None:
            raise ValueError(
                "PERSONALIZE_CDS_CLIENTS needs PERSONALIZE_PUBLIC_URL (the audience of the "
                "clients' JWTs)"
            )
        return self

    def cds_audience(self, service_id: str | None = None) -> str:
        """The `aud` a CDS client's JWT must carry: the discovery endpoint, or a service."""
        base = f"{(self.public_url or '').rstrip('/')}/cds-services"
        return base if service_id is None else f"{base}/{service_id}"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment, then explicit overrides (None: not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False, include_input=False):
                where = str(err["loc"][0]) if err["loc"] else "(settings)"
                if where in cls.model_fields and where not in given:
                    where = f"{ENV_PREFIX}{where.upper()}"  # the variable it came from
                problems.append(f"{where}: {err['msg']}")
            raise SettingsError("invalid service settings: " + "; ".join(problems)) from None

    # ------------------------------------------------------------------ derived values

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        from personalize.registry import default_tracking_uri  # MLflow: see _model_uri

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
        # the pipeline schema loads the learners (LightGBM), the registry MLflow: seconds
        from personalize.config import PipelineError, load_pipeline
        from personalize.registry import ModelRef

        try:
            spec = load_pipeline(self.pipeline)
        except PipelineError as exc:
            raise SettingsError(
                f"no model URI: set PERSONALIZE_MODEL_URI (or --model), or point "
                f"PERSONALIZE_PIPELINE at a pipeline file ({exc})"
            ) from None
        return ModelRef.champion(spec).uri
