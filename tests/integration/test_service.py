"""The recommendation service in process (FastAPI TestClient): contract, auth, audit, model
card, hot swap, cache fallback, metrics. Real servers: test_service_server.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from personalize.service.app import create_app
from personalize.service.audit import ApiKey, AuditRecord, Database
from personalize.service.auth import create_key, revoke_key, split_key
from personalize.service.commands import TcpConfig
from personalize.service.config import Settings, SettingsError
from support.postgres import PostgresDatabase
from support.registry import STAMP_MODEL, TrainedRegistry
from support.servers import free_port
from support.service import STAMP_PATIENT, key, settings

# --------------------------------------------------------------------------- no model needed


def environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Exactly these service variables in the environment, no others."""
    for name in list(os.environ):
        if name.startswith("PERSONALIZE_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_settings_from_env_names_the_variable_at_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    environment(
        monkeypatch,
        PERSONALIZE_BATCH_MAX="50",
        MLFLOW_TRACKING_URI="http://x",
        PERSONALIZE_X="1",
        PERSONALIZE_EXPLAIN="",
    )
    s = Settings.from_env()
    assert s.batch_max == 50 and s.tracking_uri == "http://x" and s.explain == 3
    environment(monkeypatch, PERSONALIZE_TRACKING_URI="http://p", MLFLOW_TRACKING_URI="http://x")
    assert Settings.from_env().tracking_uri == "http://p"
    assert Settings.from_env(tracking_uri="http://o").tracking_uri == "http://o"
    environment(monkeypatch, PERSONALIZE_BATCH_MAX="lots")
    with pytest.raises(SettingsError, match="PERSONALIZE_BATCH_MAX"):
        Settings.from_env()
    environment(monkeypatch, PERSONALIZE_MODEL_URI="runs:/abc/model")
    with pytest.raises(SettingsError, match="PERSONALIZE_MODEL_URI"):
        Settings.from_env()
    environment(monkeypatch)
    assert (
        Settings.from_env(pipeline=Path("pipelines/optimum.yaml")).resolved_model_uri()
        == "models:/personalize-optimum@champion"
    )


def test_keys_are_stored_as_salted_scrypt_hashes(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    db.create_schema()
    id1, key1 = create_key(db, "clinician", note="dr a")
    id2, key2 = create_key(db, "clinician")
    assert split_key(key1) is not None and split_key(key1)[0] == id1  # type: ignore[index]
    with db.session() as session:
        rows = {r.key_id: r for r in session.scalars(select(ApiKey))}
    secret1 = key1.split("_", 2)[2]
    dump = (tmp_path / "k.db").read_bytes()
    assert secret1.encode() not in dump and key2.split("_", 2)[2].encode() not in dump
    assert rows[id1].salt != rows[id2].salt and rows[id1].algorithm.startswith("scrypt$")
    assert (
        rows[id1].hash
        == hashlib.scrypt(
            secret1.encode(), salt=bytes.fromhex(rows[id1].salt), n=2**14, r=8, p=1
        ).hex()
    )
    assert revoke_key(db, id1) and not revoke_key(db, "0" * 16)


def test_keys_cli_prints_the_key_once_and_lists_without_secrets(tmp_path: Path) -> None:
    from personalize.cli import app

    url = f"sqlite:///{tmp_path / 'k.db'}"
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--role", "researcher", "--database-url", url])
    assert created.exit_code == 0, created.output
    full = created.stdout.strip().splitlines()[-1]
    key_id, secret = split_key(full)  # type: ignore[misc]
    listed = runner.invoke(app, ["keys", "list", "--json", "--database-url", url])
    assert secret not in listed.stdout
    assert json.loads(listed.stdout)[0] | {"created_at": None} == {
        "key_id": key_id,
        "role": "researcher",
        "note": None,
        "created_at": None,
        "revoked_at": None,
    }
    assert runner.invoke(app, ["keys", "revoke", key_id, "--database-url", url]).exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--json", "--database-url", url]).stdout)[
        0
    ]["revoked_at"]
    bad = runner.invoke(app, ["keys", "create", "--role", "root", "--database-url", url])
    assert bad.exit_code != 0 and "clinician, researcher, admin" in bad.output


