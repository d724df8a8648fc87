"""The one path from validated patients to responses, shared by every route that recommends
(single, batch, CDS Hooks): score (one `PersonalizeModel.predict_columns` call, shared with
concurrent requests by `personalize.service.batching`), audit, count, convert. No number is computed
here; `predict` and the batch scorer compute the same arrays.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, status
from sqlalchemy.exc import SQLAlchemyError

from personalize.service import metrics
from personalize.service.audit import AuditEntry, AuditRequest, Database
from personalize.service.auth import Principal
from personalize.service.batching import Batcher
from personalize.service.config import Settings
from personalize.service.holder import LoadedModel
from personalize.service.schemas import Recommendation, finite, recommendation_from_row

log = logging.getLogger("personalize.service")

NUMBERS = ("outcome_control", "outcome_treatment", "benefit", "benefit_lower", "benefit_upper")

Row = dict[str, Any]


@dataclass(frozen=True)
class Ask:
    """One request's patients and who asks, through which channel: what the scoring thread
    answers and audits."""

    patients: Sequence[dict[str, Any]]
    refs: Sequence[str | None]
    channel: str
    key_id: str


def score(loaded: LoadedModel, patients: Sequence[dict[str, Any]], explain: int) -> list[Row]:
    """Each patient's answer from one `predict_columns` call (`predict_arrays` without a
    frame to parse), as plain values: the numbers, recommendation, rationale, top drivers
    and warnings."""
    model = loaded.model
    contract = loaded.contract
    pred = model.predict_columns(
        contract.columns(patients),
        explain,
        contract.preferences(patients, model.pipeline.cohort.preference),
    )
    rows: list[Row] = [
        {name: float(getattr(pred, name)[i]) for name in NUMBERS}
        | {
            "recommendation": str(pred.recommendation[i]),
            "rationale": str(pred.rationale[i]),
            "better_bet": pred.better_bet[i],
            "better_bet_probability": (
                None
                if np.isnan(pred.better_bet_probability[i])
                else float(pred.better_bet_probability[i])
            ),
            "drivers": drivers,
            "warnings": warnings,
            "base_value": None if pred.driver_base is None else float(pred.driver_base[i]),
            "other_features": None if pred.driver_rest is None else float(pred.driver_rest[i]),
        }
        for i, (drivers, warnings) in enumerate(
            zip(model.driver_dicts(pred), pred.warnings, strict=True)
        )
    ]
    try:
        for row in rows:
            for name in NUMBERS:
                finite(row[name])
    except ValueError as exc:
        log.error("model %s/%s: %s", loaded.name, loaded.version, exc)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(exc)) from None
    return rows


def answer(
    loaded: LoadedModel, asks: Sequence[Ask], *, explain: int, database: Database
) -> list[list[Row]]:
    """Every ask's rows, scored in one call and audited in one transaction (a
    recommendation that cannot be audited is not given); each row carries its audit id.
    The scoring thread's work (`personalize.service.batching`)."""
    rows = score(loaded, [p for ask in asks for p in ask.patients], explain)
    out: list[list[Row]] = []
    start = 0
    for ask in asks:
        out.append(rows[start : start + len(ask.patients)])
        start += len(ask.patients)
    requests = [
        AuditRequest(
            channel=ask.channel,
            key_id=ask.key_id,
            entries=[
                AuditEntry(
                    patient_ref=ref,
                    recommendation=str(row["recommendation"]),
                    benefit=float(row["benefit"]),
                    benefit_lower=float(row["benefit_lower"]),
                    benefit_upper=float(row["benefit_upper"]),
                    outcome_treatment=float(row["outcome_treatment"]),
                    outcome_control=float(row["outcome_control"]),
                )
                for row, ref in zip(ask_rows, ask.refs, strict=True)
            ],
        )
        for ask, ask_rows in zip(asks, out, strict=True)
    ]
    try:
        ids = database.record(
            model_name=loaded.name,
            model_version=loaded.version,
            model_run_id=loaded.run_id,
            requests=requests,
        )
    except SQLAlchemyError:  # logged once per outage by database.availability
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the audit log is unavailable, so no recommendation is given; retry later",
            headers={"Retry-After": database.availability.retry_after},
        ) from None
    return [
        [row | {"audit_id": audit_id} for row, audit_id in zip(ask_rows, ask_ids, strict=True)]
        for ask_rows, ask_ids in zip(out, ids, strict=True)
    ]


ScoringThread = Batcher[Ask, list[Row]]


def scoring_thread(settings: Settings, database: Database) -> ScoringThread:
    return Batcher(
        functools.partial(answer, explain=settings.explain, database=database),
        size=lambda ask: len(ask.patients),
        max_patients=settings.batch_max,
    )


async def recommend(
    loaded: LoadedModel,
    patients: Sequence[dict[str, Any]],
    refs: Sequence[str | None],
    *,
    channel: str,
    principal: Principal,
    scorer: ScoringThread,
) -> list[Recommendation]:
    """Score and audit (in the scoring thread, batched with concurrent requests; the event
    loop serves others meanwhile), count, convert."""
    rows = await scorer.submit(loaded, Ask(patients, refs, channel, principal.key_id))
    recs = [str(row["recommendation"]) for row in rows]
    metrics.count_predictions(recs, channel)
    if log.isEnabledFor(logging.INFO):
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
            model=loaded.model,
            block=loaded.block,
            missing=loaded.contract.missing(patient),
            audit_id=row["audit_id"],
        )
        for row, patient in zip(rows, patients, strict=True)
    ]
