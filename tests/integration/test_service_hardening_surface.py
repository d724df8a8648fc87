"""The service's HTTP surface against hostile or careless input: numbers no float can hold
in a CDS prefetch, bodies built to make large 422s, security headers on every answer, the
API documentation without a CDN, length limits on patient references, no training ranges
in the open OpenAPI document, and a reload to an artifact that is not a model. Real
uvicorn where the behaviour is on the wire (headers, the 413, the size of a 422)."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import mlflow
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest

from personalize import registry
from personalize.service.app import create_app
from personalize.service.audit import Database
from personalize.service.auth import create_key
from personalize.service.fhir import UNUSABLE, broken, daily_dose, number, read_resource
from personalize.service.problems import MAX_PROBLEMS
from personalize.service.routes.docs import DOCS_UI_DIR
from personalize.service.schemas import PATIENT_REF_MAX
from support.registry import STAMP_MODEL, TrainedRegistry
from support.servers import Server, serve
from support.service import STAMP_PATIENT, key, settings

HUGE = 10**400  # a JSON integer: parses, but float() of it raises OverflowError
SERVICE = "/cds-services/personalize-recommendation"
LOCAL = "urn:personalize:feature"


# --------------------------------------------------------------------------- FHIR numbers


def medication(amount: Any, frequency: Any = 2, period: Any = 1) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat-1"},
        "medicationCodeableConcept": {"text": "oxycodone 10 MG Oral Tablet"},
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": frequency, "period": period, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": amount, "unit": "mg"}}],
            }
        ],
    }


def test_fhir_numbers_beyond_a_float_are_unusable_not_an_overflow() -> None:
    assert number(HUGE) is UNUSABLE and number(-HUGE) is UNUSABLE
    assert number(float("inf")) is UNUSABLE
    assert number(12) == 12.0 and number(True) is None and number("12") is None
    for med in (medication(HUGE), medication(10, period=HUGE)):
        dose, why = daily_dose(read(med), fentanyl=False)
        assert dose is None and "not a finite number" in why
    # a frequency is a FHIR positiveInt (32 bits): beyond it the element is dropped, noted
    resource, dropped, _ = read_resource(MedicationRequest, medication(10, frequency=HUGE))
    assert resource is not None and broken(dropped) == [
        "dosageInstruction.0.timing.repeat.frequency"
    ]
    assert daily_dose(resource, fentanyl=False) == (None, "no dosing frequency or period")
    dose, why = daily_dose(read(medication(1e300, frequency=4, period=1e-300)), fentanyl=False)
    assert dose is None and "daily dose" in why
    per_minute = medication(10, period=5e-324)
    per_minute["dosageInstruction"][0]["timing"]["repeat"]["periodUnit"] = "min"
    dose, why = daily_dose(read(per_minute), fentanyl=False)
    assert dose is None and "period" in why  # rounds to a zero span, not a ZeroDivisionError
    assert daily_dose(read(medication(10, frequency=4)), fentanyl=False) == (40.0, "")


def read(med: dict[str, Any]) -> MedicationRequest:
    resource, _, why = read_resource(MedicationRequest, med)
    assert resource is not None, why
    return resource


def observation(code: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "effectiveDateTime": "2026-10-01",
        **value,
    }


def hook(prefetch: dict[str, Any], patient_id: str = "pat-1") -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        "prefetch": prefetch,
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}


@pytest.mark.slow
def test_cds_numbers_too_large_for_a_float_are_reported_on_the_card(
    app: Any, client: TestClient
) -> None:
    older = {**observation("odi", valueInteger=40), "effectiveDateTime": "2020-01-01"}
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "pat-1", "gender": "female"},
        "observations": bundle(
            observation("phq8", valueInteger=HUGE),
            observation("gad7", valueQuantity={"value": HUGE}),
            observation("pcs", valueQuantity={"value": -HUGE}),
            observation("odi", valueQuantity={"value": HUGE}),
            older,  # the most recent value is unusable: not replaced by an older one
            observation("bpi_severity", valueQuantity={"value": 6.5}),
        ),
        "medications": bundle(medication(HUGE)),
    }
    r = client.post(SERVICE, json=hook(prefetch), headers=key(app, "clinician"))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    detail = card["detail"]
    unused = detail.split("**Data not used**")[1]
    for name in ("GAD-7", "catastrophizing", "Oswestry"):
        line = next(x for x in unused.splitlines() if name.lower() in x.lower())
        assert "not a finite number" in line and "not used" in line
    # a valueInteger is a 32-bit FHIR integer: beyond it the element is dropped, noted
    line = next(x for x in unused.splitlines() if f"{LOCAL}|phq8" in x)
    assert "valueInteger is not a valid FHIR value; not used" in line
    assert "cannot compute MME/day" in unused and "dose quantity" in unused
    assert "bpi_severity from Observation" in detail  # the usable value is used
    assert "odi from" not in detail and card["indicator"] == "warning"

    for med in (medication(10, frequency=HUGE), medication(10, period=HUGE)):
        again = hook({**prefetch, "medications": bundle(med)})
        r = client.post(SERVICE, json=again, headers=key(app, "clinician"))
        assert r.status_code == 200 and "frequency or period" in r.json()["cards"][0]["detail"]


# --------------------------------------------------------------------------- length limits


@pytest.mark.slow
def test_patient_references_have_one_length_limit_everywhere(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    app = create_app(settings(tmp_path, trained_registry, batch_max=3))
    with TestClient(app) as client:
        researcher = key(app, "researcher")
        too_long = "x" * (PATIENT_REF_MAX + 1)
        ok = "x" * PATIENT_REF_MAX
        batch = {"patients": [STAMP_PATIENT, STAMP_PATIENT], "patient_refs": [ok, too_long]}
        r = client.post("/v1/recommendations/batch", json=batch, headers=researcher)
        assert r.status_code == 422, r.text
        (problem,) = r.json()["detail"]
        assert problem["field"] == "patient_refs.1" and "256" in problem["msg"]
        empty = {"patients": [STAMP_PATIENT], "patient_refs": [""]}
        r = client.post("/v1/recommendations/batch", json=empty, headers=researcher)
        assert r.status_code == 422

        many_refs = {"patients": [STAMP_PATIENT], "patient_refs": ["a"] * 4}
        r = client.post("/v1/recommendations/batch", json=many_refs, headers=researcher)
        assert r.status_code == 413 and "4 patient_refs" in r.json()["detail"]

        single = {"patient": STAMP_PATIENT, "patient_ref": too_long}
        assert (
            client.post("/v1/recommendations", json=single, headers=researcher).status_code == 422
        )

        prefetch = {
            "patient": {"resourceType": "Patient", "gender": "female"},
            "observations": bundle(),
        }
        r = client.post(SERVICE, json=hook(prefetch, too_long), headers=researcher)
        assert r.status_code == 400 and "longer than 256" in r.json()["detail"]
        assert client.post(SERVICE, json=hook(prefetch, ok), headers=researcher).status_code == 200
        # an error quotes a caller's value only clipped
        r = client.post(f"/cds-services/{'s' * 5000}", json=hook(prefetch), headers=researcher)
        assert r.status_code == 404 and len(r.json()["detail"]) < 200
        r = client.post(SERVICE, json={**hook(prefetch), "hook": "h" * 100_000}, headers=researcher)
        assert r.status_code == 400 and len(r.json()["detail"]) < 200

        doc = client.get("/openapi.json").json()
        refs = doc["components"]["schemas"]["BatchRequest"]["properties"]["patient_refs"]
        item = refs["anyOf"][0]["items"]["anyOf"][0]
        assert (item["maxLength"], refs["maxItems"]) == (PATIENT_REF_MAX, 3)


# --------------------------------------------------------------------------- OpenAPI


@pytest.mark.slow
def test_the_open_openapi_document_does_not_publish_the_training_ranges(
    app: Any, client: TestClient
) -> None:
    fields = client.get("/v1/schema", headers=key(app, "clinician")).json()["fields"]
    observed = [f for f in fields if f.get("observed_min") is not None]
    assert observed  # the key holder's schema keeps them (the page shows them)
    patient = client.get("/openapi.json").json()["components"]["schemas"]["Patient"]
    assert "training" not in json.dumps(patient)
    for f in observed:
        prop = json.dumps(patient["properties"][f["name"]])
        assert f"{f['observed_min']:g} to {f['observed_max']:g}" not in prop
    # declared ranges stay: they are enforced at request time
    assert patient["properties"]["age"]["anyOf"][0]["minimum"] == 21


# --------------------------------------------------------------------------- reload


def register_not_a_model(reg: TrainedRegistry, artifacts: Path) -> str:
    """A new version of the STAMP model whose artifact is a dict, not a PersonalizeModel."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(reg.uri)
    try:
        experiment = mlflow.create_experiment("not-a-model", artifact_location=str(artifacts))
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment):
            path = Path(tmp) / registry.MODEL_FILE
            joblib.dump({"weights": [1, 2, 3]}, path)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=registry.PersonalizePyfunc(),
                artifacts={"model": str(path)},
            )
        version = mlflow.register_model(info.model_uri, STAMP_MODEL).version
    finally:
        mlflow.set_tracking_uri(previous)
    return str(version)


