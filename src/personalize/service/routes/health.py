"""Operations without a key: liveness (`/healthz`), readiness (`/readyz`) and Prometheus
metrics (`/metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from personalize.service import metrics
from personalize.service.deps import HolderDep
from personalize.service.schemas import Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "no model loaded yet"}},
    summary="Readiness: a model is loaded",
)
def readyz(holder: HolderDep) -> Any:
    loaded = holder.current
    body = Readiness(
        ready=loaded is not None,
        status=holder.status if loaded is None or loaded.source == "cache" else "ready",
        model=loaded.block if loaded else None,
    )
    if loaded is None:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
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
