"""CDS Hooks: discovery, patient-view cards from a FHIR R4 prefetch, 412 on missing prefetch."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.patient import Patient
from sqlalchemy import select

from personalize.service.audit import AuditRecord
from personalize.service.cds_hooks import SUMMARY_MAX, summary
from personalize.service.fhir import daily_dose, patient_age, read_resource
from personalize.service.schemas import (
    ArmOutcome,
    Benefit,
    ModelBlock,
    OutcomeInfo,
    Recommendation,
    TrainedOn,
)
from support.service import key

LOINC = "http://loinc.org"
LOCAL = "urn:personalize:feature"


def observation(system: str, code: str, value: Any, when: str = "2026-10-01") -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": when,
    }
    if isinstance(value, str):
        obs["valueCodeableConcept"] = {"coding": [{"code": value}]}
    else:
        obs["valueQuantity"] = {"value": value}
    return obs


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def medication(text: str, mg: float, per_day: int, unit: str = "mg") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat-123"},
        "medicationCodeableConcept": {"text": text},
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": mg, "unit": unit}}],
            }
        ],
    }


def years_ago(n: int) -> str:
    """A birth date exactly n years old today (born on 1 January)."""
    return date(datetime.now(UTC).date().year - n, 1, 1).isoformat()


def hook(prefetch: dict[str, Any] | None, patient_id: str = "pat-123") -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://ehr.example.org/fhir",
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def full_prefetch() -> dict[str, Any]:
    return {
        "patient": {
            "resourceType": "Patient",
            "id": "pat-123",
            "gender": "female",
            "birthDate": years_ago(58),
        },
        "observations": bundle(
            observation(LOINC, "70274-6", 8),  # GAD-7 total
            observation(LOINC, "70274-6", 15, when="2020-01-01"),  # older: ignored
            observation(LOCAL, "phq8", 11),
            observation(LOCAL, "bpi_severity", 6.5),
            observation(LOCAL, "odi", 48),
            observation(LOCAL, "treatment_preference", "CBT"),
            observation(LOCAL, "pcs", 80),  # outside 0-52: reported, not used
        ),
        "medications": bundle(
            medication("oxycodone 10 MG Oral Tablet", 10, 4),  # 40 mg/day x 1.5 = 60 MME
            medication("morphine sulfate 15 MG ER", 15, 2),  # 30 mg/day x 1 = 30 MME
            medication("ibuprofen 400 MG", 400, 3),
        ),
    }


SERVICE = "/cds-services/personalize-recommendation"


@pytest.mark.slow
def test_discovery_lists_patient_view_with_prefetch_templates(client: TestClient) -> None:
    r = client.get("/cds-services")
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == "personalize-recommendation"
    assert "SYNTHETIC" in service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert f"{LOINC}|70274-6" in prefetch["observations"]  # GAD-7 total score
    assert f"{LOCAL}|phq8" in prefetch["observations"]
    assert prefetch["medications"].startswith("MedicationRequest?subject={{context.patientId}}")


@pytest.mark.slow
def test_patient_view_returns_one_card_from_the_prefetch(app: Any, client: TestClient) -> None:
    r = client.post(SERVICE, json=hook(full_prefetch()), headers=key(app, "clinician"))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert len(card["summary"]) < 140 and card["summary"].startswith("[SYNTHETIC]")
    assert card["indicator"] == "warning"  # synthetic model
    assert "SYNTHETIC" in card["source"]["label"] and "personalize-stamp" in card["source"]["label"]
    detail = card["detail"]
    assert "| Chance of response |" in detail and "Benefit, MBT minus CBT: " in detail
    assert "**Top drivers**" in detail and "favours" in detail
    assert "mme from 3 active MedicationRequest(s), 2 opioid" in detail
    assert "gad7 from Observation http://loinc.org|70274-6 (2026-10-01)" in detail
    assert "pcs from Observation" in detail and "less than or equal to 52" in detail
    assert (
        "Not available from the record" in detail
        and "Oswestry" not in detail.split("Not available from the record")[1].split("\n")[0]
    )

    # the same numbers as the JSON API for the same features (one predict path)
    patient = {
        "age": 58,
        "sex": "female",
        "gad7": 8,
        "phq8": 11,
        "bpi_severity": 6.5,
        "odi": 48,
        "treatment_preference": "CBT",
        "mme": 90,
    }
    api = client.post(
        "/v1/recommendations", json={"patient": patient}, headers=key(app, "clinician")
    ).json()
    mbt = api["arms"]["MBT"]["probability"] * 100
    assert f"| {mbt:.1f}% |" in detail
    with app.state.database.session() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.channel == "cds-hooks")).all()
    assert (
        len(rows) == 1 and rows[0].patient_pseudonym and "pat-123" not in rows[0].patient_pseudonym
    )


@pytest.mark.slow
def test_missing_required_prefetch_is_412_not_a_guess(app: Any, client: TestClient) -> None:
    headers = key(app, "clinician")
    assert client.post(SERVICE, json=hook(None), headers=headers).status_code == 412
    for missing in ("patient", "observations"):
        prefetch = full_prefetch()
        del prefetch[missing]
        r = client.post(SERVICE, json=hook(prefetch), headers=headers)
        assert r.status_code == 412 and missing in r.json()["detail"]
    prefetch = full_prefetch()
    prefetch["patient"] = None
    assert client.post(SERVICE, json=hook(prefetch), headers=headers).status_code == 412
    # medications are optional: without them the dose is reported as not available
    prefetch = full_prefetch()
    del prefetch["medications"]
    r = client.post(SERVICE, json=hook(prefetch), headers=headers)
    assert r.status_code == 200 and "no medications prefetch sent" in r.json()["cards"][0]["detail"]


@pytest.mark.slow
def test_patient_view_refuses_what_it_cannot_answer(app: Any, client: TestClient) -> None:
    headers = key(app, "clinician")
    assert client.post(SERVICE, json=hook(full_prefetch())).status_code == 401
    assert (
        client.post("/cds-services/other", json=hook(full_prefetch()), headers=headers).status_code
        == 404
    )
    wrong_hook = {**hook(full_prefetch()), "hook": "order-select"}
    assert client.post(SERVICE, json=wrong_hook, headers=headers).status_code == 400
    other = hook(full_prefetch(), patient_id="someone-else")
    assert client.post(SERVICE, json=other, headers=headers).status_code == 400
    assert client.post(SERVICE, json={"hook": "patient-view"}, headers=headers).status_code == 422


def patient(birth: str) -> Patient:
    read, _, why = read_resource(Patient, {"resourceType": "Patient", "birthDate": birth})
    assert read is not None, why
    return read


def dose(med: dict[str, Any], fentanyl: bool = False) -> tuple[float | None, str]:
    read, _, why = read_resource(MedicationRequest, med)
    assert read is not None, why
    return daily_dose(read, fentanyl=fentanyl)


def test_age_needs_a_full_birth_date() -> None:
    notes: list[str] = []
    today = date(2026, 6, 15)
    assert patient_age(patient("1960-06-15"), today, notes, "Age")[0] == 66
    assert patient_age(patient("1960-06-16"), today, notes, "Age")[0] == 65
    assert patient_age(patient("1960"), today, notes, "Age")[0] is None
    assert notes and "not a full date" in notes[0]


def test_daily_dose_is_computed_only_when_it_is_unambiguous() -> None:
    assert dose(medication("oxycodone", 5, 6)) == (30.0, "")
    q6h = medication("oxycodone", 5, 1)
    q6h["dosageInstruction"][0]["timing"]["repeat"].update(period=6, periodUnit="h")
    assert dose(q6h)[0] == 20.0
    tablets = medication("oxycodone", 1, 2, unit="tablet")
    assert dose(tablets)[0] is None
    patch = medication("fentanyl 25 mcg/hr patch", 25, 1, unit="mcg/h")
    assert dose(patch, fentanyl=True) == (25.0, "")


def test_card_summary_stays_under_140_characters() -> None:
    long = "a-very-long-treatment-label-" * 3
    arm = ArmOutcome(role="treatment", probability=0.4, expected_improvement=None)
    rec = Recommendation(
        audit_id="x",
        recommendation=long,
        recommendation_role="treatment",
        rationale="r",
        arms={long: arm, "usual": arm.model_copy(update={"role": "control"})},
        benefit=Benefit(
            estimate=0.1,
            lower=0.05,
            upper=0.2,
            level=0.9,
            covers="c",
            definition="d",
            scale="probability",
        ),
        outcome=OutcomeInfo(kind="binary", definition="d"),
        drivers=[],
        warnings=[],
        missing_features=[],
        model=ModelBlock(
            name="m",
            version="1",
            run_id=None,
            learner=None,
            source="registry",
            synthetic=True,
            synthetic_notice="S",
            trained_on=TrainedOn(
                pipeline="p", description=None, cohort_sha256=None, n_patients=None, synthetic=True
            ),
        ),
    )
    text = summary(rec, long, "usual")
    assert len(text) <= SUMMARY_MAX < 140 and text.startswith("[SYNTHETIC] Consider")