def test_the_served_socket_is_tcp_so_every_connection_gets_nodelay() -> None:
    """uvicorn binds its several-worker socket with proto 0, so asyncio skipped TCP_NODELAY
    and each response waited ~40 ms for the client's delayed ACK (Kludex/uvicorn#3149)."""
    config = TcpConfig(
        "personalize.service.app:create_app", factory=True, host="127.0.0.1", port=free_port()
    )
    sock = config.bind_socket()
    assert sock.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(
                writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            )
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return seen[0]

    assert asyncio.run(accepted_nodelay()) != 0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clinician(app: Any, client: TestClient) -> dict[str, str]:
    return key(app, "clinician")


@pytest.fixture
def researcher(app: Any, client: TestClient) -> dict[str, str]:
    return key(app, "researcher")


@pytest.fixture
def admin(app: Any, client: TestClient) -> dict[str, str]:
    return key(app, "admin")


def recommend(client: TestClient, headers: dict[str, str], **patient: Any) -> Any:
    return client.post(
        "/v1/recommendations",
        json={"patient": {**STAMP_PATIENT, **patient}, "patient_ref": "MRN-0001"},
        headers=headers,
    )


# --------------------------------------------------------------------------- responses


@pytest.mark.slow
def test_ready_and_healthy_with_the_champion(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (
        body["ready"] is True
        and body["model"]["version"] == trained_registry.versions[STAMP_MODEL][0]
    )
    assert body["model"]["source"] == "registry" and body["model"]["synthetic"] is True


@pytest.mark.slow
def test_recommendation_is_labelled_calibrated_explained_and_says_synthetic(
    client: TestClient, clinician: dict[str, str]
) -> None:
    r = recommend(client, clinician)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["arms"]) == {"MBT", "CBT"}
    assert body["arms"]["MBT"]["role"] == "treatment" and body["arms"]["CBT"]["role"] == "control"
    for arm in body["arms"].values():
        assert 0 <= arm["probability"] <= 1 and arm["expected_improvement"] is None
    b = body["benefit"]
    assert b["lower"] <= b["estimate"] <= b["upper"] and b["level"] == 0.9
    assert b["estimate"] == pytest.approx(
        body["arms"]["MBT"]["probability"] - body["arms"]["CBT"]["probability"]
    )
    assert body["recommendation"] in ("MBT", "CBT", "either") and body["rationale"]
    assert body["recommendation_role"] == {"MBT": "treatment", "CBT": "control"}.get(
        body["recommendation"], "either"
    )
    assert 1 <= len(body["drivers"]) <= 3
    for d in body["drivers"]:
        assert d["direction"] in ("favours MBT", "favours CBT") and d["label"]
        if d["feature"] in STAMP_PATIENT:
            assert d["value"] == STAMP_PATIENT[d["feature"]]
    assert body["warnings"] == [] and body["missing_features"] == []
    model = body["model"]
    assert model["synthetic"] is True and "SYNTHETIC" in model["synthetic_notice"]
    assert model["name"] == STAMP_MODEL and model["version"] == "1" and model["run_id"]
    assert model["trained_on"]["pipeline"] == "stamp-mbt-vs-cbt"
    assert len(model["trained_on"]["cohort_sha256"]) == 64
    assert body["outcome"]["kind"] == "binary" and "30%" in body["outcome"]["definition"]


