"""HL7 CDS Hooks (2.0): the request and response models, the one `patient-view` service
discovery advertises, the checks a patient-view request must pass, and the card's text.

The EHR sends a FHIR R4 prefetch (the Patient, a Bundle of Observations, optionally a Bundle
of active MedicationRequests); `personalize.service.fhir` turns it into the model's
features. What a registered client leaves out is fetched from its own FHIR server
(`personalize.service.fhir_fetch`); a required prefetch that can be had neither way gets
412 Precondition Failed, as the specification asks, not a guess. The routes are in
`personalize.service.routes.cds_hooks`.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personalize.service import fhir
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
    url: str | None = Field(default=None, description="the model card, for a browser")


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"


class Coding(BaseModel):
    """A FHIR Coding: only its system and code carry meaning here; display is for people."""

    system: str | None = Field(default=None, max_length=200)
    code: str | None = Field(default=None, max_length=64)
    display: str | None = Field(default=None, max_length=200)


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=SUMMARY_MAX)
    indicator: Literal["info", "warning", "critical"]
    detail: str = Field(description="GitHub-flavored Markdown")
    source: CardSource
    links: list[Link] = Field(default_factory=list)
    overrideReasons: list[Coding] = Field(
        default_factory=list, description="the reasons feedback may give for an override"
    )


class CdsResponse(BaseModel):
    cards: list[Card]


# the override reasons every card offers: coded, so feedback never carries free text
OVERRIDE_SYSTEM = "urn:personalize:cds:override-reason"
OVERRIDE_REASONS: dict[str, str] = {
    "patient-preference": "Patient preference",
    "clinical-judgement": "Clinical judgement",
    "contraindicated": "Contraindicated for this patient",
    "already-tried": "Already tried",
    "not-relevant": "Not relevant to this patient",
}
FEEDBACK_MAX = 20  # items per feedback request: one card each, a few cards per view


def override_reasons() -> list[Coding]:
    return [Coding(system=OVERRIDE_SYSTEM, code=c, display=d) for c, d in OVERRIDE_REASONS.items()]


def _override_reason_codes() -> str:
    return f"system {OVERRIDE_SYSTEM}, code one of {', '.join(OVERRIDE_REASONS)}"


# a FHIR instant: date, time to the second (fraction optional) and a timezone, nothing less
_INSTANT = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def parse_instant(text: str) -> datetime:
    """A FHIR instant as a timezone-aware datetime in UTC (digits beyond microseconds
    dropped); ValueError for anything else, a date alone or a time without zone included."""
    match = _INSTANT.fullmatch(text)
    if match is None:
        raise ValueError(
            "must be a FHIR instant: ISO 8601 date and time with seconds and a timezone, "
            "e.g. 2026-11-29T10:00:00Z"
        )
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    try:
        return datetime.fromisoformat(f"{match['base']}.{fraction}{zone}").astimezone(UTC)
    except ValueError:
        raise ValueError("is not a valid date and time (e.g. 2026-11-29T10:00:00Z)") from None


class OverrideReason(BaseModel):
    reason: Coding | None = Field(
        default=None, description="one of the card's overrideReasons (system and code)"
    )
    userComment: str | None = Field(
        default=None, max_length=2000, description="accepted, never stored: it may name the patient"
    )

    @field_validator("reason")
    @classmethod
    def _offered(cls, reason: Coding | None) -> Coding | None:
        if reason is not None and (
            reason.system != OVERRIDE_SYSTEM or reason.code not in OVERRIDE_REASONS
        ):
            raise ValueError(
                f"must be one of the card's overrideReasons: {_override_reason_codes()}"
            )
        return reason


class FeedbackItem(BaseModel):
    card: str = Field(max_length=64, description="the card's uuid")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=FEEDBACK_MAX,
        description="always empty: cards carry no suggestions",
    )
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(max_length=40, description="a FHIR instant")

    @field_validator("acceptedSuggestions")
    @classmethod
    def _no_suggestions(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("must be empty: this service's cards carry no suggestions")
        return value

    @field_validator("outcomeTimestamp")
    @classmethod
    def _instant(cls, value: str) -> str:
        parse_instant(value)
        return value

    @model_validator(mode="after")
    def _reason_only_when_overridden(self) -> FeedbackItem:
        if self.overrideReason is not None and self.outcome != "overridden":
            raise ValueError("overrideReason is only for outcome 'overridden'")
        return self

    @property
    def outcome_at(self) -> datetime:
        return parse_instant(self.outcomeTimestamp)


class Feedback(BaseModel):
    """CDS Hooks 2.0 feedback: what the clinician did with cards this service returned."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=FEEDBACK_MAX)

    @model_validator(mode="after")
    def _once_per_card_and_outcome(self) -> Feedback:
        seen: set[tuple[str, str]] = set()
        for item in self.feedback:
            key = (audit_id_of(item.card) or item.card, item.outcome)
            if key in seen:
                raise ValueError(
                    f"card {echo(item.card)} is given outcome {item.outcome!r} twice: "
                    "feedback is once per card and outcome"
                )
            seen.add(key)
        return self


