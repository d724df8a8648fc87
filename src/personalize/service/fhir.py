"""FHIR R4 resources -> the model's feature values, as configured in fhir_mapping.yaml.

A feature comes from the Patient resource (birth date, gender), from the most recent usable
Observation with one of its codes (LOINC where one exists, else the local code system
`urn:personalize:feature|<feature>`), or from the active opioid MedicationRequests: whether
there is one, or the total morphine milligram equivalents per day (scheduled daily dose times
the conversion factor of fhir_mapping.yaml's `opioids`). A value that cannot be read without
guessing (a partial birth date, a dose in tablets) is left missing and noted, never guessed.

Resources are read with the `fhir.resources` models (FHIR R4B, the R4 revision whose Patient,
Observation and MedicationRequest are R4's), leniently as real EHR data needs: an element
the model does not know (another version's field) is dropped, an element that breaks its
type (a valueInteger beyond 32 bits) is dropped and noted, and a resource still invalid
after that (no status, no code) is noted as not used. Nothing in a prefetch is a 500.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import yaml
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from personalize.service.config import SettingsError
from personalize.service.contract import Contract, PatientInvalid

UNUSABLE_STATUS = {"entered-in-error", "cancelled"}
UNUSABLE_NUMBER = "not a finite number a float can hold"
MAX_REPAIRS = 20  # elements dropped from one resource before it is given up on

R = TypeVar("R", bound=Resource)


class FhirError(ValueError):
    """Prefetch content that is not the FHIR resource it should be (answered with 400)."""


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

    def validated(self, contract: Contract) -> dict[str, Any]:
        """The patient as the model's contract takes it. A recorded value the contract
        refuses (e.g. out of range) is not used, and the notes say why."""
        values = dict(self.patient)
        try:
            return contract.validate(values, ("prefetch",))
        except PatientInvalid as exc:
            for problem in exc.problems:
                name = str(problem["loc"][1])
                origin = self.provenance.pop(name, "the record")
                self.notes.append(f"{name} from {origin}: {problem['msg']}; not used")
                values.pop(name, None)
        return contract.validate(values, ("prefetch",))


def read_resource(model: type[R], data: Any) -> tuple[R | None, list[str], str]:
    """(resource, dropped elements, why not) of untrusted FHIR JSON: elements the model
    does not know or whose value breaks their type are dropped (and listed); a resource
    still invalid without them is None with the reason (never its values)."""
    if not isinstance(data, dict) or data.get("resourceType") != model.__name__:
        return None, [], f"not a {model.__name__}"
    dropped: list[str] = []
    for _ in range(MAX_REPAIRS):
        try:
            return model.model_validate(data), dropped, ""
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            fixable = [e for e in errors if e["loc"] and "missing" not in str(e["type"])]
            if len(fixable) < len(errors):
                missing = next(e for e in errors if e not in fixable)
                where = ".".join(str(p) for p in missing["loc"]) or "(resource)"
                return None, dropped, f"{where} is required"
            data = copy.deepcopy(data) if not dropped else data
            for error in fixable:
                path = [p for p in error["loc"] if not str(p).startswith("function-")]
                if not _drop(data, path):
                    where = ".".join(str(p) for p in path)
                    return None, dropped, f"{where} cannot be read"
                quiet = error["type"] == "extra_forbidden"
                dropped.append(("" if quiet else "!") + ".".join(str(p) for p in path))
    return None, dropped, "too many unreadable elements"


def _drop(data: Any, path: list[Any]) -> bool:
    """Delete the element at `path` (keys and list indices) from nested JSON."""
    node = data
    for step in path[:-1]:
        inside = (isinstance(node, dict) and step in node) or (
            isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        )
        if not inside:
            return False
        node = node[step]
    last = path[-1] if path else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        del node[last]
        return True
    return False


def broken(dropped: list[str]) -> list[str]:
    """The dropped elements whose value broke their type (not merely unknown ones)."""
    return [d[1:] for d in dropped if d.startswith("!")]


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

    def prefetch(self, contract: Contract) -> dict[str, str]:
        """Prefetch templates for a model's features (what CDS Hooks discovery advertises)."""
        codes: list[str] = []
        medications = False
        for f in contract.fields:
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

    def extract(self, contract: Contract, prefetch: dict[str, Any], today: date) -> Extraction:
        """The model's features found in a prefetch (`patient` a Patient resource, the
        others Bundles; a key that is absent or null means no data), with where each came
        from and what could not be used."""
        result = Extraction()
        patient = _patient(prefetch.get("patient"), result.notes)
        observations = _resources(prefetch.get("observations"), Observation, result.notes)
        meds = (
            None
            if prefetch.get("medications") is None
            else _resources(prefetch["medications"], MedicationRequest, result.notes)
        )
        for f in contract.fields:
            src = self.source(f.name)
            value: Any = None
            origin = ""
            if src.kind == "patient.birthDate":
                value, origin = patient_age(patient, today, result.notes, f.label)
            elif src.kind == "patient.gender":
                gender = patient.gender if patient is not None else None
                if gender is not None:
                    value = (src.values or {}).get(str(gender))
                    if value is None:
                        result.notes.append(
                            f"{f.label}: Patient.gender '{gender}' has no mapping; not used"
                        )
                    origin = "Patient.gender"
            elif src.kind == "observation":
                value, origin = _observation(observations, src, f.type == "numeric")
                if value is UNUSABLE:
                    result.notes.append(f"{f.label}: {origin} value is {UNUSABLE_NUMBER}; not used")
                    value = None
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
        self, meds: list[MedicationRequest] | None, src: Source, label: str, notes: list[str]
    ) -> tuple[Any, str]:
        if meds is None:
            notes.append(f"{label}: no medications prefetch sent; not used")
            return None, ""
        total = 0.0
        opioid_count = 0
        for med in meds:
            if med.status not in (None, "active"):
                continue
            name = _medication_name(med)
            factor = self._opioid_factor(name)
            if factor is None:
                continue
            opioid_count += 1
            if src.kind == "medications.opioid":
                continue
            daily, why = daily_dose(med, fentanyl="fentanyl" in name)
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


