"""HL7 CDS Hooks (2.0): the request and response models, the one `patient-view` service
discovery advertises, the checks a patient-view request must pass, and the card's text.

The EHR sends a FHIR R4 prefetch (the Patient, a Bundle of Observations, optionally a Bundle
of active MedicationRequests); `personalize.service.fhir` turns it into the model's
features. The service never calls the FHIR server itself: a missing required prefetch gets
412 Precondition Failed, as the specification asks, not a guess. The routes are in
`personalize.service.routes.cds_hooks`.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from personalize.service.fhir import Extraction
from personalize.service.holder import LoadedModel
from personalize.service.schemas import PATIENT_REF_MAX, Recommendation

HOOK = "patient-view"
REQUIRED_PREFETCH = ("patient", "observations")
SUMMARY_MAX = 139  # the specification: "<140 characters"
SOURCE_LABEL = "personalize"
ECHO_MAX = 64  # characters of a caller's value repeated in an error message


def echo(value: object) -> str:
    """A caller's value as an error message may quote it: its repr, clipped."""
    text = repr(value)
    return text if len(text) <= ECHO_MAX else text[: ECHO_MAX - 1] + "…"


# ---------------------------------------------------------------------------- models


class CdsService(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None


class CdsDiscovery(BaseModel):
    services: list[CdsService]


class CdsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None


class CardSource(BaseModel):
    label: str
    url: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=SUMMARY_MAX)
    indicator: Literal["info", "warning", "critical"]
    detail: str = Field(description="GitHub-flavored Markdown")
    source: CardSource


class CdsResponse(BaseModel):
    cards: list[Card]


# ---------------------------------------------------------------------------- the service


def service(loaded: LoadedModel, service_id: str, prefetch: dict[str, str]) -> CdsService:
    """The patient-view service as discovery describes it for the loaded model."""
    t, c = loaded.arms
    return CdsService(
        hook=HOOK,
        id=service_id,
        title=f"{t} or {c}: personalised recommendation",
        description=(
            f"Calibrated chance of response to {t} and to {c} for this patient, the "
            "recommendation with its rationale, and the drivers behind it "
            f"(model {loaded.name} version {loaded.version}"
            + (", trained on SYNTHETIC data" if loaded.block.synthetic else "")
            + ")."
        ),
        prefetch=prefetch,
        usageRequirements=(
            "Send an API key with the clinician role as 'Authorization: Bearer <key>'. "
            "The 'patient' and 'observations' prefetch are required (412 otherwise); "
            "the service does not query the FHIR server."
        ),
    )


def read_patient_view(body: CdsRequest) -> tuple[str, dict[str, Any]]:
    """(patient id, prefetch) of a patient-view request; 400 for another hook or a request
    that contradicts itself, 412 when a required prefetch is missing."""
    if body.hook != HOOK:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"this service answers the patient-view hook, not {echo(body.hook)}",
        )
    patient_id = body.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="context.patientId is required")
    if len(patient_id) > PATIENT_REF_MAX:  # the limit of every patient reference
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"context.patientId is longer than {PATIENT_REF_MAX} characters",
        )
    prefetch = body.prefetch or {}
    missing = [k for k in REQUIRED_PREFETCH if prefetch.get(k) is None]
    if missing:
        raise HTTPException(
            status.HTTP_412_PRECONDITION_FAILED,
            detail=f"required prefetch missing: {', '.join(missing)} (this service does not "
            "query the FHIR server; send the prefetch named in discovery)",
        )
    patient = prefetch["patient"]
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="prefetch.patient is not a Patient")
    if patient.get("id") not in (None, patient_id):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="prefetch.patient.id does not match context.patientId",
        )
    return patient_id, prefetch


# ---------------------------------------------------------------------------- cards


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _signed(value: float, binary: bool) -> str:
    return f"{value * 100:+.1f} pp" if binary else f"{value:+.2f}"


def _outcome(rec: Recommendation, arm: str) -> float:
    a = rec.arms[arm]
    value = a.probability if a.probability is not None else a.expected_improvement
    return float(value if value is not None else math.nan)


