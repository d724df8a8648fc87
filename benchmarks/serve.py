"""Serving benchmark (issue 5): `personalize serve` against `mlflow models serve`, one run.

    .venv/bin/python benchmarks/serve.py [--requests 400] [--warmup 30] [--concurrency 1,8,32]

1. Trains and promotes a demo model (SYNTHETIC STAMP cohort, 770 patients, seed 7) in a
   temporary MLflow store, and creates a clinician key in a temporary audit database.
2. Starts, on loopback with one worker each, `personalize serve` (models:/NAME@champion) and
   `mlflow models serve` (models:/NAME/VERSION, --env-manager local): the same registered
   model version.
3. Load: asyncio + one keep-alive httpx.AsyncClient per level; at each concurrency, --warmup
   requests then --requests timed requests, each one patient (rotating over 200 simulated
   patients' baseline covariates, NaN dropped). `POST /v1/recommendations` does everything
   it does in production (auth, validation, predict with interval and top-3 drivers, the
   audit row in SQLite, the response); `POST /invocations` is MLflow's pyfunc predict (the
   same PersonalizeModel.predict with its default explain=3, so interval and drivers too),
   with no auth and no audit.
4. Floor: the in-process `PersonalizeModel.predict(one-row frame, explain=3)`, serially.

Writes benchmarks/results/serve.md (and prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the service package lives at the repository root

from personalize import tracking  # noqa: E402
from personalize.cohort.pipeline import load_pipeline  # noqa: E402
from personalize.cohort.simulate import simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve.md"
VENV_BIN = Path(sys.executable).parent
TARGET_P50_MS = 10.0
TARGET_P99_MS = 30.0
TARGET_CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{url} not ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def patients(columns: list[str], numeric: set[str], n: int = 200) -> list[dict[str, Any]]:
    """Baseline covariates of n simulated patients as JSON types (NaN dropped)."""
    cohort = simulate("stamp", n, 3).cohort
    out = []
    for _, row in cohort[columns].iterrows():
        patient: dict[str, Any] = {}
        for col in columns:
            value = row[col]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if pd.isna(value):
                continue
            if col in numeric:
                f = float(value)
                patient[col] = int(f) if f.is_integer() else f
            else:
                patient[col] = str(value)
        out.append(patient)
    return out


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
    }


async def load(
    url: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    warmup: int,
) -> tuple[dict[str, float], int]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0, headers=headers) as client:
        failures = 0

        async def run(total: int, record: list[float] | None) -> None:
            nonlocal failures
            counter = iter(range(total))

            async def worker() -> None:
                nonlocal failures
                for i in counter:
                    body = bodies[i % len(bodies)]
                    start = time.perf_counter()
                    r = await client.post(url, json=body)
                    elapsed = time.perf_counter() - start
                    if r.status_code != 200:
                        failures += 1
                        if failures <= 3:
                            print(f"  {url}: {r.status_code} {r.text[:300]}", file=sys.stderr)
                    if record is not None:
                        record.append(elapsed)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(warmup, None)
        failures = 0
        latencies: list[float] = []
        start = time.perf_counter()
        await run(requests, latencies)
        wall = time.perf_counter() - start
    return summarise(latencies, wall), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="timed requests per level")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    command = " ".join(["python benchmarks/serve.py", *sys.argv[1:]])
    t0 = time.time()

    tracking.quiet_mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="personalize-bench-serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
        print("training the demo model ...", flush=True)
        reg = tracking.train(spec, simulate("stamp", 770, 7).cohort, uri)
        name = spec.registry.model_name
        version, _checks = tracking.promote(name, "candidate", uri)
        print(f"registered {name}/{version} (learner {reg.summary.get('learner')})", flush=True)

        database_url = f"sqlite:///{tmp / 'service.db'}"
        from service.commands import keys_create

        _key_id, secret = keys_create("clinician", "benchmark", database_url)

        # ---------------------------------------------------------------- servers
        env = {
            **os.environ,
            "PERSONALIZE_DATABASE_URL": database_url,
            "PERSONALIZE_CACHE_DIR": str(tmp / "cache"),
            "PERSONALIZE_POLL_SECONDS": "0",
            "PERSONALIZE_LOG_LEVEL": "WARNING",
            "MLFLOW_TRACKING_URI": uri,
            # mlflow models serve runs `exec uvicorn ...` through bash: the venv's bin first
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        p_port, m_port = free_port(), free_port()
        p_log, m_log = tmp / "personalize.log", tmp / "mlflow.log"
        with p_log.open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    [
                        str(VENV_BIN / "personalize"), "serve",
                        "--model", f"models:/{name}@champion",
                        "--tracking-uri", uri,
                        "--host", "127.0.0.1", "--port", str(p_port), "--workers", "1",
                    ],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                )
            )  # fmt: skip
        with m_log.open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    [
                        str(VENV_BIN / "mlflow"), "models", "serve",
                        "-m", f"models:/{name}/{version}", "--env-manager", "local",
                        "--host", "127.0.0.1", "--port", str(m_port), "--workers", "1",
                    ],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                )
            )  # fmt: skip
        p_url, m_url = f"http://127.0.0.1:{p_port}", f"http://127.0.0.1:{m_port}"
        wait_ready(p_url + "/readyz", procs[0], p_log, 180)
        wait_ready(m_url + "/ping", procs[1], m_log, 180)
        print(f"servers ready after {time.time() - t0:.0f} s", flush=True)

        # ---------------------------------------------------------------- inputs
        model = tracking.load_model(f"models:/{name}/{version}", uri)
        schema = model.feature_schema()
        columns = list(schema)
        pref = spec.cohort.preference
        if pref and pref not in columns:
            columns.append(pref)
        cohort_dtypes = simulate("stamp", 5, 3).cohort.dtypes
        numeric = {c for c in columns if pd.api.types.is_numeric_dtype(cohort_dtypes[c])}
        people = patients(columns, numeric)
        service_bodies = [
            {"patient": p, "patient_ref": f"BENCH-{i:04d}"} for i, p in enumerate(people)
        ]
        mlflow_bodies = []
        for p in people:
            row = {c: (float(p[c]) if c in numeric else p[c]) if c in p else None for c in columns}
            mlflow_bodies.append(
                {"dataframe_split": {"columns": columns, "data": [[row[c] for c in columns]]}}
            )

        # ---------------------------------------------------------------- floor
        frames = [pd.DataFrame([{c: p.get(c) for c in columns}]) for p in people]
        for c in numeric:  # same dtypes as the service's frames (floats; None -> NaN)
            for f in frames:
                f[c] = f[c].astype(float)
        for f in frames[:30]:
            model.predict(f, explain=3)
        floor_lat = []
        start = time.perf_counter()
        for i in range(args.requests):
            s = time.perf_counter()
            model.predict(frames[i % len(frames)], explain=3)
            floor_lat.append(time.perf_counter() - s)
        floor = summarise(floor_lat, time.perf_counter() - start)
        print(f"floor: p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms", flush=True)

        # ---------------------------------------------------------------- load
        auth = {"Authorization": f"Bearer {secret}"}
        results: dict[tuple[str, int], tuple[dict[str, float], int]] = {}
        for c in levels:
            for label, url, bodies, headers in (
                ("personalize", p_url + "/v1/recommendations", service_bodies, auth),
                ("mlflow", m_url + "/invocations", mlflow_bodies, {}),
            ):
                stats, failures = asyncio.run(
                    load(url, bodies, headers, c, args.requests, args.warmup)
                )
                results[(label, c)] = (stats, failures)
                print(
                    f"{label:12s} c={c:<3d} p50 {stats['p50']:7.2f} ms  p99 {stats['p99']:7.2f} ms"
                    f"  {stats['rps']:7.1f} req/s  failures {failures}",
                    flush=True,
                )
        load_avg = os.getloadavg()
    finally:
        for process in procs:
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- report
    lines = [
        "# Serving benchmark (issue 5)",
        "",
        f"Command: `.venv/bin/{command}`",
        "",
        f"Machine: {os.cpu_count()} cores (shared), {platform.platform()}, Python "
        f"{platform.python_version()}; load average at the end "
        f"{load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (1/5/15 min). "
        f"Client, both servers and the floor share the same 2 cores (the load generator "
        f"competes with the server for CPU, so the figures are pessimistic).",
        "",
        f"Model: {name}/{version} (learner `{reg.summary.get('learner')}`), SYNTHETIC STAMP "
        f"cohort (770 patients, seed 7). Requests: one patient each, rotating over 200 "
        f"simulated patients; {args.warmup} warm-up then {args.requests} timed requests per "
        f"level; one uvicorn worker per server; keep-alive httpx client.",
        "",
        "- **personalize** = `POST /v1/recommendations`: API key check, validation against "
        "the model's contract, `predict` with the 90% benefit interval and top-3 drivers, the "
        "audit row written to SQLite, the full JSON response.",
        "- **mlflow** = `mlflow models serve` `POST /invocations` on the same registered "
        "version (pyfunc predict with its default explain=3: interval and drivers too; no "
        "auth, no audit).",
        "- **floor** = in-process `PersonalizeModel.predict(one-row frame, explain=3)`, serial.",
        "",
        "| path | concurrency | p50 ms | p99 ms | throughput req/s | failures |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| floor (in-process predict) | 1 | {floor['p50']:.2f} | {floor['p99']:.2f} | "
        f"{floor['rps']:.1f} | 0 |",
    ]
    for c in levels:
        for label in ("personalize", "mlflow"):
            stats, failures = results[(label, c)]
            lines.append(
                f"| {label} | {c} | {stats['p50']:.2f} | {stats['p99']:.2f} | "
                f"{stats['rps']:.1f} | {failures} |"
            )
    lines += ["", "## Targets", ""]
    if TARGET_CONCURRENCY in levels:
        ps, _ = results[("personalize", TARGET_CONCURRENCY)]
        ok50, ok99 = ps["p50"] < TARGET_P50_MS, ps["p99"] < TARGET_P99_MS
        lines.append(
            f"- p50 < {TARGET_P50_MS:.0f} ms at concurrency {TARGET_CONCURRENCY}: "
            f"{ps['p50']:.2f} ms, **{'met' if ok50 else 'NOT met'}**."
        )
        lines.append(
            f"- p99 < {TARGET_P99_MS:.0f} ms at concurrency {TARGET_CONCURRENCY}: "
            f"{ps['p99']:.2f} ms, **{'met' if ok99 else 'NOT met'}**."
        )
    for c in levels:
        ps, _ = results[("personalize", c)]
        ms, _ = results[("mlflow", c)]
        ok = ps["rps"] >= ms["rps"]
        lines.append(
            f"- throughput >= mlflow at concurrency {c}: {ps['rps']:.1f} vs {ms['rps']:.1f} "
            f"req/s ({ps['rps'] / ms['rps']:.2f}x), **{'met' if ok else 'NOT met'}**."
        )
    needed = TARGET_CONCURRENCY / (TARGET_P50_MS / 1000.0)
    lines += [
        "",
        f"What bounds it: with {TARGET_CONCURRENCY} requests always in flight, a p50 under "
        f"{TARGET_P50_MS:.0f} ms needs about {TARGET_CONCURRENCY} / {TARGET_P50_MS / 1000:.3f} s "
        f"= {needed:.0f} req/s of throughput (Little's law), i.e. about "
        f"{1000 / needed * (os.cpu_count() or 1):.1f} ms of CPU per request on "
        f"{os.cpu_count()} cores. The in-process predict alone (the floor, no HTTP) takes "
        f"{floor['p50']:.1f} ms at p50 for one patient, so "
        + (
            "the target cannot be met by the HTTP layer: `PersonalizeModel.predict` for one "
            "patient has to get faster first."
            if floor["p50"] * 1.0 > 1000 / needed * (os.cpu_count() or 1)
            else "the floor leaves room for the HTTP layer."
        ),
    ]
    failed = sum(f for _, f in results.values())
    lines += [
        "",
        f"Non-200 responses in the timed runs: {failed}. Total run time {time.time() - t0:.0f} s.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