@pytest.mark.slow
def test_service_answers_exactly_what_predict_returns(
    app: Any, client: TestClient, researcher: dict[str, str]
) -> None:
    """One path: the response is PersonalizeModel.predict's output, converted."""
    patients = [STAMP_PATIENT, {**STAMP_PATIENT, "age": 30, "phq8": 20}, {"sex": "male"}]
    r = client.post("/v1/recommendations/batch", json={"patients": patients}, headers=researcher)
    assert r.status_code == 200, r.text
    loaded = app.state.holder.current
    expected = loaded.model.predict(
        loaded.contract.frame([loaded.contract.validate(p, ()) for p in patients])
    )
    for got, (_, row) in zip(r.json()["results"], expected.iterrows(), strict=True):
        assert got["arms"]["MBT"]["probability"] == row["outcome_treatment"]
        assert got["arms"]["CBT"]["probability"] == row["outcome_control"]
        assert (got["benefit"]["estimate"], got["benefit"]["lower"], got["benefit"]["upper"]) == (
            row["benefit"],
            row["benefit_lower"],
            row["benefit_upper"],
        )
        assert got["recommendation"] == row["recommendation"]
        assert got["rationale"] == row["rationale"]
        assert got["better_bet"] == (None if pd.isna(row["better_bet"]) else row["better_bet"])
        p = row["better_bet_probability"]
        assert got["better_bet_probability"] == (None if pd.isna(p) else p)
        assert got["drivers"] == json.loads(row["drivers"])
        assert got["warnings"] == json.loads(row["warnings"])


@pytest.mark.slow
def test_the_better_bet_only_for_an_open_choice_and_on_the_estimates_side(
    client: TestClient, researcher: dict[str, str]
) -> None:
    """A patient left at `either` without a preference is told the arm the model favours
    when it is better with at least the rule's probability (80%), with that probability;
    below it, no bet and the reason; a patient with a preference, or with a recommendation,
    is told none."""
    patients = [
        {**STAMP_PATIENT, "treatment_preference": pref, "mme": mme, "phq8": phq8}
        for pref in ("none", "MBT", "CBT")
        for mme in (15, 60, 240)
        for phq8 in (2, 20)
    ]
    r = client.post("/v1/recommendations/batch", json={"patients": patients}, headers=researcher)
    assert r.status_code == 200, r.text
    bets = set()
    for patient, got in zip(patients, r.json()["results"], strict=True):
        stated = patient["treatment_preference"] != "none"
        if got["recommendation"] != "either" or stated:
            assert got["better_bet"] is None and got["better_bet_probability"] is None
            continue
        if got["better_bet"] is None:
            assert got["better_bet_probability"] is None
            assert "no arm is favoured with at least 80% probability" in got["rationale"]
            bets.add(None)
            continue
        side = "MBT" if got["benefit"]["estimate"] > 0 else "CBT"
        p = got["better_bet_probability"]
        assert got["better_bet"] == side and p >= 0.8
        assert (
            f"without a preference, {side} is the better bet: an {p:.0%} probability"
            if f"{p:.0%}".startswith("8")  # p >= 0.8 here: 80-99%
            else f"without a preference, {side} is the better bet: a {p:.0%} probability"
            in (got["rationale"])
        )
        bets.add(side)
    assert bets  # the grid leaves at least one patient with an open choice


@pytest.mark.slow
def test_values_outside_the_training_range_warn_and_missing_fields_are_listed(
    client: TestClient, clinician: dict[str, str]
) -> None:
    observed = client.get("/v1/schema", headers=clinician).json()
    age = next(f for f in observed["fields"] if f["name"] == "age")
    assert age["min"] == 21 and age["observed_min"] > 21
    r = recommend(client, clinician, age=21)
    assert r.status_code == 200
    assert any("age=21" in w and "outside the training data" in w for w in r.json()["warnings"])
    sparse = client.post(
        "/v1/recommendations", json={"patient": {"age": 60, "sex": None}}, headers=clinician
    )
    assert sparse.status_code == 200
    missing = {m["feature"] for m in sparse.json()["missing_features"]}
    assert missing == set(STAMP_PATIENT) - {"age"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("patient", "field", "words"),
    [
        ({"age": 101}, "patient.age", "less than or equal to 100"),
        ({"age": 20.5}, "patient.age", "greater than or equal to 21"),
        ({"age": "58"}, "patient.age", "valid number"),
        ({"age": True}, "patient.age", "valid number"),
        ({"sex": "unknown"}, "patient.sex", "'female' or 'male'"),
        ({"sex": 1}, "patient.sex", "'female' or 'male'"),
        ({"treatment_preference": "yoga"}, "patient.treatment_preference", "'MBT', 'CBT'"),
        ({"bmi": 30}, "patient.bmi", "unknown field"),
    ],
)
def test_invalid_patients_get_422_naming_the_field_and_the_reason(
    client: TestClient, clinician: dict[str, str], patient: dict[str, Any], field: str, words: str
) -> None:
    r = client.post(
        "/v1/recommendations", json={"patient": {**STAMP_PATIENT, **patient}}, headers=clinician
    )
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["field"] == field and words in problem["msg"]
    assert "input" not in problem  # patient values are not echoed


