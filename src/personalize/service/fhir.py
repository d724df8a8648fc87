"""FHIR R4 resources -> the model's feature values, as configured in fhir_mapping.yaml.

A feature comes from the Patient resource (birth date, gender), from the most recent usable
Observation with one of its codes (LOINC where one exists, else the local code system
`urn:personalize:feature|<feature>`), or from the active opioid MedicationRequests: whether
there is one, or the total morphine milligram equivalents per day (scheduled daily dose times
the conversion factor of fhir_mapping.yaml's `opioids`). A value that cannot be read without
guessing (a partial birth date, a dose in tablets) is left missing and noted, never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from personalize.service.config import SettingsError
from personalize.service.schemas import Contract, PatientInvalid

UNUSABLE_STATUS = {"entered-in-error", "cancelled"}
UNUSABLE_NUMBER = "not a finite number a float can hold"


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
        others Bundles), with where each came from and what could not be used."""
        result = Extraction()
        patient = prefetch["patient"]
        observations = _resources(prefetch.get("observations"), "Observation")
        meds_bundle = prefetch.get("medications")
        meds = None if meds_bundle is None else _resources(meds_bundle, "MedicationRequest")
        for f in contract.fields:
            src = self.source(f.name)
            value: Any = None
            origin = ""
            if src.kind == "patient.birthDate":
                value, origin = patient_age(patient, today, result.notes, f.label)
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
        raise FhirError(f"prefetch: expected a Bundle of {kind}")
    out = []
    for entry in _items(bundle.get("entry")):
        resource = _obj(entry.get("resource"))
        if resource.get("resourceType") == kind:
            out.append(resource)
    return out


def patient_age(
    patient: dict[str, Any], today: date, notes: list[str], label: str
) -> tuple[Any, str]:
    """Age in whole years on `today` from Patient.birthDate, and where it came from; a
    partial date (year or year-month) is not guessed at: noted in `notes`, not used."""
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


class _Unusable:
    """A value that is there but cannot be used (a JSON number beyond a float's range)."""


UNUSABLE = _Unusable()


def number(value: Any) -> float | _Unusable | None:
    """A FHIR JSON number as a finite float; None when it is not a number at all, UNUSABLE
    when it is one that a float cannot hold (JSON integers have no size limit, so a
    400-digit valueInteger parses, and `float` of it raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        converted = float(value)
    except OverflowError:
        return UNUSABLE
    return converted if math.isfinite(converted) else UNUSABLE


def _observation(observations: list[dict[str, Any]], src: Source, numeric: bool) -> tuple[Any, str]:
    """The most recent usable value of the codes `src` names (UNUSABLE when the most
    recent numeric value is a number no float can hold: reported, not passed over)."""
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
            converted = number(value)
            if converted is not None:
                return converted
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


def daily_dose(med: dict[str, Any], fentanyl: bool) -> tuple[float | None, str]:
    """Scheduled daily dose in mg (transdermal fentanyl: mcg/h), from the first dosage
    instruction; None with the reason when it cannot be computed without guessing."""
    dosages = _items(med.get("dosageInstruction"))
    if not dosages:
        return None, "no dosage instruction"
    dosage = dosages[0]
    rates = _items(dosage.get("doseAndRate"))
    dose = _obj(rates[0].get("doseQuantity")) if rates else {}
    amount = number(dose.get("value"))
    unit = str(dose.get("code") or dose.get("unit") or "").lower().replace(" ", "")
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
    repeat = _obj(_obj(dosage.get("timing")).get("repeat"))
    frequency = number(repeat.get("frequency"))
    period = number(repeat.get("period"))
    hours = PERIOD_HOURS.get(str(repeat.get("periodUnit")))
    if frequency is None or period is None or not hours:
        return None, "no dosing frequency"
    if isinstance(frequency, _Unusable) or isinstance(period, _Unusable):
        return None, f"dosing frequency or period is {UNUSABLE_NUMBER}"
    span = period * hours  # a positive period this small rounds to 0.0
    if span <= 0:
        return None, "invalid dosing period"
    daily = amount * frequency * 24.0 / span
    if not math.isfinite(daily):
        return None, f"the daily dose is {UNUSABLE_NUMBER}"
    return daily, ""
