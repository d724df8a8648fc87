"""Soak benchmark: what a CDS client whose key server hangs costs the other callers, one run.

    .venv/bin/python benchmarks/hung_key_server.py [--seconds 40] [--connections 4] [--rate 80]
                                                   [--attack-rate 20]

Trains and promotes the demo model (SYNTHETIC STAMP cohort, 770 patients, seed 9) in a
temporary MLflow store, creates a clinician API key in a fresh PostgreSQL audit database
(127.0.0.1:5432, user postgres, PERSONALIZE_PG_URL; dropped at the end; SQLite when no
PostgreSQL answers, and the report says so), and registers three CDS clients: "ehr", whose
JWK Set (one ES384 key) is a local file, and "hung" and "hung-shutdown", whose JWK Set URL
is a loopback TCP server run here that accepts connections, reads nothing and never answers.
Starts `personalize serve --workers 2`, then runs two phases of --seconds each, with the
same load (the minimal keep-alive client of benchmarks/serve.py, request bytes built and
every JWT signed with its own jti before the phase):

- --connections keep-alive connections from 127.0.0.1, together --rate requests/s (paced;
  a late request is sent at once, never bunched), alternating the ehr client's JWT-signed
  `POST /cds-services/{id}` patient-view call with a full prefetch and the API-key
  `POST /v1/recommendations`; and `GET /healthz` every 0.5 s on a connection of its own;
- "baseline": nothing else;
- "hung key server": also an attacker on 127.0.0.9 sending --attack-rate requests/s, a new
  connection each and as many in flight as it takes, naming the hung client with a fresh
  made-up `kid` each (the first wait for the key fetch's deadline; later ones meet the
  breaker, and past the failure limit per address and client, 429).

Then "shutdown": one more call naming hung-shutdown (a fetch of the hung server in flight)
and `stop` of the server (SIGTERM) while it waits, timed. Reports each kind's p50, p99, max,
count and non-200 count in both phases with the ratios hung/baseline, the attacker's
statuses and latencies, and the shutdown. Writes benchmarks/results/hung-key-server.md (and
prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cds import PUBLIC, SERVICE_ID, prefetch
from personalize import registry
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from serve import (
    REQUEST_TIMEOUT,
    ROOT,
    VENV_BIN,
    Connection,
    build_requests,
    check_probe,
    free_port,
    probe,
    stop,
    summarise,
    wait_ready,
)

RESULTS = ROOT / "benchmarks" / "results" / "hung-key-server.md"
PG = os.environ.get("PERSONALIZE_PG_URL", "postgresql://postgres@127.0.0.1:5432")
EHR = "https://ehr.bench.test"
HUNG = "https://hung.bench.test"
HUNG_SHUTDOWN = "https://hung-shutdown.bench.test"
ATTACKER = "127.0.0.9"
JWT_KIND, KEY_KIND, HEALTH_KIND = "patient-view (JWT)", "recommendation (API key)", "healthz"
KINDS = (JWT_KIND, KEY_KIND, HEALTH_KIND)
HEALTH_INTERVAL = 0.5  # seconds
WINDOW = 5.0  # seconds, the report's time windows
ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


# ------------------------------------------------------------------ the hung key server


class HungServer:
    """A loopback TCP server that accepts connections, reads nothing and never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.listener.settimeout(0.2)
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/jwks.json"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for conn in self._held:
            conn.close()


# ------------------------------------------------------------------ the audit database


def postgres_database() -> str | None:
    """A fresh PostgreSQL database's SQLAlchemy URL, or None when no server answers."""
    try:
        import psycopg

        with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3) as admin:
            name = f"personalize_bench_{uuid.uuid4().hex[:10]}"
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no driver, no server, no rights: SQLite instead
        print(f"no PostgreSQL at {PG} ({type(exc).__name__}: {exc}); SQLite", flush=True)
        return None
    return f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def drop_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version() -> str:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", connect_timeout=3) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


# ------------------------------------------------------------------ the load


@dataclass
class BoundConnection(Connection):
    """A keep-alive connection from a chosen loopback address."""

    local: str = "127.0.0.1"

    async def connect(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(self.local, 0)
        )
        self.used = 0
        self.opened += 1