def summary(rec: Recommendation, treatment: str, control: str) -> str:
    binary = rec.outcome.kind == "binary"
    t, c = _outcome(rec, treatment), _outcome(rec, control)
    show = _pct if binary else (lambda v: f"{v:.1f} pts")
    what = "response" if binary else "improvement"
    prefix = "[SYNTHETIC] " if rec.model.synthetic else ""
    if rec.recommendation_role == "either":
        text = (
            f"{treatment} vs {control}: no reliable difference ({what} {show(t)} vs "
            f"{show(c)}); follow patient preference"
        )
    else:
        better, worse = (
            (treatment, control) if rec.recommendation_role == "treatment" else (control, treatment)
        )
        text = (
            f"Consider {better}: {what} {show(_outcome(rec, better))} vs "
            f"{show(_outcome(rec, worse))} with {worse}"
        )
    text = prefix + text
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def detail(rec: Recommendation, treatment: str, control: str, extraction: Extraction) -> str:
    binary = rec.outcome.kind == "binary"
    m = rec.model
    lines: list[str] = []
    if m.synthetic:
        lines += [f"**⚠ {m.synthetic_notice}.**", ""]
    lines += [f"**Recommendation: {rec.recommendation}** — {rec.rationale}", ""]
    row = "Chance of response" if binary else "Expected improvement (points)"
    fmt = (lambda v: f"{v * 100:.1f}%") if binary else (lambda v: f"{v:.2f}")
    lines += [
        f"| Outcome: {rec.outcome.definition} | {treatment} | {control} |",
        "|---|---|---|",
        f"| {row} | {fmt(_outcome(rec, treatment))} | {fmt(_outcome(rec, control))} |",
        "",
        f"Benefit, {treatment} minus {control}: {_signed(rec.benefit.estimate, binary)} "
        f"({rec.benefit.level:.0%} interval {_signed(rec.benefit.lower, binary)} to "
        f"{_signed(rec.benefit.upper, binary)}, for {rec.benefit.covers})",
        "",
    ]
    if rec.drivers:
        lines += ["**Top drivers**", ""]
        for d in rec.drivers:
            value = (
                "not given"
                if d.value is None
                else f"{d.value:g}"
                if isinstance(d.value, float)
                else str(d.value)
            )
            lines.append(
                f"- {d.label} = {value}: {d.direction} ({_signed(d.contribution, binary)})"
            )
        lines.append("")
    if rec.warnings:
        lines += ["**Warnings**", ""] + [f"- {w}" for w in rec.warnings] + [""]
    if rec.missing_features:
        names = ", ".join(f.label for f in rec.missing_features)
        lines += [f"**Not available from the record** (treated as missing): {names}", ""]
    if extraction.notes:
        lines += ["**Data not used**", ""] + [f"- {n}" for n in extraction.notes] + [""]
    if extraction.provenance:
        used = "; ".join(f"{k} from {v}" for k, v in extraction.provenance.items())
        lines += [f"Data used: {used}.", ""]
    sha = m.trained_on.cohort_sha256
    lines.append(
        f"Model {m.name} version {m.version} ({m.learner or 'learner n/a'}), trained on "
        f"{m.trained_on.pipeline}"
        + (f", cohort SHA-256 {sha[:12]}…" if sha else "")
        + (" (served from the local cache)" if m.source == "cache" else "")
        + f". Audit id {rec.audit_id}."
    )
    return "\n".join(lines)


def card(rec: Recommendation, loaded: LoadedModel, extraction: Extraction) -> Card:
    treatment, control = loaded.arms
    m = rec.model
    label = f"{SOURCE_LABEL}: {m.name} v{m.version}" + (" (SYNTHETIC data)" if m.synthetic else "")
    indicator: Literal["info", "warning"] = (
        "warning" if m.synthetic or rec.warnings or extraction.notes else "info"
    )
    return Card(
        uuid=str(uuid.uuid4()),
        summary=summary(rec, treatment, control),
        indicator=indicator,
        detail=detail(rec, treatment, control, extraction),
        source=CardSource(label=label),
    )
