"""The FastAPI application: `create_app` wires the settings, the audit database, the model
holder and the scoring thread into app state, adds the middleware and error handlers,
includes the routes (`personalize.service.routes`) and serves an OpenAPI document that shows
the loaded model's patient contract.

`create_app()` (no arguments) reads the settings from the environment, which is how
`personalize serve` and uvicorn's ``--factory`` start it. The lifespan creates the audit
tables, starts the model holder and waits for its first load attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personalize import __version__
from personalize.service import fhir_fetch, metrics, routes
from personalize.service.audit import Database
from personalize.service.cds_clients import TrustedClients
from personalize.service.config import Settings, SettingsError
from personalize.service.contract import PatientInvalid
from personalize.service.fhir import FhirMapping
from personalize.service.headers import SecurityHeadersMiddleware
from personalize.service.holder import RELOAD, ModelHolder
from personalize.service.key_sets import KeyPolicy
from personalize.service.openapi import patch_openapi
from personalize.service.problems import bounded, request_problems
from personalize.service.pseudonyms import pseudonym_key
from personalize.service.recommend import scoring_thread
from personalize.service.routes import docs, page

DESCRIPTION = """\
Per-patient, calibrated and explained recommendations between the two arms of a
randomized trial, from the model registered as `champion`.

Every response carries a `model` block (name, version, run id, trained-on cohort and a
`synthetic` flag). Keys travel as `Authorization: Bearer <key>` (`personalize keys create`).
The `Patient` schema below is the loaded model's own contract.
"""


# ---------------------------------------------------------------------------- middleware


class BodyLimitMiddleware:
    """413 for request bodies above the limit, declared (Content-Length) or streamed. Routes
    whose bodies are small by nature (one patient, CDS feedback) get a lower limit of their
    own, so that reading and parsing a body there costs what such a request needs.

    `routes`: path template (``{name}`` matches one segment) -> (bytes, the variable that
    sets them); a route's limit never exceeds `max_bytes`."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, routes: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.default = (max_bytes, "PERSONALIZE_MAX_BODY_BYTES")
        self.routes = [
            (template.split("/"), limit if limit[0] < max_bytes else self.default)
            for template, limit in (routes or {}).items()
        ]

    def limit(self, path: str) -> tuple[int, str]:
        """The body limit of `path` and the variable that sets it."""
        parts = path.split("/")
        for template, limit in self.routes:
            if len(template) == len(parts) and all(
                t == p or t.startswith("{") for t, p in zip(template, parts, strict=True)
            ):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, variable = self.limit(scope.get("path", ""))
        message = f"request body larger than {max_bytes} bytes ({variable})"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > max_bytes
            except ValueError:
                await _send_problem(send, 400, "invalid Content-Length header")
                return
            if too_large:
                await _send_problem(send, 413, message)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)
            return event

        await self.app(scope, limited, send)


async def _send_problem(send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code)
    body = response.body
    await send({"type": "http.response.start", "status": code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------- the app


def trusted_cds_clients(settings: Settings) -> TrustedClients | None:
    """The CDS clients file, read once at start (a bad file stops the start, naming it)."""
    if settings.cds_clients is None:
        return None
    policy = KeyPolicy(
        cache_seconds=settings.cds_keys_cache_seconds,
        refresh_seconds=settings.cds_keys_refresh_seconds,
    )
    try:
        return TrustedClients.load(settings.cds_clients, policy)
    except ValueError as exc:
        raise SettingsError(f"PERSONALIZE_CDS_CLIENTS: {exc}") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    database = Database(
        settings.resolved_database_url(),
        pseudonym_key(settings),
        retry_seconds=settings.retry_seconds,
    )
    holder = ModelHolder(
        settings, on_swap=metrics.on_swap, reload_signal=lambda: database.signal(RELOAD)
    )
    scorer = scoring_thread(settings, database)
    mapping = FhirMapping.load(settings.fhir_mapping)
    cds_clients = trusted_cds_clients(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(database.create_schema)
        holder.start()
        await anyio.to_thread.run_sync(holder.wait_initial, settings.registry_timeout + 120)
        try:
            yield
        finally:
            if cds_clients is not None:
                cds_clients.close()
            holder.stop()
            scorer.close()
            database.dispose()
            metrics.process_exit()

    app = FastAPI(
        title="personalize",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # routes.docs serves Swagger UI from the package, not a CDN
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.holder = holder
    app.state.scorer = scorer
    app.state.fhir_mapping = mapping
    app.state.cds_clients = cds_clients
    app.state.fhir_breaker = fhir_fetch.CircuitBreaker()

    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        routes={
            "/v1/recommendations": (
                settings.max_recommendation_body_bytes,
                "PERSONALIZE_MAX_RECOMMENDATION_BODY_BYTES",
            ),
            "/cds-services/{service_id}/feedback": (
                settings.max_feedback_body_bytes,
                "PERSONALIZE_MAX_FEEDBACK_BODY_BYTES",
            ),
        },
    )
    app.add_middleware(metrics.MetricsMiddleware, routes=lambda: app.routes)
    # outermost: on every answer, a 413 and a 500 too
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.env == "production")

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": request_problems(exc.errors())}, status_code=422)

    @app.exception_handler(PatientInvalid)
    async def _invalid_patient(request: Request, exc: PatientInvalid) -> JSONResponse:
        return JSONResponse({"detail": bounded(exc.problems, exc.omitted)}, status_code=422)

    for router in routes.ROUTERS:
        app.include_router(router)
    page.mount(app, settings.page_dir)
    docs.mount(app)

    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        """The document of the loaded model: its patient contract, its arms, the batch
        limit and the CDS service id (rebuilt when another version is loaded)."""
        loaded = holder.current
        key = (loaded.name, loaded.version) if loaded else None
        if cached.get("key") == key and "schema" in cached:
            schema: dict[str, Any] = cached["schema"]
            return schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        patch_openapi(
            schema,
            loaded.contract if loaded else None,
            loaded.arms if loaded else None,
            settings.batch_max,
        )
        cds = schema.get("paths", {}).get("/cds-services/{service_id}", {}).get("post", {})
        for param in cds.get("parameters", []):
            if param.get("name") == "service_id":
                param["schema"] = {"type": "string", "enum": [settings.cds_service_id]}
        cached.update(key=key, schema=schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
