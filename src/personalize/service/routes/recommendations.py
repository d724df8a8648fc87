"""`POST /v1/recommendations` (one patient, clinician) and `POST /v1/recommendations/batch`
(several, researcher): the patients checked against the loaded model's contract, then
`recommend`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from personalize.service.deps import (
    AUTH_ERRORS,
    Clinician,
    CurrentModel,
    Researcher,
    Scorer,
    SettingsDep,
)
from personalize.service.recommend import recommend
from personalize.service.schemas import (
    BatchRequest,
    BatchResponse,
    Problem,
    Recommendation,
    RecommendationRequest,
    ValidationProblem,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])

RECOMMEND_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body is not readable (e.g. not UTF-8)"},
    **AUTH_ERRORS,
    413: {"model": Problem, "description": "request body too large"},
    422: {"model": ValidationProblem, "description": "invalid input: each field and why"},
    503: {"model": Problem, "description": "no model loaded yet, or audit log unavailable"},
}


@router.post(
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


@router.post(
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
    refs = body.patient_refs
    for what, count in (("patients", len(body.patients)), ("patient_refs", len(refs or ()))):
        if count > settings.batch_max:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"{count} {what} in one request; the maximum is "
                f"{settings.batch_max} (PERSONALIZE_BATCH_MAX)",
            )
    patients = loaded.contract.validate_batch(body)
    results = await recommend(
        loaded,
        patients,
        refs if refs is not None else [None] * len(patients),
        channel="batch",
        principal=principal,
        scorer=scorer,
    )
    return BatchResponse(count=len(results), model=loaded.block, results=results)
