"""The FastAPI application.

Thin routes: authentication, the audit session and the current model come in as
dependencies; the patient is validated against the loaded model's contract
(`schemas.Contract`); every recommendation goes through `recommend`, which calls
`PersonalizeModel.predict` once. `create_app()` (no arguments) reads the settings from
the environment, which is how `personalize serve` and uvicorn's ``--factory`` start it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personalize import __version__
from personalize.service import cds_hooks, metrics
from personalize.service.audit import Database, get_database
from personalize.service.auth import Admin, AnyKey, Clinician, Researcher
from personalize.service.config import Settings
from personalize.service.holder import ModelHolder, RegistryError
from personalize.service.recommend import (
    CurrentModel,
    Scorer,
    get_holder,
    get_settings,
    recommend,
    scoring_thread,
)
from personalize.service.schemas import (
    BatchRequest,
    BatchResponse,
    ModelInfo,
    PatientInvalid,
    Problem,
    Readiness,
    Recommendation,
    RecommendationRequest,
    ReloadResult,
    SchemaInfo,
    ValidationProblem,
    outcome_info,
    patch_openapi,
    problems,
)

log = logging.getLogger("personalize.service")
RELOAD = "model_reload"  # the signal a reload raises for the other workers and replicas

DESCRIPTION = """\
Per-patient, calibrated and explained recommendations between the two arms of a
randomized trial, from the model registered as `champion`.

Every response carries a `model` block (name, version, run id, trained-on cohort and a
`synthetic` flag). Keys travel as `Authorization: Bearer <key>` (`personalize keys create`).
The `Patient` schema below is the loaded model's own contract.
"""

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no key, or an invalid or revoked key"},
    403: {"model": Problem, "description": "the key's role does not allow this route"},
}
RECOMMEND_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body is not readable (e.g. not UTF-8)"},
    **AUTH_ERRORS,
    413: {"model": Problem, "description": "request body too large"},
    422: {"model": ValidationProblem, "description": "invalid input: each field and why"},
    503: {"model": Problem, "description": "no model loaded yet, or audit log unavailable"},
}


# ---------------------------------------------------------------------------- middleware


class BodyLimitMiddleware:
    """413 for request bodies above the limit, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _send_problem(send, 400, "invalid Content-Length header")
                return
            if too_large:
                await _send_problem(send, 413, self._message())
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes (PERSONALIZE_MAX_BODY_BYTES)"


async def _send_problem(send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code)
    body = response.body
    await send({"type": "http.response.start", "status": code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------- routes

api = APIRouter(prefix="/v1", tags=["recommendations"])
ops = APIRouter(tags=["operations"])

SettingsDep = Annotated[Settings, Depends(get_settings)]


@api.post(
    "/recommendations",
    response_model=Recommendation,
    responses=RECOMMEND_ERRORS,
    summary="One patient's recommendation",
)
async def recommendation(
    body: RecommendationRequest,
    principal: Clinician,
    loaded: CurrentModel,
    scorer: Scorer,
) -> Recommendation:
    patient = loaded.contract.validate(body.patient, ("body", "patient"))
    recs = await recommend(
        loaded,
        [patient],
        [body.patient_ref],
        channel="single",
        principal=principal,
        scorer=scorer,
    )
    return recs[0]


@api.post(
    "/recommendations/batch",
    response_model=BatchResponse,
    responses=RECOMMEND_ERRORS,
    summary="Recommendations for several patients (researcher or admin)",
)
async def batch(
    body: BatchRequest,
    principal: Researcher,
    loaded: CurrentModel,
    settings: SettingsDep,
    scorer: Scorer,
) -> BatchResponse:
    if len(body.patients) > settings.batch_max:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(body.patients)} patients in one request; the maximum is "
            f"{settings.batch_max} (PERSONALIZE_BATCH_MAX)",
        )
    refs = body.patient_refs
    found: list[dict[str, Any]] = []
    if refs is not None and len(refs) != len(body.patients):
        found.append(
            {
                "loc": ["body", "patient_refs"],
                "field": "patient_refs",
                "msg": f"{len(refs)} references for {len(body.patients)} patients; give one "
                "per patient (null where there is none) or leave it out",
                "type": "length_mismatch",
            }
        )
    patients = []
    for i, raw in enumerate(body.patients):
        try:
            patients.append(loaded.contract.validate(raw, ("body", "patients", i)))
        except PatientInvalid as exc:
            found += exc.problems
    if found:
        raise PatientInvalid(found)
    results = await recommend(
        loaded,
        patients,
        refs if refs is not None else [None] * len(patients),
        channel="batch",
        principal=principal,
        scorer=scorer,
    )
    return BatchResponse(count=len(results), model=loaded.block, results=results)