Sample = tuple[float, float, str]  # (sent at, seconds, status or the exception's name)


async def timed(conn: Connection, raw: bytes, out: list[Sample]) -> None:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status = str((await conn.request(raw)).status)
    except ERRORS as exc:
        conn.close()
        status = type(exc).__name__
    out.append((start, time.perf_counter() - start, status))


@dataclass
class Phase:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {k: [] for k in KINDS})
    attack: list[Sample] = field(default_factory=list)
    origin: float = 0.0  # time.perf_counter() at the start
    wall: float = 0.0  # seconds the load ran (the attacker's last answers not included)
    signed_late: int = 0  # JWTs signed during the phase (the pre-signed ones ran out)


async def run_phase(
    host: str,
    port: int,
    seconds: float,
    connections: int,
    rate: float,
    jwts: Iterator[bytes],
    sign_late: Callable[[], bytes],
    keyed: list[bytes],
    attack: list[bytes] | None,
    attack_rate: float,
) -> Phase:
    loop = asyncio.get_running_loop()
    phase = Phase()
    health = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")
    start = loop.time()
    end = start + seconds
    phase.origin = time.perf_counter()

    async def paced(interval: float, send: Callable[[int], Any], offset: float = 0.0) -> None:
        due, i = start + offset, 0
        while due < end:
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            await send(i)
            i += 1
            due = max(due + interval, loop.time())  # late: at once, never bunched

    async def loader(k: int) -> None:
        conn = Connection(host, port)

        async def send(i: int) -> None:
            if (i + k) % 2 == 0:
                raw = next(jwts, None)
                if raw is None:
                    phase.signed_late += 1
                    raw = sign_late()
                await timed(conn, raw, phase.samples[JWT_KIND])
            else:
                await timed(
                    conn, keyed[(i * connections + k) % len(keyed)], phase.samples[KEY_KIND]
                )

        try:
            await paced(connections / rate, send, offset=k / rate)
        finally:
            conn.close()

    async def prober() -> None:
        conn = Connection(host, port)
        try:
            await paced(HEALTH_INTERVAL, lambda i: timed(conn, health, phase.samples[HEALTH_KIND]))
        finally:
            conn.close()

    async def attacker() -> None:
        assert attack is not None
        tasks: list[asyncio.Task[None]] = []

        async def one(raw: bytes) -> None:
            conn = BoundConnection(host, port, local=ATTACKER)
            try:
                await timed(conn, raw, phase.attack)
            finally:
                conn.close()

        async def launch(i: int) -> None:  # does not wait for the answer
            tasks.append(asyncio.create_task(one(attack[i % len(attack)])))

        await paced(1 / attack_rate, launch)
        await asyncio.gather(*tasks)

    async def load() -> None:
        await asyncio.gather(*(loader(k) for k in range(connections)), prober())
        phase.wall = loop.time() - start

    await asyncio.gather(load(), *([attacker()] if attack is not None else []))
    return phase


async def shutdown(
    host: str, port: int, raw: bytes, process: subprocess.Popen[bytes]
) -> tuple[Sample, float, int | None]:
    """One call naming the hung-shutdown client; while its key fetch is in flight, `stop`
    the server: (the call's outcome, seconds `stop` took, the server's exit code)."""
    out: list[Sample] = []
    conn = BoundConnection(host, port, local="127.0.0.11")
    call = asyncio.create_task(timed(conn, raw, out))
    await asyncio.sleep(1.0)  # the fetch of the hung key server is in flight now
    start = time.perf_counter()
    await asyncio.to_thread(stop, process)
    took = time.perf_counter() - start
    await call
    conn.close()
    return out[0], took, process.returncode


# ------------------------------------------------------------------ the report


def stats(samples: list[Sample]) -> dict[str, float]:
    latencies = [s for _, s, _ in samples]
    out = summarise(latencies, 1.0)
    out["max"] = 1000.0 * max(latencies) if latencies else math.nan
    out["n"] = len(samples)
    out["bad"] = sum(status != "200" for _, _, status in samples)
    return out


