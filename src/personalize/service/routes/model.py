"""The model being served: its card (`GET /v1/model`), its patient fields (`GET /v1/schema`)
and the admin's reload (`POST /v1/admin/reload`)."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import HTMLResponse, PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError

from personalize.registry import RegistryError
from personalize.service.deps import (
    AUTH_ERRORS,
    Admin,
    AnyKey,
    CurrentModel,
    DatabaseDep,
    HolderDep,
)
from personalize.service.holder import RELOAD, ModelUnusable
from personalize.service.schemas import ModelInfo, Problem, ReloadResult, SchemaInfo, outcome_info

log = logging.getLogger("personalize.service")

router = APIRouter(prefix="/v1", tags=["recommendations"])


@router.get(
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


@router.get(
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


@router.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses={
        **AUTH_ERRORS,
        409: {
            "model": Problem,
            "description": "the alias's version cannot be served (e.g. its artifact is not a "
            "personalize model); the model being served stays",
        },
        503: {"model": Problem, "description": "the registry is unreachable"},
    },
    tags=["operations"],
    summary="Check the registry now and swap to the alias's current version, in every worker "
    "and replica within about a second (admin)",
)
def reload(principal: Admin, holder: HolderDep, database: DatabaseDep) -> ReloadResult:
    try:
        result = holder.refresh()
    except RegistryError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    except ModelUnusable as exc:
        log.warning("reload by key=%s refused: %s", principal.key_id, exc)
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
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