@pytest.mark.slow
def test_a_reload_to_an_artifact_that_is_not_a_model_is_409_and_keeps_serving(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    reg = trained_registry.copy(tmp_path / "registry")
    bad = register_not_a_model(reg, tmp_path / "artifacts")
    app = create_app(settings(tmp_path, reg))
    with TestClient(app) as client:
        admin, clinician = key(app, "admin"), key(app, "clinician")
        reg.set_champion(bad)
        r = client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert f"version {bad} cannot be served" in detail and "not a personalize model" in detail
        assert "still serving personalize-stamp version 1" in detail
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["model"]["version"] == "1"
        served = client.post(
            "/v1/recommendations", json={"patient": STAMP_PATIENT}, headers=clinician
        )
        assert served.status_code == 200 and served.json()["model"]["version"] == "1"
        reg.set_champion("2")  # a good version afterwards still swaps in
        assert client.post("/v1/admin/reload", headers=admin).json()["current"]["version"] == "2"


# --------------------------------------------------------------------------- on the wire


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[tuple[Server, dict[str, str], dict[str, str]]]:
    """`personalize serve` with a clinician and a researcher key."""
    root = tmp_path_factory.mktemp("surface")
    with serve(root, trained_registry) as running:
        db = Database(running.env["PERSONALIZE_DATABASE_URL"])
        keys = [create_key(db, role)[1] for role in ("clinician", "researcher")]
        db.dispose()
        clinician, researcher = ({"Authorization": f"Bearer {k}"} for k in keys)
        yield running, clinician, researcher


def unknown_fields(size: int) -> dict[str, Any]:
    """A patient of unknown fields, `size` bytes of compact JSON at most."""
    return {f"unknown_{i:07d}": 1 for i in range(size // len('"unknown_0000000":1,'))}


@pytest.mark.slow
def test_a_body_of_unknown_fields_gets_a_small_422(
    server: tuple[Server, dict[str, str], dict[str, str]],
) -> None:
    running, clinician, researcher = server
    patient = unknown_fields(1_800_000)
    one = unknown_fields(60_000)  # one patient's route takes 64 KiB
    cases = [
        ("/v1/recommendations", {"patient": one}, clinician, len(one)),
        ("/v1/recommendations/batch", {"patients": [patient]}, researcher, len(patient)),
        (  # spread over patients: each patient's problems count too
            "/v1/recommendations/batch",
            {"patients": [unknown_fields(1700)] * 1000},
            researcher,
            1000 * len(unknown_fields(1700)),
        ),
    ]
    with httpx.Client(base_url=running.url, timeout=120) as client:

        def post(path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
            content = json.dumps(body, separators=(",", ":")).encode()
            assert len(content) < 2 * 1024 * 1024
            started = time.monotonic()
            r = client.post(
                path, content=content, headers={**headers, "Content-Type": "application/json"}
            )
            assert time.monotonic() - started < 20, path
            assert r.status_code == 422, r.text[:500]
            assert len(r.content) < 20_000, (path, len(r.content))
            return r

        for path, body, headers, count in cases:
            detail = post(path, body, headers).json()["detail"]
            assert len(detail) == MAX_PROBLEMS + 1
            listed, more = detail[:-1], detail[-1]
            assert all(p["type"] == "extra_forbidden" for p in listed)
            assert more["type"] == "too_many_problems" and more["loc"] == ["body"]
            assert more["msg"] == f"{count - MAX_PROBLEMS} more problems not listed"

        # the 1.8 MB patient on the one-patient route: refused before it is parsed
        big = json.dumps({"patient": patient}).encode()
        r = client.post(
            "/v1/recommendations",
            content=big,
            headers={**clinician, "Content-Type": "application/json"},
        )
        assert r.status_code == 413 and len(r.content) < 1000, r.text[:300]

        # unknown fields beside `patient`: one problem that counts them
        body = {"patient": {}, **one}
        (problem,) = post("/v1/recommendations", body, clinician).json()["detail"]
        assert problem["loc"] == ["body"] and problem["type"] == "value_error"
        assert f"{len(one)} unknown fields (the first: unknown_0000000," in problem["msg"]

        # a field name of 60,000 characters is not echoed back whole
        long_name = {"patient": {"n" * 60_000: 1}}
        r = client.post("/v1/recommendations", json=long_name, headers=clinician)
        (problem,) = r.json()["detail"]
        assert r.status_code == 422 and len(r.content) < 1000
        assert problem["loc"][:2] == ["body", "patient"] and len(problem["loc"][2]) <= 64

        # a small mistake keeps the shape it had, with a hint instead of the field list
        r = client.post(
            "/v1/recommendations", json={"patient": {**STAMP_PATIENT, "phq9": 3}}, headers=clinician
        )
        assert r.status_code == 422
        assert r.json()["detail"] == [
            {
                "loc": ["body", "patient", "phq9"],
                "field": "patient.phq9",
                "msg": "unknown field; did you mean phq8? (GET /v1/schema lists this model's "
                "fields)",
                "type": "extra_forbidden",
            }
        ]


SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def assert_secured(r: httpx.Response, *, no_store: bool = True) -> None:
    for name, value in SECURITY.items():
        assert r.headers.get(name) == value, (r.request.url, name, dict(r.headers))
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, r.request.url
    if no_store:
        assert r.headers.get("cache-control") == "no-store", (r.request.url, dict(r.headers))


@pytest.mark.slow
def test_every_answer_carries_the_security_headers(
    server: tuple[Server, dict[str, str], dict[str, str]],
) -> None:
    running, clinician, researcher = server
    with httpx.Client(base_url=running.url, timeout=60) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert_secured(page)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        asset = client.get("/page/app.js")
        assert asset.status_code == 200
        assert_secured(asset, no_store=False)  # a static file may be cached

        patient_data = [
            client.post(
                "/v1/recommendations",
                json={"patient": STAMP_PATIENT, "patient_ref": "MRN-1"},
                headers=clinician,
            ),
            client.post(
                "/v1/recommendations/batch", json={"patients": [STAMP_PATIENT]}, headers=researcher
            ),
            client.post(
                SERVICE,
                json=hook(
                    {
                        "patient": {"resourceType": "Patient", "gender": "female"},
                        "observations": bundle(observation("phq8", valueInteger=11)),
                    }
                ),
                headers=clinician,
            ),
            client.get("/v1/model", headers=clinician),
            client.get("/v1/model", params={"format": "html"}, headers=clinician),
        ]
        for r in patient_data:
            assert r.status_code == 200, r.text
            assert_secured(r)
            assert "script-src" not in r.headers["content-security-policy"]

        errors = [
            client.post("/v1/recommendations", json={"patient": {}}),  # 401
            client.post(
                "/v1/recommendations", json={"patient": {"age": 5}}, headers=clinician
            ),  # 422
            client.post(  # 413 from the body limit, before any route
                "/v1/recommendations",
                content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
                headers={**clinician, "Content-Type": "application/json"},
            ),
            client.get("/nowhere"),  # 404
            client.get("/healthz"),
            client.get("/readyz"),
            client.get("/openapi.json"),
        ]
        assert [r.status_code for r in errors] == [401, 422, 413, 404, 200, 200, 200]
        for r in errors:
            assert_secured(r)


@pytest.mark.slow
def test_the_api_documentation_loads_nothing_from_elsewhere(
    server: tuple[Server, dict[str, str], dict[str, str]],
) -> None:
    running, _, _ = server
    with httpx.Client(base_url=running.url, timeout=60) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        assert_secured(docs)
        csp = docs.headers["content-security-policy"]
        script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        assert script_src.strip() == "script-src 'self'"  # no CDN, no inline script
        assert "unsafe" not in csp  # no inline style either
        assert "<script>" not in docs.text and "//" not in re.sub(r"<!doctype[^>]*>", "", docs.text)
        sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assets = [s for s in sources if s.startswith("/docs/assets/")]
        assert len(assets) == 3 and all(s.startswith(("/", "data:")) for s in sources)
        for path in assets:
            r = client.get(path)
            assert r.status_code == 200 and r.content, path
            assert_secured(r, no_store=False)
        assert (
            client.get("/docs/assets/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith(("application/javascript", "text/javascript"))
        )
        assert client.get("/redoc").status_code == 404
        assert client.get("/docs/oauth2-redirect").status_code == 404


def test_the_vendored_swagger_ui_is_the_one_its_readme_names() -> None:
    readme = (DOCS_UI_DIR / "README.md").read_text()
    hashes = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", readme))
    assert set(hashes) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in hashes.items():
        assert hashlib.sha256((DOCS_UI_DIR / name).read_bytes()).hexdigest() == digest
