"""CDS Hooks: discovery (`GET /cds-services`) and the patient-view service
(`POST /cds-services/{service_id}`), which answers with one card."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, status

from personalize.service import cds_hooks
from personalize.service.cds_hooks import CdsDiscovery, CdsRequest, CdsResponse
from personalize.service.deps import Clinician, CurrentModel, MappingDep, Scorer, SettingsDep
from personalize.service.fhir import FhirError
from personalize.service.recommend import recommend
from personalize.service.schemas import Problem

router = APIRouter(tags=["CDS Hooks"])


@router.get(
    "/cds-services",
    response_model=CdsDiscovery,
    responses={503: {"model": Problem, "description": "no model loaded yet"}},
    summary="CDS Hooks discovery",
)
def discovery(loaded: CurrentModel, mapping: MappingDep, settings: SettingsDep) -> CdsDiscovery:
    prefetch = mapping.prefetch(loaded.contract)
    return CdsDiscovery(services=[cds_hooks.service(loaded, settings.cds_service_id, prefetch)])


@router.post(
    "/cds-services/{service_id}",
    response_model=CdsResponse,
    responses={
        401: {"model": Problem},
        403: {"model": Problem},
        404: {"model": Problem, "description": "unknown service id"},
        400: {"model": Problem, "description": "not a patient-view request"},
        412: {"model": Problem, "description": "required prefetch data missing"},
        503: {"model": Problem},
    },
    summary="CDS Hooks patient-view: one card",
)
async def patient_view(
    service_id: str,
    body: CdsRequest,
    principal: Clinician,
    loaded: CurrentModel,
    mapping: MappingDep,
    settings: SettingsDep,
    scorer: Scorer,
) -> CdsResponse:
    if service_id != settings.cds_service_id:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no CDS service {cds_hooks.echo(service_id)}"
        )
    patient_id, prefetch = cds_hooks.read_patient_view(body)
    try:
        extraction = mapping.extract(loaded.contract, prefetch, datetime.now(UTC).date())
    except FhirError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    recs = await recommend(
        loaded,
        [extraction.validated(loaded.contract)],
        [patient_id],
        channel="cds-hooks",
        principal=principal,
        scorer=scorer,
    )
    return CdsResponse(cards=[cds_hooks.card(recs[0], loaded, extraction)])
