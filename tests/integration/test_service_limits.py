"""What one request may make `personalize serve --workers 2` hold, and whose address it is:
request lines and headers over the byte or count limit get 431 and a closed connection
before they are buffered (a worker's peak memory barely moves, /healthz keeps answering
while oversized headers stream in), bodies are limited per route, and X-Forwarded-For
counts only from a proxy the settings name, so failed key checks from loopback cannot
escape the per-address limit by forging it."""

from __future__ import annotations

import json
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from support.registry import TrainedRegistry
from support.servers import Server, client_from, new_key, serve
from support.service import STAMP_PATIENT

pytestmark = pytest.mark.slow

MAX_HEADER_BYTES = 16 * 1024  # the defaults
MAX_HEADERS = 100
FAILURES_PER_CLIENT = 5
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[Server]:
    """Two workers with the default limits and no trusted proxy."""
    env = {"PERSONALIZE_AUTH_FAILURES_PER_CLIENT": str(FAILURES_PER_CLIENT)}
    with serve(tmp_path_factory.mktemp("limits"), trained_registry, workers=2, env=env) as s:
        yield s


# --------------------------------------------------------------------------- helpers


def address(server: Server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    sock.settimeout(10)
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return answer
        if not chunk:
            return answer
        answer += chunk


def raw_request(server: Server, headers: list[tuple[str, str]]) -> bytes:
    """GET /healthz with exactly these headers (and Host), sent at once; the answer."""
    lines = ["GET /healthz HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_answer(sock)


def stream_header(
    server: Server, total: int, chunk: int = 64 * 1024, pause: float = 0.002
) -> tuple[bytes, int]:
    """A GET whose one header grows towards `total` bytes, `chunk` at a time with a
    `pause`, until the server answers or drops the connection: its answer and the header
    bytes sent."""
    filler = b"a" * chunk
    sent = 0
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
        while sent < total:
            try:
                sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk
            if select.select([sock], [], [], pause)[0]:
                break
        return read_answer(sock), sent


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def assert_431(answer: bytes, variable: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 431, answer[:300]
    lines = head.lower().split(b"\r\n")
    assert b"connection: close" in lines and b"x-content-type-options: nosniff" in lines
    assert variable in json.loads(body)["detail"]


def workers(server: Server) -> list[int]:
    """The worker processes: the children uvicorn spawned from the `serve` process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server.process.pid and b"spawn_main" in command:
            found.append(int(entry.name))
    assert len(found) == 2, found
    return found


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Sets the process's peak resident memory (VmHWM) to its current one."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def failed_check(client: httpx.Client, server: Server, forwarded: str) -> int:
    """A key check with an unknown key id (it fails), claiming to be from `forwarded`."""
    key = f"pz_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded}
    return client.get(f"{server.url}/v1/model", headers=headers).status_code


def random_address(network: str = "198.51.100") -> str:
    """An address in a /24 (TEST-NET: 192.0.2, 198.51.100, 203.0.113)."""
    return f"{network}.{secrets.randbelow(254) + 1}"


# --------------------------------------------------------------------------- headers


def test_an_oversized_header_is_refused_before_it_is_buffered(server: Server) -> None:
    pids = workers(server)
    before = {pid: memory_kb(pid, "VmRSS") for pid in pids}
    for pid in pids:
        reset_peak(pid)

    answer, sent = stream_header(server, 50 * MB)  # slowly, 64 KiB at a time
    assert_431(answer, "PERSONALIZE_MAX_HEADER_BYTES")
    assert sent < 4 * MB  # answered long before the header ended

    big = httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * MB}, timeout=30)
    assert big.status_code == 431 and big.headers["connection"] == "close"
    assert "PERSONALIZE_MAX_HEADER_BYTES" in big.json()["detail"]
    token = httpx.get(
        f"{server.url}/v1/model", headers={"Authorization": "Bearer " + "a" * 24 * MB}, timeout=30
    )
    assert token.status_code == 431

    # the peak, not only what is left: none of the 50 MB header or the 24 MB token was
    # buffered on the way (a worker's own allocations move it by a few MB)
    for pid in pids:
        grew_mb = (memory_kb(pid, "VmHWM") - before[pid]) / 1024
        assert grew_mb < 16, f"worker {pid}: peak {grew_mb:.1f} MB above its memory before"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert "431 to 127.0.0.1" in server.output()


def test_the_header_limits_are_exact_in_bytes_and_in_count(server: Server) -> None:
    line_and_host = len("GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n")
    fits = MAX_HEADER_BYTES - line_and_host - 2000
    assert status_of(raw_request(server, [("X-Fill", "a" * fits)])) == 200
    # one read holds all of it: the parsed size is counted as well as the bytes received
    answer = raw_request(server, [("X-Fill", "a" * (MAX_HEADER_BYTES + 100))])
    assert_431(answer, "PERSONALIZE_MAX_HEADER_BYTES")
    many = [(f"X-H{i}", "1") for i in range(MAX_HEADERS - 2)]  # with Host and Connection
    assert status_of(raw_request(server, many)) == 200
    assert_431(raw_request(server, [*many, ("X-One-More", "1")]), "PERSONALIZE_MAX_HEADERS")
    assert status_of(raw_request(server, [("X-Bad\x01Name", "1")])) == 400  # still uvicorn's


def test_healthz_answers_promptly_while_huge_headers_stream_in(server: Server) -> None:
    stop = threading.Event()
    refused = [0]

    def attack() -> None:
        while not stop.is_set():
            answer, _ = stream_header(server, 100 * MB, chunk=256 * 1024, pause=0)
            refused[0] += status_of(answer) == 431

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(0.5)
        slowest = 0.0
        with httpx.Client(timeout=10) as client:
            for _ in range(30):
                started = time.perf_counter()
                assert client.get(f"{server.url}/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=30)
    assert refused[0] >= 4
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s"


# --------------------------------------------------------------------------- bodies


def test_bodies_are_limited_per_route(server: Server) -> None:
    url = server.env["PERSONALIZE_DATABASE_URL"]
    clinician, researcher = new_key(url, "clinician"), new_key(url, "researcher")
    single = f"{server.url}/v1/recommendations"
    ok = httpx.post(single, json={"patient": STAMP_PATIENT}, headers=clinician, timeout=30)
    assert ok.status_code == 200, ok.text

    padded = {"patient": STAMP_PATIENT, "patient_ref": "x" * 100_000}  # about 100 KB
    declared = httpx.post(single, json=padded, headers=clinician, timeout=30)
    assert declared.status_code == 413
    assert "PERSONALIZE_MAX_RECOMMENDATION_BODY_BYTES" in declared.json()["detail"]
    body = json.dumps(padded).encode()
    streamed = httpx.post(  # chunked: no Content-Length to judge by
        single,
        content=(body[i : i + 8192] for i in range(0, len(body), 8192)),
        headers={**clinician, "Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413

    patients = [STAMP_PATIENT] * 300  # about 100 KB too: the batch route allows it
    batch = httpx.post(
        f"{server.url}/v1/recommendations/batch",
        json={"patients": patients},
        headers=researcher,
        timeout=60,
    )
    assert batch.status_code == 200, batch.text[:500]
    assert len(json.dumps({"patients": patients})) > 64 * 1024

    feedback = {"feedback": [{"card": "c", "outcome": "accepted", "pad": "x" * 300_000}]}
    refused = httpx.post(
        f"{server.url}/cds-services/personalize-recommendation/feedback",
        json=feedback,
        headers=clinician,
        timeout=30,
    )
    assert refused.status_code == 413
    assert "PERSONALIZE_MAX_FEEDBACK_BODY_BYTES" in refused.json()["detail"]


# --------------------------------------------------------------------------- forwarded addresses


def test_forwarded_addresses_from_an_unnamed_peer_are_ignored(server: Server) -> None:
    """Loopback is no proxy unless named: forged X-Forwarded-For values do not spread the
    failures over many addresses (within twice the limit, should each worker count its
    own)."""
    with client_from("127.0.0.1") as client:
        attempts = 2 * FAILURES_PER_CLIENT + 1
        codes = [failed_check(client, server, random_address()) for _ in range(attempts)]
    assert 429 in codes, codes
    output = server.output()
    assert "127.0.0.1:" in output and "198.51.100." not in output  # uvicorn's access log


def test_a_named_proxy_s_forwarded_address_is_the_client(
    tmp_path: Path, trained_registry: TrainedRegistry
) -> None:
    env = {
        "PERSONALIZE_AUTH_FAILURES_PER_CLIENT": str(FAILURES_PER_CLIENT),
        "PERSONALIZE_TRUSTED_PROXIES": "127.0.0.1",
    }
    with serve(tmp_path, trained_registry, workers=2, env=env) as server:
        with client_from("127.0.0.1") as proxy:
            # each forwarded client is counted apart: none of them reaches its limit
            spread = [failed_check(proxy, server, random_address()) for _ in range(15)]
            assert set(spread) == {401}, spread
            # one forwarded client is counted as itself
            attempts = 2 * FAILURES_PER_CLIENT + 1
            one = [failed_check(proxy, server, "203.0.113.9") for _ in range(attempts)]
            assert 429 in one, one
        with client_from("127.0.0.2") as other:  # loopback too, but not the named proxy
            forged = [
                failed_check(other, server, random_address("192.0.2")) for _ in range(attempts)
            ]
            assert 429 in forged, forged
    output = server.output()  # uvicorn's access log names the client it was given
    assert '203.0.113.9:0 - "GET /v1/model' in output and "198.51.100." in output
    assert "127.0.0.2:" in output and "192.0.2." not in output