def card_uuid(audit_id: str) -> str:
    """The card's uuid is its audit record's id, so feedback finds the recommendation."""
    return str(uuid.UUID(hex=audit_id))


def audit_id_of(card: str) -> str | None:
    try:
        return uuid.UUID(card).hex
    except ValueError:
        return None


def override_reason(item: FeedbackItem) -> str | None:
    """The override reason's code: all that is kept (its display and the clinician's
    comment are not)."""
    reason = item.overrideReason.reason if item.overrideReason else None
    return reason.code if reason else None


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
            "A registered CDS client signs each call with its JWT (CDS Hooks 2.0); the "
            "project's own tools may send a clinician API key instead. Prefetch the client "
            "leaves out is fetched from its registered FHIR server with "
            "fhirAuthorization.access_token; 'patient' and 'observations' that can be had "
            "neither way get 412."
        ),
    )


def read_patient_view(body: CdsRequest) -> str:
    """The patient id of a patient-view request; 400 for another hook or no usable id."""
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
    return patient_id


def missing_prefetch(body: CdsRequest, templates: dict[str, str]) -> list[str]:
    """The prefetch keys discovery asks for that the request left out (absent, not null:
    null is the EHR saying there is no data)."""
    sent = body.prefetch or {}
    return [k for k in templates if k not in sent]


def check_prefetch(prefetch: dict[str, Any], patient_id: str, why_missing: str) -> None:
    """412 when a required prefetch could be had neither from the request nor by fetching
    (`why_missing` says why nothing was fetched); 400 when the patient is another one."""
    missing = [
        k
        for k in REQUIRED_PREFETCH
        if k not in prefetch or (k == "patient" and fhir.outcome_issues(prefetch[k]) is not None)
    ]
    if "patient" not in missing and prefetch.get("patient") is None:
        missing.insert(0, "patient")  # null: the EHR has no such patient to give
    if missing:
        raise HTTPException(
            status.HTTP_412_PRECONDITION_FAILED,
            detail=f"required prefetch missing: {', '.join(missing)} ({why_missing})",
        )
    patient = prefetch["patient"]
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="prefetch.patient is not a Patient")
    if patient.get("id") not in (None, patient_id):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="prefetch.patient.id does not match context.patientId",
        )


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
        # the benefit built up from the average: base value, top drivers, the rest, benefit
        parts = rec.benefit_parts
        lines += [
            "**Top drivers**"
            + ("" if parts is None else ": from the average benefit to this patient's"),
            "",
        ]
        if parts is not None:
            lines.append(
                f"- Average benefit (base value, before any of this patient's values): "
                f"{_signed(parts.base_value, binary)}"
            )
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
        if parts is not None:
            lines += [
                f"- Other features, together: {_signed(parts.other_features, binary)}",
                f"- **Benefit for this patient: {_signed(rec.benefit.estimate, binary)}** "
                "(the lines above add up to it, up to rounding)",
            ]
        lines += [
            "",
            "A driver that is *not given* is a feature the record did not provide: its "
            "contribution is how the model handles a missing value, not a value of this "
            "patient.",
            "",
        ]
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


def card(
    rec: Recommendation, loaded: LoadedModel, extraction: Extraction, model_card_url: str
) -> Card:
    treatment, control = loaded.arms
    m = rec.model
    label = f"{SOURCE_LABEL}: {m.name} v{m.version}" + (" (SYNTHETIC data)" if m.synthetic else "")
    indicator: Literal["info", "warning"] = (
        "warning" if m.synthetic or rec.warnings or extraction.notes else "info"
    )
    return Card(
        uuid=card_uuid(rec.audit_id),
        summary=summary(rec, treatment, control),
        indicator=indicator,
        detail=detail(rec, treatment, control, extraction),
        source=CardSource(label=label, url=model_card_url),
        links=[Link(label=f"Model card: {m.name} v{m.version}", url=model_card_url)],
        overrideReasons=override_reasons(),
    )
