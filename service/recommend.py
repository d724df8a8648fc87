"""The one path from validated patients to responses, shared by every route that recommends
(single, batch, CDS Hooks): build the frame, call `PersonalizeModel.predict` once, audit,
count, convert. No number is computed here; the scorer calls the same `predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import metrics
from service.audit import AuditEntry, Database
from service.auth import Principal
from service.registry import LoadedModel, ModelHolder
from service.schemas import Recommendation, finite, recommendation_from_row
from service.settings import Settings

log = logging.getLogger("personalize.service")

NUMBERS = ("outcome_control", "outcome_treatment", "benefit", "benefit_lower", "benefit_upper")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def current_model(holder: Annotated[ModelHolder, Depends(get_holder)]) -> LoadedModel:
    """The model this request uses from start to end (read once: a swap during the request
    does not affect it)."""
    loaded = holder.current
    if loaded is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded yet: {holder.status}",
            headers={"Retry-After": str(int(holder.settings.retry_seconds) or 1)},
        )
    return loaded


CurrentModel = Annotated[LoadedModel, Depends(current_model)]


def recommend(
    loaded: LoadedModel,
    patients: Sequence[dict[str, Any]],
    refs: Sequence[str | None],
    *,
    channel: str,
    principal: Principal,
    database: Database,
    session: Session,
    explain: int,
) -> list[Recommendation]:
    """Predict, audit (a recommendation that cannot be audited is not given), convert."""
    model = loaded.model
    out = model.predict(loaded.contract.frame(patients), explain=explain)
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()} for row in out.to_dict("records")
    ]
    try:
        for row in rows:
            for name in NUMBERS:
                finite(row[name])
    except ValueError as exc:
        log.error("model %s/%s: %s", loaded.name, loaded.version, exc)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(exc)) from None
    entries = [
        AuditEntry(
            patient_ref=ref,
            recommendation=str(row["recommendation"]),
            benefit=float(row["benefit"]),
            benefit_lower=float(row["benefit_lower"]),
            benefit_upper=float(row["benefit_upper"]),
            outcome_treatment=float(row["outcome_treatment"]),
            outcome_control=float(row["outcome_control"]),
        )
        for row, ref in zip(rows, refs, strict=True)
    ]
    try:
        ids = database.record(
            session,
            channel=channel,
            key_id=principal.key_id,
            model_name=loaded.name,
            model_version=loaded.version,
            model_run_id=loaded.run_id,
            entries=entries,
        )
    except SQLAlchemyError as exc:
        session.rollback()
        log.error("audit log write failed (%s); recommendation withheld", type(exc).__name__)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the audit log is unavailable, so no recommendation is given; retry later",
        ) from None
    recs = [str(row["recommendation"]) for row in rows]
    metrics.count_predictions(recs, channel)
    log.info(
        "recommended channel=%s key=%s model=%s/%s patients=%d recommendations=%s",
        channel,
        principal.key_id,
        loaded.name,
        loaded.version,
        len(rows),
        ",".join(sorted(set(recs))),
    )
    return [
        recommendation_from_row(
            row,
            model=model,
            block=loaded.block,
            missing=loaded.contract.missing(patient),
            audit_id=audit_id,
        )
        for row, patient, audit_id in zip(rows, patients, ids, strict=True)
    ]