@pytest.mark.slow
def test_malformed_bodies_are_422_never_500(client: TestClient, clinician: dict[str, str]) -> None:
    headers = {**clinician, "Content-Type": "application/json"}
    cases = [
        b'{"patient": {"age": NaN}}',
        b'{"patient": {"age": Infinity}}',
        b'{"patient": [1, 2]}',
        b'{"patient": {}, "extra": 1}',
        b'{"patient_ref": "x"}',
        b'{"patient": {}, "patient_ref": ""}',
        b"[]",
        b"not json",
    ]
    for body in cases:
        r = client.post("/v1/recommendations", content=body, headers=headers)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert all(p["field"] is not None and p["msg"] for p in r.json()["detail"])
    nan = client.post("/v1/recommendations", content=cases[0], headers=headers).json()
    assert nan["detail"][0]["field"] == "patient.age" and "finite" in nan["detail"][0]["msg"]


# --------------------------------------------------------------------------- keys and roles


@pytest.mark.slow
def test_keys_and_roles(app: Any, client: TestClient) -> None:
    clinician, researcher, admin = (key(app, r) for r in ("clinician", "researcher", "admin"))
    body = {"patient": STAMP_PATIENT}
    batch = {"patients": [STAMP_PATIENT]}
    no_key = client.post("/v1/recommendations", json=body)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    for bad in ("pz_nothex_x", "Bearer", "pz_" + "0" * 16 + "_secret"):
        r = client.post(
            "/v1/recommendations", json=body, headers={"Authorization": f"Bearer {bad}"}
        )
        assert r.status_code == 401
    tampered = {"Authorization": clinician["Authorization"][:-2] + "xx"}
    assert client.post("/v1/recommendations", json=body, headers=tampered).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Basic abc"}).status_code == 401

    assert client.post("/v1/recommendations", json=body, headers=clinician).status_code == 200
    assert client.get("/v1/model", headers=clinician).status_code == 200
    assert (
        client.post("/v1/recommendations/batch", json=batch, headers=clinician).status_code == 403
    )
    assert client.post("/v1/admin/reload", headers=clinician).status_code == 403
    assert (
        client.post("/v1/recommendations/batch", json=batch, headers=researcher).status_code == 200
    )
    forbidden = client.post("/v1/admin/reload", headers=researcher)
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    assert client.post("/v1/recommendations/batch", json=batch, headers=admin).status_code == 200
    assert client.post("/v1/admin/reload", headers=admin).status_code == 200

    key_id = split_key(clinician["Authorization"].removeprefix("Bearer "))[0]  # type: ignore[index]
    revoke_key(app.state.database, key_id)
    assert client.post("/v1/recommendations", json=body, headers=clinician).status_code == 401


# --------------------------------------------------------------------------- batch


