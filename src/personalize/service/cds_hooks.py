"""HL7 CDS Hooks (2.0): discovery and a `patient-view` service answering with one card.

The EHR sends a FHIR R4 prefetch (the Patient, a Bundle of Observations, optionally a Bundle
of active MedicationRequests); `FhirMapping` turns it into the model's features as
configured in fhir_mapping.yaml (LOINC codes where they exist, a local code system
otherwise). The service never calls the FHIR server itself: a missing required prefetch
gets 412 Precondition Failed, as the specification asks, not a guess.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from personalize.service.auth import Clinician
from personalize.service.config import Settings, SettingsError
from personalize.service.holder import LoadedModel
from personalize.service.recommend import (
    CurrentModel,
    Scorer,
    current_model,
    get_settings,
    recommend,
)
from personalize.service.schemas import PatientInvalid, Problem, Recommendation

REQUIRED_PREFETCH = ("patient", "observations")
SUMMARY_MAX = 139  # the specification: "<140 characters"
NUMERIC_VALUE = ("valueQuantity", "valueInteger", "valueDecimal")
UNUSABLE_STATUS = {"entered-in-error", "cancelled"}
SOURCE_LABEL = "personalize"


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


# ---------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Source:
    kind: str  # patient.birthDate | patient.gender | observation | medications.mme | ...
    codes: tuple[tuple[str, str], ...] = ()
    values: dict[str, str] | None = None


@dataclass
class Extraction:
    """Features found in the prefetch, where each came from, and what could not be used."""

    patient: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class FhirMapping:
    """fhir_mapping.yaml: feature name -> where in a FHIR R4 prefetch it comes from."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.local_system = str(raw.get("local_system") or "urn:personalize:feature")
        self.sources: dict[str, Source] = {}
        for name, spec in (raw.get("features") or {}).items():
            kind = str(spec["from"])
            codes = tuple(_split_code(c) for c in spec.get("codes") or [])
            values = {str(k): str(v) for k, v in (spec.get("values") or {}).items()}
            self.sources[str(name)] = Source(kind, codes, values or None)
        self.opioids = {str(k).lower(): float(v) for k, v in (raw.get("opioids") or {}).items()}

    @classmethod
    def load(cls, path: Path) -> FhirMapping:
        try:
            return cls(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SettingsError(
                f"PERSONALIZE_FHIR_MAPPING: cannot use {path}: {type(exc).__name__}: {exc}"
            ) from None

    def source(self, feature: str) -> Source:
        src = self.sources.get(feature) or Source("observation")
        if src.kind == "observation":
            local = (self.local_system, feature)
            if local not in src.codes:
                src = Source(src.kind, (*src.codes, local), src.values)
        return src

    def prefetch(self, loaded: LoadedModel) -> dict[str, str]:
        """Prefetch templates for the loaded model's features."""
        codes: list[str] = []
        medications = False
        for f in loaded.contract.fields:
            src = self.source(f.name)
            if src.kind == "observation":
                codes += [f"{s}|{c}" for s, c in src.codes]
            medications |= src.kind.startswith("medications.")
        out = {
            "patient": "Patient/{{context.patientId}}",
            "observations": "Observation?subject={{context.patientId}}&code="
            + ",".join(quote(c, safe=":/|.-_") for c in dict.fromkeys(codes))
            + "&_sort=-date",
        }
        if medications:
            out["medications"] = "MedicationRequest?subject={{context.patientId}}&status=active"
        return out

    def extract(self, loaded: LoadedModel, prefetch: dict[str, Any], today: date) -> Extraction:
        result = Extraction()
        patient = prefetch["patient"]
        observations = _resources(prefetch.get("observations"), "Observation")
        meds_bundle = prefetch.get("medications")
        meds = None if meds_bundle is None else _resources(meds_bundle, "MedicationRequest")
        for f in loaded.contract.fields:
            src = self.source(f.name)
            value: Any = None
            origin = ""
            if src.kind == "patient.birthDate":
                value, origin = _age(patient, today, result.notes, f.label)
            elif src.kind == "patient.gender":
                gender = patient.get("gender")
                if gender is not None:
                    value = (src.values or {}).get(str(gender))
                    if value is None:
                        result.notes.append(
                            f"{f.label}: Patient.gender '{gender}' has no mapping; not used"
                        )
                    origin = "Patient.gender"
            elif src.kind == "observation":
                value, origin = _observation(observations, src, f.type == "numeric")
                if value is not None and f.type == "categorical":
                    value = (src.values or {}).get(str(value), value)
            elif src.kind in ("medications.mme", "medications.opioid"):
                value, origin = self._medications(meds, src, f.label, result.notes)
            else:
                result.notes.append(f"{f.label}: unknown mapping source {src.kind!r}; not used")
            if value is not None:
                result.patient[f.name] = value
                result.provenance[f.name] = origin
        return result

    def _medications(
        self, meds: list[dict[str, Any]] | None, src: Source, label: str, notes: list[str]
    ) -> tuple[Any, str]:
        if meds is None:
            notes.append(f"{label}: no medications prefetch sent; not used")
            return None, ""
        total = 0.0
        opioid_count = 0
        for med in meds:
            if med.get("status") not in (None, "active"):
                continue
            name = _medication_name(med)
            factor = self._opioid_factor(name)
            if factor is None:
                continue
            opioid_count += 1
            if src.kind == "medications.opioid":
                continue
            daily, why = _daily_dose(med, fentanyl="fentanyl" in name)
            if daily is None:
                notes.append(f"{label}: cannot compute MME/day for '{name}' ({why}); not used")
                return None, ""
            total += daily * factor
        origin = f"{len(meds)} active MedicationRequest(s), {opioid_count} opioid"
        if src.kind == "medications.opioid":
            flag = "true" if opioid_count else "false"
            return (src.values or {}).get(flag, flag), origin
        return round(total, 2), origin

    def _opioid_factor(self, name: str) -> float | None:
        for ingredient in sorted(self.opioids, key=len, reverse=True):
            if ingredient in name:
                return self.opioids[ingredient]
        return None


def _split_code(text: str) -> tuple[str, str]:
    system, sep, code = str(text).rpartition("|")
    if not sep:
        raise ValueError(f"fhir mapping: code {text!r} is not 'system|code'")
    return system, code


def _obj(value: Any) -> dict[str, Any]:
    """FHIR JSON from outside is untrusted: a dict, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[dict[str, Any]]:
    """The dicts of a FHIR array ([] when it is not an array)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _resources(bundle: Any, kind: str) -> list[dict[str, Any]]:
    if bundle is None:
        return []
    if isinstance(bundle, dict) and bundle.get("resourceType") == kind:
        return [bundle]
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"prefetch: expected a Bundle of {kind}"
        )
    out = []
    for entry in _items(bundle.get("entry")):
        resource = _obj(entry.get("resource"))
        if resource.get("resourceType") == kind:
            out.append(resource)
    return out


