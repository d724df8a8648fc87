"""Operations without a key: liveness (`/healthz`), readiness (`/readyz`: a model loaded
and the audit database answering) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from personalize.service import metrics
from personalize.service.deps import DatabaseDep, HolderDep
from personalize.service.schemas import Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """On the event loop: liveness must not wait behind work queued in the thread pool."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "no model loaded yet, or the audit database unavailable",
        }
    },
    summary="Readiness: a model is loaded and the audit database answers",
)
def readyz(holder: HolderDep, database: DatabaseDep) -> Any:
    """Every request needs both: without the audit database no key can be checked and no
    recommendation audited. While the database is down it is tried at most once per retry
    interval (a plain function: a slow probe waits in the thread pool, not the event loop)."""
    loaded = holder.current
    availability = database.availability
    answers = availability.due() and database.probe()
    if loaded is None:
        status = holder.status
    elif not answers:
        status = "audit database unavailable"
    else:
        status = holder.status if loaded.source == "cache" else "ready"
    body = Readiness(
        ready=loaded is not None and answers,
        status=status,
        model=loaded.block if loaded else None,
    )
    if not body.ready:
        headers = None if answers else {"Retry-After": availability.retry_after}
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers=headers)
    return body


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
def prometheus() -> Response:
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)