def outcome_issues(value: Any) -> str | None:
    """When a prefetch or fetched value is an OperationOutcome (the EHR's "could not"), what
    it says, briefly; None for anything else."""
    if not isinstance(value, dict) or value.get("resourceType") != "OperationOutcome":
        return None
    issues: list[Any] = value["issue"] if isinstance(value.get("issue"), list) else []
    codes = [str(i.get("code")) for i in issues if isinstance(i, dict) and i.get("code")]
    return ", ".join(dict.fromkeys(codes[:5])) or "no issue given"


def _patient(value: Any, notes: list[str]) -> Patient | None:
    if value is None:
        return None
    if (issues := outcome_issues(value)) is not None:
        notes.append(f"patient: the EHR answered with an OperationOutcome ({issues}); no data")
        return None
    patient, dropped, why = read_resource(Patient, value)
    for element in broken(dropped):
        notes.append(f"Patient.{element}: not a valid FHIR value; not used")
    if patient is None:
        raise FhirError(f"prefetch.patient is not a usable FHIR Patient ({why})")
    return patient


def _resources(bundle: Any, model: type[R], notes: list[str]) -> list[R]:
    """The resources of kind `model` in a Bundle (or one bare resource); an
    OperationOutcome is no data, noted; an invalid resource is noted and skipped."""
    kind = model.__name__
    if bundle is None:
        return []
    if (issues := outcome_issues(bundle)) is not None:
        notes.append(f"{kind}: the EHR answered with an OperationOutcome ({issues}); no data")
        return []
    if isinstance(bundle, dict) and bundle.get("resourceType") == kind:
        raw = [bundle]
    elif isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
        entries: list[Any] = bundle["entry"] if isinstance(bundle.get("entry"), list) else []
        raw = [
            e["resource"]
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == kind
        ]
    else:
        raise FhirError(f"prefetch: expected a Bundle of {kind}")
    out: list[R] = []
    for i, data in enumerate(raw):
        resource, dropped, why = read_resource(model, data)
        for element in broken(dropped):
            notes.append(f"{_named(resource, i)}: {element} is not a valid FHIR value; not used")
        if resource is None:
            notes.append(f"{kind} #{i + 1}: not a valid FHIR R4 {kind} ({why}); not used")
        else:
            out.append(resource)
    return out


def _named(resource: Any, index: int) -> str:
    """How a note names a resource: an Observation by its first code, else by position."""
    kind = type(resource).__name__ if resource is not None else "resource"
    codings = getattr(getattr(resource, "code", None), "coding", None) or []
    if codings:
        return f"{kind} {codings[0].system}|{codings[0].code}"
    return f"{kind} #{index + 1}"


def patient_age(
    patient: Patient | None, today: date, notes: list[str], label: str
) -> tuple[Any, str]:
    """Age in whole years on `today` from Patient.birthDate, and where it came from; a
    partial date (year or year-month) is not guessed at: noted in `notes`, not used."""
    birth = patient.birthDate if patient is not None else None
    if birth is None:
        return None, ""
    if not isinstance(birth, date):  # the model keeps a partial date as its text
        notes.append(f"{label}: Patient.birthDate '{birth}' is not a full date; not used")
        return None, ""
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    return float(years), "Patient.birthDate"


