"""A test EHR on loopback: a CDS client with its own key pair that signs JWTs the way CDS
Hooks 2.0 asks, and one HTTP server that publishes its JWK Set and answers FHIR R4 reads
and searches from a fixed set of resources, recording every request it gets."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass
class Seen:
    path: str
    authorization: str | None


@dataclass
class Ehr:
    """What the loopback server serves and what it saw."""

    url: str
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    observations: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    seen: list[Seen] = field(default_factory=list)
    page_size: int = 2  # small pages, so searches are paged

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks.json"

    @property
    def fhir(self) -> str:
        return self.url + "/fhir"

    def fhir_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/fhir")]


class CdsClientKeys:
    """A CDS client's key pair and the JWTs it signs."""

    def __init__(self, iss: str, jwks_url: str, algorithm: str = "ES384") -> None:
        self.iss, self.jwks_url, self.algorithm = iss, jwks_url, algorithm
        self.kid = uuid.uuid4().hex[:12]
        if algorithm.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[algorithm]
            self.private: Any = ec.generate_private_key(curve)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.algorithm)
        public = json.loads(algo.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def token(
        self, aud: str | list[str], headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"kid": self.kid, "jku": self.jwks_url, **(headers or {})}
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.algorithm, headers=head)


def _matches(resource: dict[str, Any], query: dict[str, list[str]]) -> bool:
    subject = (query.get("subject") or query.get("patient") or [None])[0]
    if subject is not None:
        ref = str((resource.get("subject") or {}).get("reference", ""))
        if ref.split("/")[-1] != subject.split("/")[-1]:
            return False
    status = (query.get("status") or [None])[0]
    return status is None or resource.get("status") == status


@contextlib.contextmanager
def loopback_ehr() -> Iterator[Ehr]:
    """The EHR's JWK Set and FHIR server on a free loopback port."""
    state: dict[str, Ehr] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            ehr = state["ehr"]
            ehr.seen.append(Seen(self.path, self.headers.get("Authorization")))
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if parts.path == "/jwks.json":
                return self._send(200, ehr.jwks)
            if parts.path.startswith("/fhir/Patient/"):
                patient = ehr.patients.get(parts.path.rsplit("/", 1)[-1])
                if patient is None:
                    return self._send(404, {"resourceType": "OperationOutcome", "issue": []})
                return self._send(200, patient)
            pools = {
                "/fhir/Observation": ehr.observations,
                "/fhir/MedicationRequest": ehr.medications,
            }
            if parts.path in pools:
                found = [r for r in pools[parts.path] if _matches(r, query)]
                offset = int((query.get("_offset") or ["0"])[0])
                page = found[offset : offset + ehr.page_size]
                links = []
                if offset + ehr.page_size < len(found):
                    nxt = dict(query, _offset=[str(offset + ehr.page_size)])
                    qs = "&".join(f"{k}={v[0]}" for k, v in nxt.items())
                    links.append({"relation": "next", "url": f"{ehr.url}{parts.path}?{qs}"})
                return self._send(
                    200,
                    {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "total": len(found),
                        "link": links,
                        "entry": [{"resource": r} for r in page],
                    },
                )
            return self._send(404, {"resourceType": "OperationOutcome", "issue": []})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["ehr"] = Ehr(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["ehr"]
    finally:
        server.shutdown()
        server.server_close()
