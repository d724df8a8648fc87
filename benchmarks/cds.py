"""CDS Hooks benchmark: what a registered EHR's JWT costs on the patient-view route, one run.

    .venv/bin/python benchmarks/cds.py [--requests 300] [--rounds 3]

Trains and promotes the demo model (SYNTHETIC STAMP cohort, 770 patients, seed 9) in a
temporary MLflow store, registers a CDS client whose JWK Set is a local file, and starts one
`personalize serve` worker. Then, one request at a time on a keep-alive connection (the
minimal client of benchmarks/serve.py, request bytes built before timing, every JWT signed
beforehand with its own jti), interleaved per round:

- `POST /v1/recommendations` with an API key (the reference route),
- `POST /cds-services/{id}` with a clinician API key and a full prefetch,
- the same with the client's ES384 JWT (signature, claims, jti written to the database).

Reports each route's median p50/p99 over the rounds and the JWT's cost against the key on
the same route. Writes benchmarks/results/cds.md (and prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from personalize import registry
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from serve import (
    ROOT,
    VENV_BIN,
    Connection,
    build_requests,
    free_port,
    stop,
    summarise,
    wait_ready,
)

RESULTS = ROOT / "benchmarks" / "results" / "cds.md"
PUBLIC = "https://cds.bench.test"
SERVICE_ID = "personalize-recommendation"
ISS = "https://ehr.bench.test"
LOCAL = "urn:personalize:feature"


def prefetch(patient: dict[str, Any]) -> dict[str, Any]:
    """A patient as an EHR would prefetch it: numeric features as local-code Observations."""
    observations = [
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOCAL, "code": name}]},
            "effectiveDateTime": "2026-10-01",
            "valueQuantity": {"value": value},
        }
        for name, value in patient.items()
        if isinstance(value, int | float) and name not in ("age", "mme")
    ]
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1968-01-01"}
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    bundle["entry"] = [{"resource": o} for o in observations]
    return {"patient": patient, "observations": bundle, "medications": None}


async def sequential(raws: list[bytes], host: str, port: int) -> tuple[list[float], int]:
    conn = Connection(host, port)
    latencies, failures = [], 0
    try:
        for raw in raws:
            start = time.perf_counter()
            r = await conn.request(raw)
            latencies.append(time.perf_counter() - start)
            failures += r.status != 200
    finally:
        conn.close()
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per route")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    command = " ".join(["python benchmarks/cds.py", *sys.argv[1:]])
    registry.quiet_mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="personalize-bench-cds-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
    print("training the demo model ...", flush=True)
    registry.train(spec, simulate("stamp", 770, 9).cohort, uri)
    name = spec.registry.model_name
    registry.promote(name, "candidate", uri)
    database_url = f"sqlite:///{tmp / 'service.db'}"
    from personalize.service.commands import keys_create

    _, secret = keys_create("clinician", "benchmark", database_url)

    private = ec.generate_private_key(ec.SECP384R1())
    kid = uuid.uuid4().hex[:12]
    algo = jwt.get_algorithm_by_name("ES384")
    jwk = {**json.loads(algo.to_jwk(private.public_key())), "kid": kid}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    clients = {"clients": [{"iss": ISS, "jwks_url": f"file://{tmp / 'jwks.json'}"}]}
    (tmp / "clients.yaml").write_text(yaml.safe_dump(clients))

    port = free_port()
    env = {
        **os.environ,
        "PERSONALIZE_DATABASE_URL": database_url,
        "PERSONALIZE_CACHE_DIR": str(tmp / "cache"),
        "PERSONALIZE_POLL_SECONDS": "0",
        "PERSONALIZE_LOG_LEVEL": "WARNING",
        "PERSONALIZE_CDS_CLIENTS": str(tmp / "clients.yaml"),
        "PERSONALIZE_PUBLIC_URL": PUBLIC,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / "serve.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [str(VENV_BIN / "personalize"), "serve", "--model", f"models:/{name}@champion",
             "--tracking-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", process, log, 180)
        people = simulate("stamp", 200, 3).cohort
        features = [c for c in people.columns if c in spec.features]
        rows: list[dict[str, Any]] = [
            {str(c): (v.item() if hasattr(v, "item") else v) for c, v in r.items() if v == v}
            for r in people[features].to_dict("records")
        ]
        key = {"Authorization": f"Bearer {secret}"}
        cds_url = f"{url}/cds-services/{SERVICE_ID}"

        def hook(i: int) -> dict[str, Any]:
            return {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/1", "patientId": "p1"},
                "prefetch": prefetch(rows[i % len(rows)]),
            }

        def signed(i: int) -> bytes:
            now = int(time.time())
            token = jwt.encode(
                {"iss": ISS, "aud": f"{PUBLIC}/cds-services/{SERVICE_ID}", "iat": now,
                 "exp": now + 300, "jti": uuid.uuid4().hex},
                private, algorithm="ES384", headers={"kid": kid},
            )  # fmt: skip
            auth = {"Authorization": f"Bearer {token}"}
            return build_requests(cds_url, [hook(i)], auth)[2][0]

        host, _, _ = build_requests(url, [{}], {})
        routes: dict[str, list[dict[str, float]]] = {
            "recommendation (key)": [],
            "cds (key)": [],
            "cds (JWT)": [],
        }
        for r in range(args.rounds):
            n = args.requests
            batches = {
                "recommendation (key)": build_requests(
                    url + "/v1/recommendations",
                    [{"patient": rows[i % len(rows)]} for i in range(n + 20)], key)[2],
                "cds (key)": build_requests(cds_url, [hook(i) for i in range(n + 20)], key)[2],
                "cds (JWT)": [signed(i) for i in range(n + 20)],  # signed before timing
            }  # fmt: skip
            for label, raws in batches.items():
                asyncio.run(sequential(raws[:20], host, port))  # warm-up
                latencies, failures = asyncio.run(sequential(raws[20:], host, port))
                if failures:
                    raise SystemExit(f"{label}: {failures} failed requests; see {log}")
                stats = summarise(latencies, sum(latencies))
                routes[label].append(stats)
                print(f"round {r + 1} {label}: p50 {stats['p50']:.2f} ms", flush=True)
    finally:
        stop(process)
    med = {
        k: {m: statistics.median(s[m] for s in v) for m in ("p50", "p99")}
        for k, v in routes.items()
    }
    lines = [
        "# CDS Hooks: the cost of a client's JWT",
        "",
        f"`{command}` — one `personalize serve` worker, one request at a time, "
        f"{args.requests} timed requests per route and round, median of {args.rounds} rounds; "
        "SYNTHETIC demo model.",
        "",
        "| route | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *[f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} |" for k, v in med.items()],
        "",
        f"JWT verification (ES384 signature, claims, jti insert) against a clinician key on "
        f"the same route: p50 {med['cds (JWT)']['p50'] - med['cds (key)']['p50']:+.2f} ms "
        f"({med['cds (JWT)']['p50'] / med['cds (key)']['p50']:.2f}x).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