@api.get(
    "/model",
    response_model=ModelInfo,
    responses={
        **AUTH_ERRORS,
        200: {
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            }
        },
        503: {"model": Problem, "description": "no model loaded yet"},
    },
    summary="The model card of the model being served",
)
def model_card(
    principal: AnyKey,
    loaded: CurrentModel,
    format: Annotated[
        Literal["json", "markdown", "html"],
        Query(description="json (default), markdown, or html (a fragment for a page)"),
    ] = "json",
) -> Any:
    card = loaded.card()
    if format == "markdown":
        from personalize.report import render_model_card

        return PlainTextResponse(render_model_card(card), media_type="text/markdown")
    if format == "html":
        from personalize.report import render_model_card_html

        return HTMLResponse(render_model_card_html(card))
    return ModelInfo(
        name=loaded.name,
        version=loaded.version,
        run_id=loaded.run_id,
        source=loaded.source,
        model_uri=loaded.model_uri,
        loaded_at=loaded.loaded_at,
        synthetic=loaded.block.synthetic,
        card=card,
    )


@api.get(
    "/schema",
    response_model=SchemaInfo,
    responses={**AUTH_ERRORS, 503: {"model": Problem, "description": "no model loaded yet"}},
    summary="The patient fields this model takes (for forms such as the clinician page)",
)
def schema(principal: AnyKey, loaded: CurrentModel) -> SchemaInfo:
    t, c = loaded.arms
    return SchemaInfo(
        model=loaded.block,
        treatment=t,
        control=c,
        outcome=outcome_info(loaded.model),
        fields=loaded.contract.fields,
    )


@api.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses={
        **AUTH_ERRORS,
        503: {"model": Problem, "description": "the registry is unreachable"},
    },
    tags=["operations"],
    summary="Check the registry now and swap to the alias's current version, in every worker "
    "and replica within about a second (admin)",
)
def reload(
    principal: Admin,
    holder: Annotated[ModelHolder, Depends(get_holder)],
    database: Annotated[Database, Depends(get_database)],
) -> ReloadResult:
    try:
        result = holder.refresh()
    except RegistryError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    try:  # the other workers and replicas follow within a second or so
        database.raise_signal(RELOAD)
    except SQLAlchemyError as exc:
        reason = type(exc).__name__
        log.warning("could not signal the other workers (%s); they follow when they poll", reason)
    log.info(
        "reload by key=%s: %s version %s (changed=%s)",
        principal.key_id,
        result.current.name,
        result.current.version,
        result.changed,
    )
    return ReloadResult(
        changed=result.changed,
        previous=result.previous.block if result.previous else None,
        current=result.current.block,
    )


@ops.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "no model loaded yet"}},
    summary="Readiness: a model is loaded",
)
def readyz(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Any:
    loaded = holder.current
    body = Readiness(
        ready=loaded is not None,
        status=holder.status if loaded is None or loaded.source == "cache" else "ready",
        model=loaded.block if loaded else None,
    )
    if loaded is None:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body


@ops.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
def prometheus() -> Response:
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)


PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>personalize</title></head>
<body><main><h1>personalize</h1>
<p>The clinician page is not installed in this build. The API is documented at
<a href="/docs">/docs</a> (OpenAPI: <a href="/openapi.json">/openapi.json</a>).</p>
</main></body></html>
"""


def page_routes(app: FastAPI, page_dir: Path) -> None:
    """`/` serves page_dir/index.html (the clinician page, issue 7) and `/page/...` its
    local assets; until the page exists `/` says so."""
    if page_dir.is_dir():
        app.mount("/page", StaticFiles(directory=page_dir), name="page")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = page_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(PLACEHOLDER_PAGE)


# ---------------------------------------------------------------------------- the app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    secret = settings.pseudonym_secret.get_secret_value() if settings.pseudonym_secret else None
    database = Database(settings.resolved_database_url(), secret)
    holder = ModelHolder(
        settings, on_swap=metrics.on_swap, reload_signal=lambda: database.signal(RELOAD)
    )
    scorer = scoring_thread(settings, database)
    mapping = cds_hooks.FhirMapping.load(settings.fhir_mapping)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(database.create_schema)
        holder.start()
        await anyio.to_thread.run_sync(holder.wait_initial, settings.registry_timeout + 120)
        try:
            yield
        finally:
            holder.stop()
            scorer.close()
            database.dispose()
            metrics.process_exit()

    app = FastAPI(
        title="personalize",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.holder = holder
    app.state.scorer = scorer
    app.state.fhir_mapping = mapping

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.MetricsMiddleware, routes=lambda: app.routes)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": problems(exc.errors(), ())}, status_code=422)

    @app.exception_handler(PatientInvalid)
    async def _invalid_patient(request: Request, exc: PatientInvalid) -> JSONResponse:
        return JSONResponse({"detail": exc.problems}, status_code=422)

    app.include_router(api)
    app.include_router(cds_hooks.router)
    app.include_router(ops)
    page_routes(app, settings.page_dir)

    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
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