def _when(obs: Observation) -> str:
    """When an Observation holds, as ISO text that sorts in time order."""
    period = obs.effectivePeriod
    edges = (period.end, period.start) if period is not None else ()
    for value in (obs.effectiveDateTime, obs.effectiveInstant, obs.issued, *edges):
        if value:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


class _Unusable:
    """A value that is there but cannot be used (a JSON number beyond a float's range)."""


UNUSABLE = _Unusable()


def number(value: Any) -> float | _Unusable | None:
    """A FHIR number as a finite float; None when it is not a number at all, UNUSABLE when
    it is one that a float cannot hold (a FHIR decimal has no size limit, so a 400-digit
    value parses, and `float` of it is infinite or raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    try:
        converted = float(value)
    except OverflowError:
        return UNUSABLE
    return converted if math.isfinite(converted) else UNUSABLE


def _observation(observations: list[Observation], src: Source, numeric: bool) -> tuple[Any, str]:
    """The most recent usable value of the codes `src` names (UNUSABLE when the most
    recent numeric value is a number no float can hold: reported, not passed over)."""
    wanted = set(src.codes)
    found = []
    for obs in observations:
        if obs.status in UNUSABLE_STATUS:
            continue
        match = next(
            (
                (str(c.system), str(c.code))
                for c in obs.code.coding or []
                if (str(c.system), str(c.code)) in wanted
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


def _observation_value(obs: Observation, numeric: bool) -> Any:
    if numeric:
        quantity = obs.valueQuantity.value if obs.valueQuantity is not None else None
        for value in (quantity, obs.valueInteger):
            converted = number(value)
            if converted is not None:
                return converted
        return None
    concept = obs.valueCodeableConcept
    if concept is not None:
        for coding in concept.coding or []:
            if coding.code:
                return str(coding.code)
        if concept.text:
            return str(concept.text)
    if obs.valueString:
        return str(obs.valueString)
    if obs.valueBoolean is not None:
        return "true" if obs.valueBoolean else "false"
    return None


def _medication_name(med: MedicationRequest) -> str:
    concept = med.medicationCodeableConcept
    parts = []
    if concept is not None:
        parts.append(str(concept.text or ""))
        parts += [str(c.display or "") for c in concept.coding or []]
    if med.medicationReference is not None:
        parts.append(str(med.medicationReference.display or ""))
    return " ".join(p for p in parts if p).lower()


PERIOD_HOURS = {"h": 1.0, "d": 24.0, "wk": 168.0, "min": 1 / 60}


def daily_dose(med: MedicationRequest, fentanyl: bool) -> tuple[float | None, str]:
    """Scheduled daily dose in mg (transdermal fentanyl: mcg/h), from the first dosage
    instruction; None with the reason when it cannot be computed without guessing."""
    if not med.dosageInstruction:
        return None, "no dosage instruction"
    dosage = med.dosageInstruction[0]
    rates = dosage.doseAndRate or []
    dose = rates[0].doseQuantity if rates else None
    amount = number(dose.value) if dose is not None else None
    unit = str((dose.code or dose.unit or "") if dose is not None else "").lower().replace(" ", "")
    if amount is None:
        return None, "no dose quantity"
    if isinstance(amount, _Unusable):
        return None, f"dose quantity is {UNUSABLE_NUMBER}"
    if fentanyl:
        if unit in ("ug/h", "mcg/h", "mcg/hr", "ug/hr"):
            return amount, ""
        return None, f"fentanyl dose unit '{unit}' is not mcg/h"
    if unit != "mg":
        return None, f"dose unit '{unit or 'none'}' is not mg"
    repeat = dosage.timing.repeat if dosage.timing is not None else None
    frequency = number(repeat.frequency) if repeat is not None else None
    period = number(repeat.period) if repeat is not None else None
    hours = PERIOD_HOURS.get(str(repeat.periodUnit)) if repeat is not None else None
    if frequency is None or period is None or not hours:
        return None, "no dosing frequency or period"
    if isinstance(frequency, _Unusable) or isinstance(period, _Unusable):
        return None, f"dosing frequency or period is {UNUSABLE_NUMBER}"
    span = period * hours  # a positive period this small rounds to 0.0
    if span <= 0:
        return None, "invalid dosing period"
    daily = amount * frequency * 24.0 / span
    if not math.isfinite(daily):
        return None, f"the daily dose is {UNUSABLE_NUMBER}"
    return daily, ""