def _age(patient: dict[str, Any], today: date, notes: list[str], label: str) -> tuple[Any, str]:
    birth = patient.get("birthDate")
    if not birth:
        return None, ""
    try:
        born = date.fromisoformat(str(birth))
    except ValueError:
        notes.append(f"{label}: Patient.birthDate '{birth}' is not a full date; not used")
        return None, ""
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return float(years), "Patient.birthDate"


def _when(obs: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if obs.get(key):
            return str(obs[key])
    period = _obj(obs.get("effectivePeriod"))
    return str(period.get("end") or period.get("start") or "")


def _observation(observations: list[dict[str, Any]], src: Source, numeric: bool) -> tuple[Any, str]:
    wanted = set(src.codes)
    found = []
    for obs in observations:
        if obs.get("status") in UNUSABLE_STATUS:
            continue
        codings = _items(_obj(obs.get("code")).get("coding"))
        match = next(
            (
                (str(c.get("system")), str(c.get("code")))
                for c in codings
                if (str(c.get("system")), str(c.get("code"))) in wanted
            ),
            None,
        )
        if match is None:
            continue
        value = _observation_value(obs, numeric)
        if value is not None:
            found.append((_when(obs), value, match))
    if not found:
        return None, ""
    when, value, (system, code) = max(found, key=lambda item: item[0])
    return value, f"Observation {system}|{code}" + (f" ({when[:10]})" if when else "")


def _observation_value(obs: dict[str, Any], numeric: bool) -> Any:
    if numeric:
        quantity = obs.get("valueQuantity")
        candidates = [_obj(quantity).get("value"), obs.get("valueInteger"), obs.get("valueDecimal")]
        for value in candidates:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None
    concept = obs.get("valueCodeableConcept")
    if isinstance(concept, dict):
        for coding in _items(concept.get("coding")):
            if isinstance(coding.get("code"), str) and coding["code"]:
                return coding["code"]
        if isinstance(concept.get("text"), str) and concept["text"]:
            return concept["text"]
    if isinstance(obs.get("valueString"), str):
        return obs["valueString"]
    if isinstance(obs.get("valueBoolean"), bool):
        return "true" if obs["valueBoolean"] else "false"
    return None


def _medication_name(med: dict[str, Any]) -> str:
    concept = _obj(med.get("medicationCodeableConcept"))
    parts = [str(concept.get("text") or "")]
    parts += [str(c.get("display") or "") for c in _items(concept.get("coding"))]
    parts.append(str(_obj(med.get("medicationReference")).get("display") or ""))
    return " ".join(p for p in parts if p).lower()


PERIOD_HOURS = {"h": 1.0, "d": 24.0, "wk": 168.0, "min": 1 / 60}


def _daily_dose(med: dict[str, Any], fentanyl: bool) -> tuple[float | None, str]:
    """Scheduled daily dose in mg (transdermal fentanyl: mcg/h), from the first dosage
    instruction; None with the reason when it cannot be computed without guessing."""
    dosages = _items(med.get("dosageInstruction"))
    if not dosages:
        return None, "no dosage instruction"
    dosage = dosages[0]
    rates = _items(dosage.get("doseAndRate"))
    dose = _obj(rates[0].get("doseQuantity")) if rates else {}
    amount = dose.get("value")
    unit = str(dose.get("code") or dose.get("unit") or "").lower().replace(" ", "")
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        return None, "no dose quantity"
    if fentanyl:
        if unit in ("ug/h", "mcg/h", "mcg/hr", "ug/hr"):
            return float(amount), ""
        return None, f"fentanyl dose unit '{unit}' is not mcg/h"
    if unit != "mg":
        return None, f"dose unit '{unit or 'none'}' is not mg"
    repeat = _obj(_obj(dosage.get("timing")).get("repeat"))
    frequency = repeat.get("frequency")
    period = repeat.get("period")
    hours = PERIOD_HOURS.get(str(repeat.get("periodUnit")))
    if not isinstance(frequency, int | float) or not isinstance(period, int | float) or not hours:
        return None, "no dosing frequency"
    if period <= 0:
        return None, "invalid dosing period"
    return float(amount) * float(frequency) * 24.0 / (float(period) * hours), ""


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
        f"{_signed(rec.benefit.upper, binary)})",
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


# ---------------------------------------------------------------------------- routes

router = APIRouter(tags=["CDS Hooks"])


def get_mapping(request: Request) -> FhirMapping:
    mapping: FhirMapping = request.app.state.fhir_mapping
    return mapping


Mapping = Annotated[FhirMapping, Depends(get_mapping)]


def _title(loaded: LoadedModel) -> str:
    t, c = loaded.arms
    return f"{t} or {c}: personalised recommendation"


@router.get(
    "/cds-services",
    response_model=CdsDiscovery,
    responses={503: {"model": Problem, "description": "no model loaded yet"}},
    summary="CDS Hooks discovery",
)
def discovery(
    loaded: Annotated[LoadedModel, Depends(current_model)],
    mapping: Mapping,
    settings: Annotated[Settings, Depends(get_settings)],
) -> CdsDiscovery:
    t, c = loaded.arms
    return CdsDiscovery(
        services=[
            CdsService(
                hook="patient-view",
                id=settings.cds_service_id,
                title=_title(loaded),
                description=(
                    f"Calibrated chance of response to {t} and to {c} for this patient, the "
                    "recommendation with its rationale, and the drivers behind it "
                    f"(model {loaded.name} version {loaded.version}"
                    + (", trained on SYNTHETIC data" if loaded.block.synthetic else "")
                    + ")."
                ),
                prefetch=mapping.prefetch(loaded),
                usageRequirements=(
                    "Send an API key with the clinician role as 'Authorization: Bearer <key>'. "
                    "The 'patient' and 'observations' prefetch are required (412 otherwise); "
                    "the service does not query the FHIR server."
                ),
            )
        ]
    )


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
    mapping: Mapping,
    settings: Annotated[Settings, Depends(get_settings)],
    scorer: Scorer,
) -> CdsResponse:
    if service_id != settings.cds_service_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no CDS service {service_id!r}")
    if body.hook != "patient-view":
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"this service answers the patient-view hook, not {body.hook!r}",
        )
    patient_id = body.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="context.patientId is required")
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
    extraction = mapping.extract(loaded, prefetch, datetime.now(UTC).date())
    values = dict(extraction.patient)
    try:
        validated = loaded.contract.validate(values, ("prefetch",))
    except PatientInvalid as exc:  # record values the contract refuses (e.g. out of range)
        for problem in exc.problems:
            name = str(problem["loc"][1])
            origin = extraction.provenance.pop(name, "the record")
            extraction.notes.append(f"{name} from {origin}: {problem['msg']}; not used")
            values.pop(name, None)
        validated = loaded.contract.validate(values, ("prefetch",))
    recs = await recommend(
        loaded,
        [validated],
        [patient_id],
        channel="cds-hooks",
        principal=principal,
        scorer=scorer,
    )
    return CdsResponse(cards=[card(recs[0], loaded, extraction)])


__all__ = ["FhirMapping", "card", "router", "summary"]