@pytest.mark.slow
def test_batch_keeps_order_bounds_count_and_body_size(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    app = create_app(settings(tmp_path, trained_registry, batch_max=3, max_body_bytes=4096))
    with TestClient(app) as client:
        researcher = key(app, "researcher")
        patients = [{**STAMP_PATIENT, "age": a} for a in (30, 50, 70)]
        r = client.post(
            "/v1/recommendations/batch",
            json={"patients": patients, "patient_refs": ["a", None, "c"]},
            headers=researcher,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == 3 and body["model"]["synthetic"] is True
        assert [x["model"]["version"] for x in body["results"]] == ["1"] * 3
        single = [
            client.post("/v1/recommendations", json={"patient": p}, headers=researcher).json()
            for p in patients
        ]
        assert [x["benefit"] for x in body["results"]] == [x["benefit"] for x in single]

        four = client.post(
            "/v1/recommendations/batch",
            json={"patients": patients + patients[:1]},
            headers=researcher,
        )
        assert four.status_code == 413 and "maximum is 3" in four.json()["detail"]
        big = {"patients": [{"age": 50}] * 3, "patient_refs": ["x" * 2000] * 3}
        r = client.post("/v1/recommendations/batch", json=big, headers=researcher)
        assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: streamed body
            yield b'{"patients": ['
            for _ in range(40):
                yield b'{"age": 50, "sex": "female", "phq8": 10},'
            yield b'{"age": 50}]}'

        streamed = client.post(
            "/v1/recommendations/batch",
            content=chunks(),
            headers={**researcher, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413

        mismatch = client.post(
            "/v1/recommendations/batch",
            json={"patients": patients, "patient_refs": ["a"]},
            headers=researcher,
        )
        assert mismatch.status_code == 422
        assert mismatch.json()["detail"][0]["field"] == "patient_refs"
        several = client.post(
            "/v1/recommendations/batch",
            json={"patients": [{"age": 5}, {"age": 50}, {"sex": "x", "foo": 1}]},
            headers=researcher,
        )
        assert several.status_code == 422
        assert {p["field"] for p in several.json()["detail"]} == {
            "patients.0.age",
            "patients.2.sex",
            "patients.2.foo",
        }
        empty = client.post("/v1/recommendations/batch", json={"patients": []}, headers=researcher)
        assert empty.status_code == 422


# --------------------------------------------------------------------------- model card


@pytest.mark.slow
def test_model_card_json_and_markdown(
    client: TestClient, clinician: dict[str, str], trained_registry: TrainedRegistry
) -> None:
    r = client.get("/v1/model", headers=clinician)
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "registry" and body["synthetic"] is True
    assert body["model_uri"] == trained_registry.champion()
    card = body["card"]
    assert card["model"]["version"] == body["version"] == "1"
    assert card["synthetic"] is True and card["intended_use"]["not_intended_for"]
    md = client.get("/v1/model", params={"format": "markdown"}, headers=clinician)
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert "SYNTHETIC DATA" in md.text and "| Version | 1 |" in md.text
    assert client.get("/v1/model", params={"format": "pdf"}, headers=clinician).status_code == 422


@pytest.mark.slow
def test_model_card_html_fragment(client: TestClient, clinician: dict[str, str]) -> None:
    r = client.get("/v1/model", params={"format": "html"}, headers=clinician)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith('<article class="model-card">') and "<html" not in r.text
    assert "<h2>Model card: " in r.text and "<h3>Limitations</h3>" in r.text
    assert "SYNTHETIC DATA" in r.text
    assert '<th scope="row">Version</th><td>1</td>' in r.text
    assert client.get("/v1/model", params={"format": "html"}).status_code == 401


@pytest.mark.slow
def test_openapi_shows_the_models_own_contract(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    patient = doc["components"]["schemas"]["Patient"]
    assert patient["additionalProperties"] is False and "required" not in patient
    age = patient["properties"]["age"]["anyOf"][0]
    assert (age["type"], age["minimum"], age["maximum"]) == ("number", 21, 100)
    assert patient["properties"]["sex"]["anyOf"][0]["enum"] == ["female", "male"]
    request = doc["components"]["schemas"]["RecommendationRequest"]
    assert request["properties"]["patient"]["$ref"] == "#/components/schemas/Patient"
    batch = doc["components"]["schemas"]["BatchRequest"]["properties"]["patients"]
    assert batch["maxItems"] == 1000 and batch["items"]["$ref"].endswith("/Patient")
    arms = doc["components"]["schemas"]["Recommendation"]["properties"]["arms"]
    assert arms["required"] == ["MBT", "CBT"]
    op = doc["paths"]["/v1/recommendations"]["post"]
    assert {"401", "403", "413", "422", "503"} <= set(op["responses"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.slow
def test_another_cohorts_model_brings_its_own_contract(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    optimum = "models:/personalize-optimum@champion"
    app = create_app(settings(tmp_path, trained_registry, model_uri=optimum))
    with TestClient(app) as client:
        clinician = key(app, "clinician")
        schema = client.get("/v1/schema", headers=clinician).json()
        assert (schema["treatment"], schema["control"]) == ("group_visit", "usual_care")
        names = {f["name"] for f in schema["fields"]}
        assert {"phq9", "peg", "opioid_use"} <= names and "phq8" not in names
        ok = client.post(
            "/v1/recommendations",
            json={"patient": {"age": 50, "peg": 6, "opioid_use": "yes", "income_band": "lt_25k"}},
            headers=clinician,
        )
        assert ok.status_code == 200, ok.text
        assert set(ok.json()["arms"]) == {"group_visit", "usual_care"}
        refused = client.post(
            "/v1/recommendations", json={"patient": {"phq8": 10}}, headers=clinician
        )
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "patient.phq8"
        doc = client.get("/openapi.json").json()
        assert "peg" in doc["components"]["schemas"]["Patient"]["properties"]
    assert trained_registry.versions["personalize-optimum"] == ["1"]


@pytest.mark.slow
def test_continuous_outcome_reports_expected_improvement(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    app = create_app(
        settings(
            tmp_path, trained_registry, model_uri="models:/personalize-stamp-continuous@champion"
        )
    )
    with TestClient(app) as client:
        r = recommend(client, key(app, "clinician"))
        assert r.status_code == 200, r.text
        body = r.json()
        for arm in body["arms"].values():
            assert arm["probability"] is None and isinstance(arm["expected_improvement"], float)
        assert body["benefit"]["scale"] == "points" and body["outcome"]["kind"] == "continuous"


# --------------------------------------------------------------------------- audit


def _audit(app: Any, client: TestClient, url: str) -> None:
    clinician, researcher = key(app, "clinician"), key(app, "researcher")
    r1 = recommend(client, clinician)
    r2 = client.post(
        "/v1/recommendations/batch",
        json={"patients": [STAMP_PATIENT, {"age": 40}], "patient_refs": ["MRN-0001", None]},
        headers=researcher,
    )
    assert r1.status_code == 200 and r2.status_code == 200
    db = Database(url)
    with db.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.created_at)).all()
    assert len(rows) == 3
    single = next(r for r in rows if r.id == r1.json()["audit_id"])
    assert single.channel == "single" and single.model_name == STAMP_MODEL
    assert single.model_version == "1" and single.model_run_id == r1.json()["model"]["run_id"]
    assert single.key_id == split_key(clinician["Authorization"][7:])[0]  # type: ignore[index]
    assert single.recommendation == r1.json()["recommendation"]
    assert single.benefit == r1.json()["benefit"]["estimate"]
    secret = app.state.database.pseudonym_key()  # kept outside the audit database
    expected = hmac.new(secret, b"MRN-0001", hashlib.sha256).hexdigest()
    assert single.patient_pseudonym == expected and "MRN" not in single.patient_pseudonym
    batch = [r for r in rows if r.channel == "batch"]
    assert {r.patient_pseudonym for r in batch} == {expected, None}
    assert len({r.request_id for r in batch}) == 1
    columns = set(AuditRecord.__table__.columns.keys())
    assert not columns & set(STAMP_PATIENT), "no covariates in the audit log"
    db.dispose()


@pytest.mark.slow
def test_audit_log_on_sqlite(tmp_path: Path, app: Any, client: TestClient) -> None:
    _audit(app, client, f"sqlite:///{tmp_path / 'service.db'}")


@pytest.mark.slow
def test_audit_log_on_postgres(
    tmp_path: Path, trained_registry: TrainedRegistry, postgres_db: PostgresDatabase
) -> None:
    url = postgres_db.sqlalchemy_url
    app = create_app(settings(tmp_path, trained_registry, database_url=url))
    with TestClient(app) as client:
        _audit(app, client, url)


@pytest.mark.slow
def test_pseudonyms_use_the_configured_secret_and_survive_restarts(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    secret = "s3cret-of-at-least-thirty-two-bytes"
    app = create_app(settings(tmp_path, trained_registry, pseudonym_secret=secret))
    with TestClient(app) as client:
        r = recommend(client, key(app, "clinician"))
    app2 = create_app(settings(tmp_path, trained_registry, pseudonym_secret=secret))
    with TestClient(app2) as client:
        r2 = recommend(client, key(app2, "clinician"))
    db = Database(f"sqlite:///{tmp_path / 'service.db'}")
    with db.session() as session:
        ids = [r.json()["audit_id"], r2.json()["audit_id"]]
        rows = [session.get(AuditRecord, i) for i in ids]
    expected = hmac.new(secret.encode(), b"MRN-0001", hashlib.sha256).hexdigest()
    assert [row.patient_pseudonym for row in rows if row] == [expected, expected]


@pytest.mark.slow
def test_a_recommendation_that_cannot_be_audited_is_not_given(
    app: Any, client: TestClient, clinician: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is down"))

    monkeypatch.setattr(app.state.database, "record", broken)
    r = recommend(client, clinician)
    assert r.status_code == 503 and "audit log" in r.json()["detail"]


@pytest.mark.slow
def test_no_patient_data_in_the_application_logs(
    client: TestClient, clinician: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = {"age": 67.4321, "odi": 43.2109, "pcs": 31.0987}
    ref = "MRN-SECRET-98765"
    r = client.post(
        "/v1/recommendations",
        json={"patient": {**STAMP_PATIENT, **marker}, "patient_ref": ref},
        headers=clinician,
    )
    assert r.status_code == 200
    bad = client.post(
        "/v1/recommendations",
        json={"patient": {"age": 167.4321}, "patient_ref": ref},
        headers=clinician,
    )
    assert bad.status_code == 422
    text = "\n".join(f"{rec.getMessage()} {rec.args}" for rec in caplog.records)
    assert "recommended channel=single" in text  # the service does log, just not patients
    for needle in ["67.4321", "43.2109", "31.0987", "167.4321", ref]:
        assert needle not in text, needle


# --------------------------------------------------------------------------- metrics


@pytest.mark.slow
def test_metrics_count_requests_predictions_and_the_loaded_version(
    client: TestClient, clinician: dict[str, str]
) -> None:
    def sample(text: str, metric: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = client.get("/metrics").text
    recommend(client, clinician)
    client.post("/v1/recommendations", json={"patient": {"age": 1}}, headers=clinician)
    after = client.get("/metrics").text
    route = {"route": "/v1/recommendations", "method": "POST"}
    for status_code in ("200", "422"):
        name = "personalize_http_requests_total"
        assert (
            sample(after, name, status=status_code, **route)
            == sample(before, name, status=status_code, **route) + 1
        )
    hist = "personalize_http_request_duration_seconds_count"
    assert sample(after, hist, status="200", **route) >= 1
    assert sample(after, "personalize_model_loaded", name=STAMP_MODEL, version="1") == 1
    assert sample(after, "personalize_predictions_total", channel="single") >= 1


# --------------------------------------------------------------------------- hot swap


@pytest.mark.slow
def test_hot_swap_keeps_requests_in_flight_on_their_version(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    # its own copy of the registry: the test moves `champion`
    reg = trained_registry.copy(tmp_path / "registry")
    app = create_app(settings(tmp_path, reg))
    with TestClient(app) as client:
        clinician, admin = key(app, "clinician"), key(app, "admin")
        holder = app.state.holder
        old = holder.current
        started, release = threading.Event(), threading.Event()
        predict = old.model.predict_columns

        def slow_predict(*args: Any) -> Any:
            started.set()
            assert release.wait(30)
            return predict(*args)

        object.__setattr__(old.model, "predict_columns", slow_predict)
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.update(r=recommend(client, clinician)))
        worker.start()
        assert started.wait(30)
        reg.set_champion("2")
        swap = client.post("/v1/admin/reload", headers=admin)
        assert swap.status_code == 200 and swap.json()["changed"] is True
        assert (
            swap.json()["previous"]["version"] == "1" and swap.json()["current"]["version"] == "2"
        )
        assert holder.current.version == "2"
        release.set()
        worker.join(30)
        del old.model.predict_columns
        assert result["r"].status_code == 200
        assert result["r"].json()["model"]["version"] == "1"  # finished on the old model
        expected = old.model.predict(old.contract.frame([old.contract.validate(STAMP_PATIENT, ())]))
        assert result["r"].json()["benefit"]["estimate"] == expected["benefit"].iloc[0]
        assert recommend(client, clinician).json()["model"]["version"] == "2"
        again = client.post("/v1/admin/reload", headers=admin).json()
        assert again["changed"] is False and again["current"]["version"] == "2"


@pytest.mark.slow
def test_concurrent_requests_never_fail_while_the_champion_moves(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    # its own copy of the registry: the test moves `champion`
    reg = trained_registry.copy(tmp_path / "registry")
    app = create_app(settings(tmp_path, reg, poll_seconds=0.05))
    with TestClient(app) as client:
        clinician, admin = key(app, "clinician"), key(app, "admin")
        stop = threading.Event()
        seen: list[tuple[int, str | None]] = []

        def load() -> None:
            while not stop.is_set():
                r = recommend(client, clinician)
                seen.append((r.status_code, r.json().get("model", {}).get("version")))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for version in ["2", "1", "2", "1"]:
            time.sleep(0.4)
            reg.set_champion(version)
            if version == "1":
                assert client.post("/v1/admin/reload", headers=admin).status_code == 200
        time.sleep(0.4)
        stop.set()
        for t in threads:
            t.join(30)
    assert len(seen) > 20
    assert {s for s, _ in seen} == {200}
    assert {v for _, v in seen} == {"1", "2"}


# --------------------------------------------------------------------------- cache, readiness


@pytest.mark.slow
def test_unreachable_registry_serves_the_cached_model_and_says_so(
    tmp_path: Path, trained_registry: TrainedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create_app(settings(tmp_path, trained_registry))
    with TestClient(first) as client:
        assert client.get("/readyz").status_code == 200  # loaded and cached
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = f"http://127.0.0.1:{free_port()}"
    app = create_app(
        settings(
            tmp_path, trained_registry, tracking_uri=down, registry_timeout=3, retry_seconds=60
        )
    )
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model"]["source"] == "cache"
        assert "registry unavailable" in ready.json()["status"]
        clinician = key(app, "clinician")
        card = client.get("/v1/model", headers=clinician).json()
        assert card["source"] == "cache" and card["version"] == "1"
        r = recommend(client, clinician)
        assert r.status_code == 200 and r.json()["model"]["source"] == "cache"
        assert r.json()["model"]["synthetic"] is True
        reload = client.post("/v1/admin/reload", headers=key(app, "admin"))
        assert reload.status_code == 503


@pytest.mark.slow
def test_without_a_cache_it_stays_not_ready_and_retries(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    # its own copy of the registry: the test moves `champion`
    reg = trained_registry.copy(tmp_path / "registry")
    from mlflow.tracking import MlflowClient

    MlflowClient(reg.uri).delete_registered_model_alias(STAMP_MODEL, "champion")
    app = create_app(settings(tmp_path, reg, registry_timeout=5, retry_seconds=0.2))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "retrying" in ready.json()["status"]
        clinician = key(app, "clinician")
        r = recommend(client, clinician)
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
        assert client.get("/v1/model", headers=clinician).status_code == 503
        reg.set_champion("2")
        deadline = time.time() + 20
        while client.get("/readyz").status_code != 200:
            assert time.time() < deadline, "did not recover"
            time.sleep(0.1)
        assert recommend(client, clinician).json()["model"]["version"] == "2"


@pytest.mark.slow
def test_clinician_page_placeholder_is_served_at_root(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
