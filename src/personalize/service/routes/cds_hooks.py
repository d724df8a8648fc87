"""CDS Hooks: discovery (`GET /cds-services`), the patient-view service
(`POST /cds-services/{service_id}`), which answers with one card, the feedback endpoint
(`POST /cds-services/{service_id}/feedback`) and the model card the card links to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response

from personalize.service import cds_hooks, fhir_fetch
from personalize.service.audit import FeedbackEntry, FeedbackExists
from personalize.service.cds_hooks import CdsDiscovery, CdsRequest, CdsResponse, Feedback
from personalize.service.deps import (
    CdsCallerDep,
    CurrentModel,
    DatabaseDep,
    DiscoveryCaller,
    MappingDep,
    Scorer,
    SettingsDep,
)
from personalize.service.fhir import FhirError
from personalize.service.recommend import recommend
from personalize.service.schemas import Problem, ValidationProblem

router = APIRouter(tags=["CDS Hooks"])

CALLER_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no valid client JWT or clinician API key"},
    403: {"model": Problem},
    404: {"model": Problem, "description": "unknown service id"},
    429: {"model": Problem, "description": "too many failed credential checks"},
    503: {"model": Problem},
}


def _known_service(service_id: str, configured: str) -> None:
    if service_id != configured:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no CDS service {cds_hooks.echo(service_id)}"
        )


def model_card_url(request: Request, public_url: str | None, service_id: str) -> str:
    """Where a browser opens the model card: under the public URL when one is set."""
    base = (public_url or str(request.base_url)).rstrip("/")
    return f"{base}/cds-services/{service_id}/model-card"


@router.get(
    "/cds-services",
    response_model=CdsDiscovery,
    responses={
        401: {"model": Problem, "description": "a credential was sent and is not valid"},
        503: {"model": Problem, "description": "no model loaded yet"},
    },
    summary="CDS Hooks discovery",
)
def discovery(
    caller: DiscoveryCaller, loaded: CurrentModel, mapping: MappingDep, settings: SettingsDep
) -> CdsDiscovery:
    prefetch = mapping.prefetch(loaded.contract)
    return CdsDiscovery(services=[cds_hooks.service(loaded, settings.cds_service_id, prefetch)])


@router.post(
    "/cds-services/{service_id}",
    response_model=CdsResponse,
    responses={
        **CALLER_ERRORS,
        400: {
            "model": Problem,
            "description": "not a patient-view request, or a fhirServer, access token or "
            "context value that cannot be used to fetch",
        },
        412: {"model": Problem, "description": "required prefetch data missing"},
    },
    summary="CDS Hooks patient-view: one card",
)
async def patient_view(
    request: Request,
    service_id: str,
    body: CdsRequest,
    caller: CdsCallerDep,
    loaded: CurrentModel,
    mapping: MappingDep,
    settings: SettingsDep,
    scorer: Scorer,
) -> CdsResponse:
    _known_service(service_id, settings.cds_service_id)
    patient_id = cds_hooks.read_patient_view(body)
    prefetch = dict(body.prefetch or {})
    templates = mapping.prefetch(loaded.contract)
    missing = cds_hooks.missing_prefetch(body, templates)
    notes: list[str] = []
    why_missing = "send the prefetch named in discovery"
    if missing and body.fhirServer:
        try:
            server = fhir_fetch.requested_server(body.fhirServer)
            token = fhir_fetch.requested_token(body.fhirAuthorization)
            if caller.client is None or not caller.client.allows_fhir_server(body.fhirServer):
                why_missing = "fhirServer is not a FHIR server registered for this client"
            else:
                fetched = await fhir_fetch.fetch(
                    server,
                    token,
                    {k: templates[k] for k in missing},
                    body.context,
                    breaker=request.app.state.fhir_breaker,
                    client_id=caller.client.iss,
                )
                prefetch.update(fetched.prefetch)
                notes += fetched.notes
                why_missing = "; ".join(fetched.notes) or why_missing
        except fhir_fetch.RequestInvalid as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    cds_hooks.check_prefetch(prefetch, patient_id, why_missing)
    try:
        extraction = mapping.extract(loaded.contract, prefetch, datetime.now(UTC).date())
    except FhirError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    extraction.notes[:0] = notes
    recs = await recommend(
        loaded,
        [extraction.validated(loaded.contract)],
        [patient_id],
        channel="cds-hooks",
        principal=caller.principal,
        scorer=scorer,
    )
    url = model_card_url(request, settings.public_url, service_id)
    return CdsResponse(cards=[cds_hooks.card(recs[0], loaded, extraction, url)])


@router.post(
    "/cds-services/{service_id}/feedback",
    status_code=status.HTTP_200_OK,
    responses={
        **CALLER_ERRORS,
        400: {"model": Problem, "description": "the body is not JSON"},
        404: {
            "model": Problem,
            "description": "unknown service id, or a card this service did not give this caller",
        },
        409: {"model": Problem, "description": "feedback with this outcome already recorded"},
        422: {
            "model": ValidationProblem,
            "description": "not coded as the card offers, not a FHIR instant, suggestions "
            "accepted, or a card and outcome twice",
        },
    },
    summary="CDS Hooks feedback: what the clinician did with a card",
)
async def feedback(
    service_id: str,
    body: Feedback,
    caller: CdsCallerDep,
    database: DatabaseDep,
    settings: SettingsDep,
) -> Response:
    """Kept once per card and outcome, for the caller the card was given to only (another
    caller gets the 404 of a card that does not exist), coded values only."""
    _known_service(service_id, settings.cds_service_id)
    key_id = caller.principal.key_id
    ids = {item.card: cds_hooks.audit_id_of(item.card) for item in body.feedback}
    known = await anyio.to_thread.run_sync(
        database.cds_records, [i for i in ids.values() if i is not None], key_id
    )
    unknown = [card for card, audit_id in ids.items() if audit_id not in known]
    if unknown:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no card {cds_hooks.echo(unknown[0])} from this service"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
        )
    entries = [
        FeedbackEntry(
            card=str(ids[item.card]),
            outcome=item.outcome,
            override_reason=cds_hooks.override_reason(item),
            outcome_at=item.outcome_at,
        )
        for item in body.feedback
    ]
    try:
        await anyio.to_thread.run_sync(database.record_feedback, key_id, service_id, entries)
    except FeedbackExists as exc:
        card, outcome = exc.taken[0]
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"feedback {outcome!r} on card {cds_hooks.card_uuid(card)} was already "
            "recorded (once per card and outcome); nothing in this request was kept",
        ) from None
    return Response(status_code=status.HTTP_200_OK)


@router.get(
    "/cds-services/{service_id}/model-card",
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
        404: {"model": Problem},
        503: {"model": Problem},
    },
    summary="The model card a card links to (for the clinician's browser; no patient data)",
)
def model_card(service_id: str, loaded: CurrentModel, settings: SettingsDep) -> HTMLResponse:
    _known_service(service_id, settings.cds_service_id)
    from personalize.report import render_model_card_html

    title = f"Model card: {loaded.name} v{loaded.version}"
    body = render_model_card_html(loaded.card())
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body>{body}</body></html>"
    )