def sent_within(samples: list[Sample], origin: float, lo: float, hi: float) -> list[Sample]:
    """The samples sent from `lo` to `hi` seconds after `origin`."""
    return [x for x in samples if lo <= x[0] - origin < hi]


def ms(value: float) -> str:
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def report(
    command: str,
    args: argparse.Namespace,
    phases: dict[str, Phase],
    database: str,
    shut: tuple[Sample, float, int | None],
    hung_accepted: int,
    log_text: str,
    loads: list[tuple[float, float, float]],
) -> list[str]:
    base, hung = (
        {k: stats(phases[p].samples[k]) for k in KINDS} for p in ("baseline", "hung key server")
    )
    lines = [
        "# A CDS client whose key server hangs: what it costs the other callers",
        "",
        f"Command: `.venv/bin/{command}`",
        "",
        f"Machine: {os.cpu_count()} cores (shared with other work), {platform.platform()}, "
        f"Python {platform.python_version()}; load average before / after the run "
        f"{loads[0][0]:.2f} / {loads[1][0]:.2f} (1 min). Client, server, database and hung key "
        f"server share the same cores. SYNTHETIC demo model (STAMP cohort, 770 patients, "
        f"seed 9).",
        "",
        f"Server: `personalize serve --workers 2`, audit database {database}. CDS clients: "
        f'"ehr" (JWK Set a local file, ES384), "hung" and "hung-shutdown" (JWK Set URL a '
        f"loopback server that accepts connections and never answers); the service's "
        f"defaults: 5 s fetch deadline, 30 s breaker, 30 failures per address and client per "
        f"60 s.",
        "",
        f"Load in both phases ({args.seconds:g} s each, baseline first): {args.connections} "
        f"keep-alive connections from 127.0.0.1, together {args.rate:g} requests/s (paced), "
        f"alternating the ehr client's JWT patient-view call (full prefetch, each JWT signed "
        f"beforehand with its own jti) and the API-key recommendation; `GET /healthz` every "
        f"{HEALTH_INTERVAL:g} s on its own connection (so its p99 is nearly its max). In the "
        f"second phase also the attacker: "
        f"{args.attack_rate:g} requests/s from {ATTACKER}, a new connection each, naming the "
        f"hung client with a fresh made-up kid each.",
        "",
        "| kind | phase | requests | non-200 | p50 ms | p99 ms | max ms | p50 hung/baseline "
        "| p99 hung/baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in KINDS:
        b, h = base[kind], hung[kind]
        lines.append(
            f"| {kind} | baseline | {b['n']:.0f} | {b['bad']:.0f} | {ms(b['p50'])} | "
            f"{ms(b['p99'])} | {ms(b['max'])} | | |"
        )
        lines.append(
            f"| {kind} | hung key server | {h['n']:.0f} | {h['bad']:.0f} | {ms(h['p50'])} | "
            f"{ms(h['p99'])} | {ms(h['max'])} | {h['p50'] / b['p50']:.2f}x | "
            f"{h['p99'] / b['p99']:.2f}x |"
        )
    attack = phases["hung key server"].attack
    a = stats(attack)
    statuses = collections.Counter(status for _, _, status in attack)
    waited = sorted(s for _, s, _ in attack if s >= 1.0)
    served = {p: sum(len(phases[p].samples[k]) for k in KINDS) / phases[p].wall for p in phases}
    ratios = [hung[k][q] / base[k][q] for k in KINDS for q in ("p50", "p99")]
    lines += [
        "",
        f"In the hung phase the other callers got {sum(hung[k]['bad'] for k in KINDS):.0f} "
        f"non-200 answers (baseline {sum(base[k]['bad'] for k in KINDS):.0f}); their p50 and "
        f"p99 were {min(ratios):.2f}x to {max(ratios):.2f}x the baseline's (1.00x: unchanged).",
    ]
    lines += [
        "",
        f"Throughput (all three kinds): baseline {served['baseline']:.1f} requests/s, hung key "
        f"server {served['hung key server']:.1f} requests/s. JWTs signed during a phase (the "
        f"pre-signed ones ran out): {phases['baseline'].signed_late} / "
        f"{phases['hung key server'].signed_late}.",
        "",
        f"Attacker: {a['n']:.0f} requests; statuses "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        + f"; latency p50 {ms(a['p50'])} ms, p99 {ms(a['p99'])} ms, max {ms(a['max'])} ms; "
        f"{len(waited)} took 1 s or more"
        + (f" ({ms(1000 * waited[0])} to {ms(1000 * waited[-1])} ms)" if waited else "")
        + f". The hung key server accepted {hung_accepted} connections (key fetches) in all.",
        "",
        f"Over time ({WINDOW:g} s windows by when a request was sent; load = the JWT and API-key "
        "calls together; attacker: sent, and of those answered within 1 s):",
        "",
        "| seconds | load p50 ms baseline / hung | load p99 ms baseline / hung "
        "| load max ms baseline / hung | healthz max ms baseline / hung "
        "| attacker sent / within 1 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in range(math.ceil(args.seconds / WINDOW)):
        lo, hi = w * WINDOW, (w + 1) * WINDOW
        load_w, health_w = {}, {}
        for p, phase in phases.items():
            calls = phase.samples[JWT_KIND] + phase.samples[KEY_KIND]
            load_w[p] = stats(sent_within(calls, phase.origin, lo, hi))
            health_w[p] = stats(sent_within(phase.samples[HEALTH_KIND], phase.origin, lo, hi))
        sent = sent_within(attack, phases["hung key server"].origin, lo, hi)
        b, h = load_w["baseline"], load_w["hung key server"]
        lines.append(
            f"| {lo:g}-{hi:g} | {ms(b['p50'])} / {ms(h['p50'])} | {ms(b['p99'])} / "
            f"{ms(h['p99'])} | {ms(b['max'])} / {ms(h['max'])} | "
            f"{ms(health_w['baseline']['max'])} / {ms(health_w['hung key server']['max'])} | "
            f"{len(sent)} / {sum(x[1] < 1.0 for x in sent)} |"
        )
    (_, took, status), seconds, code = shut
    tracebacks = log_text.count("Traceback")
    lines += [
        "",
        f"Shutdown: a call naming hung-shutdown sent, 1 s later SIGTERM; `stop` took "
        f"{seconds:.2f} s (exit code {code}); the call got {status} after {took:.2f} s.",
        "",
        f"Server log: {tracebacks} tracebacks.",
        "",
    ]
    return lines


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="duration of each phase")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    parser.add_argument("--rate", type=float, default=80.0, help="their requests/s together")
    parser.add_argument("--attack-rate", type=float, default=20.0, help="attacker requests/s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = " ".join(["python benchmarks/hung_key_server.py", *sys.argv[1:]])
    loads = [os.getloadavg()]
    registry.quiet_mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="personalize-bench-hung-"))
    hung_server = HungServer()
    pg_url = postgres_database()
    process: subprocess.Popen[bytes] | None = None
    try:
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
        print("training the demo model ...", flush=True)
        registry.train(spec, simulate("stamp", 770, 9).cohort, uri)
        name = spec.registry.model_name
        registry.promote(name, "candidate", uri)
        if pg_url is not None:
            database_url, database = pg_url, f"PostgreSQL {postgres_version()}"
        else:
            database_url = f"sqlite:///{tmp / 'service.db'}"
            database = "SQLite (**no PostgreSQL was reachable**)"
        from personalize.service.commands import keys_create

        _, secret = keys_create("clinician", "benchmark", database_url)

        private = ec.generate_private_key(ec.SECP384R1())
        stranger = ec.generate_private_key(ec.SECP384R1())  # signs the attacker's tokens
        kid = uuid.uuid4().hex[:12]
        algo = jwt.get_algorithm_by_name("ES384")
        jwk = {**json.loads(algo.to_jwk(private.public_key())), "kid": kid}
        (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        clients = {
            "clients": [
                {"iss": EHR, "jwks_url": f"file://{tmp / 'jwks.json'}"},
                {"iss": HUNG, "jwks_url": hung_server.url},
                {"iss": HUNG_SHUTDOWN, "jwks_url": hung_server.url},
            ]
        }
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
                 "--tracking-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "2"],
                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", process, log, 180)

        people = simulate("stamp", 200, 3).cohort
        features = [c for c in people.columns if c in spec.features]
        rows: list[dict[str, Any]] = [
            {str(c): (v.item() if hasattr(v, "item") else v) for c, v in r.items() if v == v}
            for r in people[features].to_dict("records")
        ]
        cds_url = f"{url}/cds-services/{SERVICE_ID}"
        aud = f"{PUBLIC}/cds-services/{SERVICE_ID}"
        counter = iter(range(10**9))

        def hook(i: int) -> dict[str, Any]:
            return {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/1", "patientId": "p1"},
                "prefetch": prefetch(rows[i % len(rows)]),
            }

        def signed(iss: str, key: ec.EllipticCurvePrivateKey, key_id: str) -> bytes:
            now = int(time.time())
            token = jwt.encode(
                {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex},
                key, algorithm="ES384", headers={"kid": key_id},
            )  # fmt: skip
            auth = {"Authorization": f"Bearer {token}"}
            return build_requests(cds_url, [hook(next(counter))], auth)[2][0]

        def ehr_call() -> bytes:
            return signed(EHR, private, kid)

        def attack_call() -> bytes:  # a fresh made-up kid each
            return signed(HUNG, stranger, uuid.uuid4().hex[:12])

        host, _, keyed = build_requests(
            url + "/v1/recommendations",
            [{"patient": r} for r in rows],
            {"Authorization": f"Bearer {secret}"},
        )
        check_probe("JWT patient-view", cds_url, asyncio.run(probe_raw(host, port, ehr_call())),
                    ("cards",))  # fmt: skip
        check_probe(
            "API-key recommendation",
            url + "/v1/recommendations",
            asyncio.run(probe(url + "/v1/recommendations", {"patient": rows[0]},
                              {"Authorization": f"Bearer {secret}"})),
            ("benefit", "recommendation"),
        )  # fmt: skip

        def phase(label: str, seconds: float, attacked: bool) -> Phase:
            jwt_count = math.ceil(args.rate / 2 * seconds * 1.2) + 20
            jwts = [ehr_call() for _ in range(jwt_count)]  # signed before the phase
            attack = None
            if attacked:
                attack = [attack_call() for _ in range(math.ceil(args.attack_rate * seconds) + 5)]
            print(f"{label}: {seconds:g} s ...", flush=True)
            result = asyncio.run(
                run_phase(host, port, seconds, args.connections, args.rate, iter(jwts),
                          ehr_call, keyed, attack, args.attack_rate)
            )  # fmt: skip
            for kind in KINDS:
                s = stats(result.samples[kind])
                print(
                    f"  {kind}: n {s['n']:.0f}, non-200 {s['bad']:.0f}, p50 {ms(s['p50'])} ms, "
                    f"p99 {ms(s['p99'])} ms, max {ms(s['max'])} ms",
                    flush=True,
                )
            if result.attack:
                statuses = collections.Counter(status for _, _, status in result.attack)
                print(f"  attacker: {dict(statuses)}", flush=True)
            return result

        phase("warm-up", 5.0, attacked=False)
        phases = {
            "baseline": phase("baseline", args.seconds, attacked=False),
            "hung key server": phase("hung key server", args.seconds, attacked=True),
        }
        last = signed(HUNG_SHUTDOWN, stranger, uuid.uuid4().hex[:12])
        print("shutdown ...", flush=True)
        shut = asyncio.run(shutdown(host, port, last, process))
        loads.append(os.getloadavg())
        log_text = log.read_text(errors="replace")
    finally:
        if process is not None:
            stop(process)
        hung_server.close()
        if pg_url is not None:
            drop_postgres(pg_url)
        shutil.rmtree(tmp, ignore_errors=True)

    lines = report(command, args, phases, database, shut, hung_server.accepted, log_text, loads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print()
    print("\n".join(lines))


async def probe_raw(host: str, port: int, raw: bytes) -> Any:
    conn = Connection(host, port)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await conn.request(raw)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
