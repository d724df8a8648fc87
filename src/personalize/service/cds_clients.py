"""Trusted CDS clients: the EHRs that may call the CDS Hooks routes with a JWT of their own.

CDS Hooks 2.0 ("Trusting CDS Clients"): a client signs every call with its private key; the
JWT names the client (`iss`), the endpoint it is meant for (`aud`), a short lifetime (`iat`,
`exp`) and a one-time id (`jti`). The operator registers each client in a YAML file (named
by PERSONALIZE_CDS_CLIENTS) with the only place its public keys may come from and the only
FHIR servers it may send the service to:

    clients:
      - iss: https://ehr.example.org
        jwks_url: https://ehr.example.org/jwks.json   # http(s):// or file://
        fhir_servers: [https://ehr.example.org/fhir]

Keys are fetched from the registered `jwks_url` only (a `jku` header is accepted when it
equals it, never followed elsewhere) and cached. Only asymmetric algorithms are accepted: a
client's public key must never double as an HMAC secret.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jwt
import yaml

from personalize.service import fhir_urls

ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
MAX_LIFETIME_SECONDS = 300  # the specification: exp at most 5 minutes after iat
LEEWAY_SECONDS = 30  # clock skew between the client and this service
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_CACHE_SECONDS = 300.0


class ClientRejected(Exception):
    """A JWT this service does not accept; the message is the reason given to the caller
    (it names no key material)."""


@dataclass(frozen=True)
class CdsClient:
    """One registered EHR."""

    iss: str
    jwks_url: str
    fhir_servers: tuple[str, ...] = ()

    @property
    def key_id(self) -> str:
        """How the audit log names this client (a key-id-sized digest of `iss`)."""
        return "cds-" + hashlib.sha256(self.iss.encode()).hexdigest()[:28]

    def allows_fhir_server(self, url: str) -> bool:
        """Whether `url` is one of this client's registered FHIR servers, both compared in
        normal form (fhir_urls); a URL that would match only once repaired (whitespace
        stripped, say) does not."""
        wanted = _base(url)
        return wanted is not None and wanted in {_base(s) for s in self.fhir_servers}


@dataclass(frozen=True)
class VerifiedCall:
    """A JWT that passed every check: who sent it and until when its `jti` must be
    remembered."""

    client: CdsClient
    jti: str
    expires_at: datetime


def _base(url: str) -> fhir_urls.FhirUrl | None:
    """A FHIR server URL in normal form; None for one the service would not fetch from."""
    try:
        return fhir_urls.parse_base(url)
    except fhir_urls.UnsafeUrl:
        return None


class FileKeySet:
    """A JWK Set in a local file (`file://`; PyJWKClient fetches over HTTP(S) only), read
    again when a `kid` is not in it or the cached copy is older than `lifespan`."""

    def __init__(self, url: str, lifespan: float = JWKS_CACHE_SECONDS) -> None:
        self.path = Path(urlparse(url).path)
        self.lifespan = lifespan
        self._keys: jwt.PyJWKSet | None = None
        self._read_at = 0.0

    def _read(self) -> jwt.PyJWKSet:
        try:
            keys = jwt.PyJWKSet.from_json(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, jwt.PyJWKSetError) as exc:
            raise jwt.PyJWKClientConnectionError(f"cannot read the JWK Set: {exc}") from None
        self._keys, self._read_at = keys, time.monotonic()
        return keys

    def get_signing_key(self, kid: str) -> jwt.PyJWK:
        keys = self._keys
        if keys is None or time.monotonic() - self._read_at > self.lifespan:
            keys = self._read()
        found = next((k for k in keys.keys if k.key_id == kid), None)
        if found is None:  # a key added since the last read
            found = next((k for k in self._read().keys if k.key_id == kid), None)
        if found is None:
            raise jwt.PyJWKClientError(f"no key with kid {kid!r}")
        return found


class TrustedClients:
    """The registered clients and a cached key set per client."""

    def __init__(self, clients: Sequence[CdsClient]) -> None:
        self.clients = {c.iss: c for c in clients}
        self._keys: dict[str, jwt.PyJWKClient | FileKeySet] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> TrustedClients:
        """Read the clients file; a ValueError names the file, the entry and the field."""
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from None
        entries = raw.get("clients") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a top-level 'clients:' list")
        clients: list[CdsClient] = []
        for i, entry in enumerate(entries):
            where = f"{path}: clients[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a mapping with iss, jwks_url, fhir_servers")
            unknown = set(entry) - {"iss", "jwks_url", "fhir_servers"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            iss, jwks_url = entry.get("iss"), entry.get("jwks_url")
            if not isinstance(iss, str) or not iss:
                raise ValueError(f"{where}.iss: required, a non-empty string")
            if not isinstance(jwks_url, str) or not jwks_url.startswith(
                ("https://", "http://", "file://")
            ):
                raise ValueError(f"{where}.jwks_url: required, an http(s):// or file:// URL")
            servers = entry.get("fhir_servers") or []
            if not isinstance(servers, list) or not all(
                isinstance(s, str) and s.startswith(("https://", "http://")) for s in servers
            ):
                raise ValueError(f"{where}.fhir_servers: expected a list of http(s):// URLs")
            if iss in {c.iss for c in clients}:
                raise ValueError(f"{where}.iss: {iss!r} is registered twice")
            clients.append(CdsClient(iss, jwks_url, tuple(servers)))
        return cls(clients)

    def _key_set(self, client: CdsClient) -> jwt.PyJWKClient | FileKeySet:
        with self._lock:
            keys = self._keys.get(client.iss)
            if keys is None and client.jwks_url.startswith("file://"):
                keys = self._keys[client.iss] = FileKeySet(client.jwks_url)
            if keys is None:
                keys = jwt.PyJWKClient(
                    client.jwks_url,
                    cache_keys=True,
                    lifespan=JWKS_CACHE_SECONDS,
                    timeout=JWKS_TIMEOUT_SECONDS,
                )
                self._keys[client.iss] = keys
            return keys

    def verify(
        self,
        token: str,
        audience: str | list[str],
        first_use: Callable[[CdsClient, str, datetime], bool],
        now: float | None = None,
    ) -> VerifiedCall:
        """Check a client's JWT for `audience`; `first_use(client, jti, expires_at)` records
        the `jti` and says whether it is new. Blocking (may fetch the key set): run it off
        the event loop."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ClientRejected("not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise ClientRejected(
                f"algorithm {alg!r} is not accepted (asymmetric only: {', '.join(ALGORITHMS)})"
            )
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise ClientRejected("the JWT header has no 'kid'")
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise ClientRejected("'iss' is not a registered CDS client")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise ClientRejected("'jku' is not the client's registered JWK Set URL")
        try:
            key = self._key_set(client).get_signing_key(header["kid"])
        except jwt.PyJWKClientConnectionError:
            raise ClientRejected("the client's JWK Set cannot be fetched") from None
        except jwt.PyJWKClientError:
            raise ClientRejected("no key with this 'kid' in the client's JWK Set") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidAudienceError:
            wanted = audience if isinstance(audience, str) else " or ".join(audience)
            raise ClientRejected(f"'aud' must be {wanted}") from None
        except jwt.ExpiredSignatureError:
            raise ClientRejected("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise ClientRejected("'iat' is in the future") from None
        except jwt.MissingRequiredClaimError as exc:
            raise ClientRejected(f"the JWT has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise ClientRejected(f"the JWT is not valid: {type(exc).__name__}") from None
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise ClientRejected("'exp' and 'iat' must be numbers")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise ClientRejected(f"'exp' is more than {MAX_LIFETIME_SECONDS} s after 'iat'")
        if iat > (time.time() if now is None else now) + LEEWAY_SECONDS:
            raise ClientRejected("'iat' is in the future")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise ClientRejected("'jti' must be a non-empty string of at most 256 characters")
        expires_at = datetime.fromtimestamp(float(exp) + LEEWAY_SECONDS, UTC)
        if not first_use(client, jti, expires_at):
            raise ClientRejected("this 'jti' was already used (replay)")
        return VerifiedCall(client, jti, expires_at)


def looks_like_jwt(credential: str) -> bool:
    """A compact JWS (three base64url parts); API keys never contain dots."""
    return credential.count(".") == 2
