"""Serving benchmark: `personalize serve` against `mlflow models serve`, one run.

    .venv/bin/python benchmarks/serve.py [--requests 400] [--warmup 30] [--concurrency 1,8,32]
                                         [--workers 2] [--rounds 3]

1. Trains and promotes a demo model (SYNTHETIC STAMP cohort, 770 patients, seed 9) in a
   temporary MLflow store, and creates a clinician key in a temporary audit database.
2. Starts, on loopback with `--workers N` uvicorn worker processes each (default 2: the
   machine has 2 cores), `personalize serve` (models:/NAME@champion) and `mlflow models serve`
   (models:/NAME/VERSION, --env-manager local): the same registered model version; with
   N > 1 also `mlflow models serve --workers 1` (see mlflow-1w in the report).
   (`personalize serve --workers N` with N > 1 sets PROMETHEUS_MULTIPROC_DIR itself.)
3. Load: a minimal asyncio HTTP/1.1 keep-alive client (asyncio.open_connection, one
   connection per concurrent worker, request bytes built once before timing, responses
   framed by Content-Length or chunked transfer encoding), so that the load generator, which
   shares the same cores as the servers, takes little of the CPU: a general-purpose client
   such as httpx costs about 1 ms of CPU per request, stolen from the server. Both servers
   are measured with the same client. At each concurrency, --warmup requests then
   --requests timed requests, each one patient (rotating over 200 simulated patients'
   baseline covariates, NaN dropped); non-200 responses count as failures.
   `POST /v1/recommendations` does everything it does in production (auth, validation,
   predict with interval and top-3 drivers, the audit row in SQLite, the response);
   `POST /invocations` is MLflow's pyfunc predict (the same PersonalizeModel.predict with its
   default explain=3, so interval and drivers too), with no auth and no audit. Before the
   load, one probe request per server checks the response (personalize: a JSON object with
   `benefit` and `recommendation`; mlflow: JSON) and the run stops if it is wrong.
   Every level is run --rounds times (new connections each round); the report gives each
   figure's median over the rounds.
4. Floor: the in-process `PersonalizeModel.predict(one-row frame, explain=3)`, serially.

Writes benchmarks/results/serve.md (and prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the service package lives at the repository root

from personalize import registry  # noqa: E402
from personalize.config import load_pipeline  # noqa: E402
from personalize.data.simulate import simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve.md"
VENV_BIN = Path(sys.executable).parent
TARGET_P50_MS = 10.0
TARGET_P99_MS = 30.0
TARGET_CONCURRENCY = 8
REQUEST_TIMEOUT = 60.0  # seconds, per request


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
    if not latencies:
        return {"p50": math.nan, "p99": math.nan, "rps": 0.0}
    ms = np.asarray(latencies) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
    }


def median_stats(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (each round opens new connections, which the
    kernel spreads over the workers differently)."""
    return {key: float(np.median([run[key] for run in runs])) for key in runs[0]}


# ------------------------------------------------------------------ the HTTP/1.1 client


class StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before any response byte."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    framing: str  # "content-length", "chunked" or "eof"
    close: bool  # the server closes the connection after this response


def build_requests(
    url: str, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> tuple[str, int, list[bytes]]:
    """(host, port, the complete request bytes for each body), encoded once before timing."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    out = []
    for body in bodies:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        out.append(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode("latin-1") + payload)
    return host, port, out


def parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    """(HTTP version, status, headers) of a response head ending in a blank line."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return version, int(status), headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunked body: missing CRLF after a chunk")
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, if any
        pass
    return b"".join(parts)


@dataclass
class Connection:
    """One HTTP/1.1 keep-alive connection, reopened when the server closes it."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    used: int = 0  # responses read on the current connection
    opened: int = 0  # connections opened in all

    async def connect(self) -> None:
        self.close()
        # asyncio sets TCP_NODELAY on TCP transports
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.used = 0
        self.opened += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> Response:
        if self.writer is None:
            await self.connect()
        try:
            return await self._exchange(raw)
        except StaleConnection:  # the server dropped an idle keep-alive connection: retry once
            await self.connect()
            return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> Response:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            writer.write(raw)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.close()
            nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if self.used and nothing:
                raise StaleConnection from exc
            raise
        try:
            version, status, headers = parse_head(head)
            while 100 <= status < 200:  # interim responses (none expected)
                version, status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
            close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                framing, body = "chunked", await read_chunked(reader)
            elif "content-length" in headers:
                framing = "content-length"
                body = await reader.readexactly(int(headers["content-length"]))
            elif status in (204, 304):
                framing, body = "content-length", b""
            else:  # delimited by the end of the connection
                framing, body, close = "eof", await reader.read(), True
        except BaseException:
            self.close()
            raise
        self.used += 1
        if close:
            self.close()  # the next request reconnects
        return Response(status, headers, body, framing, close)


async def probe(url: str, body: dict[str, Any], headers: dict[str, str]) -> Response:
    """One request on a fresh connection (the sanity check before the load)."""
    host, port, (raw,) = build_requests(url, [body], headers)
    conn = Connection(host, port)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await conn.request(raw)
    finally:
        conn.close()


def check_probe(label: str, url: str, response: Response, keys: tuple[str, ...]) -> None:
    """Fail loudly unless the response is a 200 with a JSON body (an object with `keys`)."""
    text = response.body[:500].decode(errors="replace")
    if response.status != 200:
        raise RuntimeError(f"{label} {url}: status {response.status}: {text}")
    try:
        payload = json.loads(response.body)
    except ValueError as exc:
        raise RuntimeError(f"{label} {url}: the response is not JSON ({exc}): {text}") from None
    if keys:
        missing = [k for k in keys if not isinstance(payload, dict) or k not in payload]
        if missing:
            raise RuntimeError(f"{label} {url}: the response lacks {missing}: {text}")
    print(
        f"{label}: probe ok: {response.status}, {len(response.body)} body bytes framed by "
        f"{response.framing}, connection {'close' if response.close else 'keep-alive'}, "
        f"server {response.headers.get('server', '?')!r}",
        flush=True,
    )


async def load(
    url: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    warmup: int,
) -> tuple[dict[str, float], int]:
    host, port, raws = build_requests(url, bodies, headers)
    conns = [Connection(host, port) for _ in range(concurrency)]
    failures = 0

    async def run(total: int, record: list[float] | None) -> None:
        nonlocal failures
        counter = iter(range(total))

        async def worker(conn: Connection) -> None:
            nonlocal failures
            for i in counter:
                raw = raws[i % len(raws)]
                start = time.perf_counter()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        r = await conn.request(raw)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    conn.close()
                    failures += 1
                    if failures <= 3:
                        print(f"  {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                elapsed = time.perf_counter() - start
                if r.status != 200:
                    failures += 1
                    if failures <= 3:
                        text = r.body[:300].decode(errors="replace")
                        print(f"  {url}: {r.status} {text}", file=sys.stderr)
                if record is not None:
                    record.append(elapsed)

        await asyncio.gather(*(worker(conn) for conn in conns))

    try:
        for conn in conns:  # connect before the warm-up, as a keep-alive client pool would
            await conn.connect()
        await run(warmup, None)
        failures = 0
        opened = sum(conn.opened for conn in conns)
        latencies: list[float] = []
        cpu = time.thread_time()  # the event loop, i.e. the client (not background threads)
        start = time.perf_counter()
        await run(requests, latencies)
        wall = time.perf_counter() - start
        cpu = time.thread_time() - cpu
    finally:
        for conn in conns:
            conn.close()
    stats = summarise(latencies, wall)
    stats["client_cpu_ms"] = 1000.0 * cpu / max(requests, 1)
    stats["reconnects"] = float(sum(conn.opened for conn in conns) - opened)
    return stats, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="timed requests per level")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of every level; the report gives medians"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="uvicorn worker processes for EACH server (default 2: the machine has 2 cores)",
    )
    parser.add_argument(
        "--learners", nargs="+", help="replace the pipeline's training.learners (e.g. bcf)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers: need at least 1")
    workers = args.workers
    levels = [int(c) for c in args.concurrency.split(",")]
    command = " ".join(["python benchmarks/serve.py", *sys.argv[1:]])
    t0 = time.time()

    registry.quiet_mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="personalize-bench-serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
        if args.learners:
            training = spec.training.model_copy(update={"learners": args.learners})
            spec = spec.model_copy(update={"training": training})
        print("training the demo model ...", flush=True)
        reg = registry.train(spec, simulate("stamp", 770, 9).cohort, uri)
        name = spec.registry.model_name
        version, _checks = registry.promote(name, "candidate", uri)
        print(f"registered {name}/{version} (learner {reg.summary.get('learner')})", flush=True)

        database_url = f"sqlite:///{tmp / 'service.db'}"
        from personalize.service.commands import keys_create

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
        # `personalize serve --workers N` (N > 1) makes its own PROMETHEUS_MULTIPROC_DIR
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
                        "--host", "127.0.0.1", "--port", str(p_port), "--workers", str(workers),
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
                        "--host", "127.0.0.1", "--port", str(m_port), "--workers", str(workers),
                    ],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                )
            )  # fmt: skip
        p_url, m_url = f"http://127.0.0.1:{p_port}", f"http://127.0.0.1:{m_port}"
        wait_ready(p_url + "/readyz", procs[0], p_log, 180)
        wait_ready(m_url + "/ping", procs[1], m_log, 180)
        # uvicorn's several-worker socket lacks TCP_NODELAY (Kludex/uvicorn#3149; personalize
        # serve works around it, mlflow does not), which can delay responses: mlflow is also
        # measured with one worker, and compared at its best
        m1_url = None
        if workers > 1:
            m1_port, m1_log = free_port(), tmp / "mlflow-1.log"
            with m1_log.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [
                            str(VENV_BIN / "mlflow"), "models", "serve",
                            "-m", f"models:/{name}/{version}", "--env-manager", "local",
                            "--host", "127.0.0.1", "--port", str(m1_port), "--workers", "1",
                        ],
                        stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                    )
                )  # fmt: skip
            m1_url = f"http://127.0.0.1:{m1_port}"
            wait_ready(m1_url + "/ping", procs[2], m1_log, 180)
        print(f"servers ready after {time.time() - t0:.0f} s", flush=True)

        # ---------------------------------------------------------------- inputs
        model = registry.load_model(f"models:/{name}/{version}", uri)
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
        targets: list[tuple[str, str, list[dict[str, Any]], dict[str, str], tuple[str, ...]]] = [
            ("personalize", p_url + "/v1/recommendations", service_bodies, auth,
             ("benefit", "recommendation")),
            ("mlflow", m_url + "/invocations", mlflow_bodies, {}, ()),
        ]  # fmt: skip
        if m1_url is not None:
            targets.append(("mlflow-1w", m1_url + "/invocations", mlflow_bodies, {}, ()))
        labels = [t[0] for t in targets]
        for label, url, bodies, headers, keys in targets:  # sanity check: fail loudly
            check_probe(label, url, asyncio.run(probe(url, bodies[0], headers)), keys)
        results: dict[tuple[str, int], tuple[dict[str, float], int]] = {}
        rounds: dict[tuple[str, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for c in levels:
                for label, url, bodies, headers, _keys in targets:
                    stats, failures = asyncio.run(
                        load(url, bodies, headers, c, args.requests, args.warmup)
                    )
                    rounds.setdefault((label, c), []).append(stats)
                    previous = results.get((label, c), ({}, 0))[1]
                    results[(label, c)] = (median_stats(rounds[(label, c)]), previous + failures)
                    print(
                        f"round {r + 1} {label:12s} c={c:<3d} p50 {stats['p50']:7.2f} ms  "
                        f"p99 {stats['p99']:7.2f} ms  {stats['rps']:7.1f} req/s  failures "
                        f"{failures}  (client CPU {stats['client_cpu_ms']:.2f} ms/request,"
                        f" reconnects {stats['reconnects']:.0f})",
                        flush=True,
                    )
        load_avg = os.getloadavg()
    finally:
        for process in procs:
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- report
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `.venv/bin/{command}`",
        "",
        f"Machine: {os.cpu_count()} cores (shared), {platform.platform()}, Python "
        f"{platform.python_version()}; load average at the end "
        f"{load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (1/5/15 min). "
        f"Client, both servers and the floor share the same {os.cpu_count()} cores (the load "
        f"generator competes with the servers for CPU, so the figures are pessimistic).",
        "",
        f"Model: {name}/{version} (learner `{reg.summary.get('learner')}`), SYNTHETIC STAMP "
        f"cohort (770 patients, seed 9). Requests: one patient each, rotating over 200 "
        f"simulated patients; {args.warmup} warm-up then {args.requests} timed requests per "
        f"level; {workers} uvicorn worker process{'es' if workers != 1 else ''} per server "
        f"(`--workers {workers}` for both).",
        "",
        "Client: a minimal asyncio HTTP/1.1 keep-alive client (one connection per concurrent "
        "request, request bytes encoded once before timing, responses read by Content-Length "
        "or chunked framing), so that it takes little of the shared CPU (a general-purpose "
        "client such as httpx costs about 1 ms of CPU per request, taken from the servers); "
        "both servers are measured with the same client. Its own CPU in the timed runs: "
        + ", ".join(
            f"{label} c={c} {results[(label, c)][0]['client_cpu_ms']:.2f}"
            for c in levels
            for label in labels
        )
        + " ms per request.",
        "",
        "- **personalize** = `POST /v1/recommendations`: API key check, validation against "
        "the model's contract, `predict` with the 90% benefit interval and top-3 drivers, the "
        "audit row written to SQLite, the full JSON response.",
        "- **mlflow** = `mlflow models serve` `POST /invocations` on the same registered "
        "version (pyfunc predict with its default explain=3: interval and drivers too; no "
        "auth, no audit), with the same number of workers; **mlflow-1w** = the same with one "
        "worker. uvicorn's several-worker socket lacks TCP_NODELAY (Kludex/uvicorn#3149, "
        "which `personalize serve` works around), which can delay responses, so mlflow is "
        "measured both ways and throughput is compared with its better configuration.",
        "- **floor** = in-process `PersonalizeModel.predict(one-row frame, explain=3)`, serial.",
        "",
        f"Each figure is the median of {args.rounds} rounds (each round reconnects, and the "
        "kernel spreads a round's connections over the workers by hash, which moves the "
        "figures between rounds). Per round at concurrency "
        f"{TARGET_CONCURRENCY}, personalize p50 / p99 ms: "
        + ", ".join(
            f"{run['p50']:.2f} / {run['p99']:.2f}"
            for run in rounds.get(("personalize", TARGET_CONCURRENCY), [])
        )
        + ".",
        "",
        "| path | concurrency | p50 ms | p99 ms | throughput req/s | failures |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| floor (in-process predict) | 1 | {floor['p50']:.2f} | {floor['p99']:.2f} | "
        f"{floor['rps']:.1f} | 0 |",
    ]
    for c in levels:
        for label in labels:
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
        best = max((label for label in labels if label != "personalize"),
                   key=lambda label: results[(label, c)][0]["rps"])  # fmt: skip
        ms, _ = results[(best, c)]
        ok = ps["rps"] >= ms["rps"]
        lines.append(
            f"- throughput >= mlflow at concurrency {c}: {ps['rps']:.1f} vs {ms['rps']:.1f} "
            f"req/s ({best}; {ps['rps'] / ms['rps']:.2f}x), **{'met' if ok else 'NOT met'}**."
        )
    lines += [
        "",
        "How: each worker process has one scoring thread "
        "(`src/personalize/service/batching.py`). Requests hand it their validated patients; "
        "it scores everything queued at that moment in one "
        "`predict` call (the cost of one patient is mostly fixed: a pass over the learner's "
        "and all bootstrap members' trees, the calibration maps) and writes the batch's audit "
        "rows in one transaction, while the event loop keeps parsing, authenticating and "
        "answering. mlflow scores each request on its own. The floor is one patient through "
        "the public `predict` (a frame in, a frame out); the service skips the frame "
        "(`predict_columns`).",
    ]
    failed = sum(f for _, f in results.values())
    lines += [
        "",
        f"Non-200 responses in the timed runs: {failed}. Total run time {time.time() - t0:.0f} s.",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
