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
equals it, never followed elsewhere) and cached with an expiry (`personalize.service.key_sets`).
Only asymmetric algorithms are accepted, each key only with the algorithm it declares: a
client's public key must never double as an HMAC secret.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import yaml

from personalize.service import fhir_urls
from personalize.service.key_sets import (
    ALGORITHMS,
    KeyNotFound,
    KeyPolicy,
    KeySet,
    KeySetUnavailable,
)

MAX_LIFETIME_SECONDS = 300  # the specification: exp at most 5 minutes after iat
LEEWAY_SECONDS = 30  # clock skew between the client and this service


class ClientRejected(Exception):
    """A JWT this service does not accept; the message is the reason given to the caller
    (it names no key material). `claimed` is the registered client the token names, if
    any: failures are counted per address and claimed client."""

    def __init__(self, reason: str, claimed: CdsClient | None = None) -> None:
        super().__init__(reason)
        self.claimed = claimed


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


class TrustedClients:
    """The registered clients and a cached key set per client."""

    def __init__(self, clients: Sequence[CdsClient], policy: KeyPolicy | None = None) -> None:
        self.clients = {c.iss: c for c in clients}
        self.policy = policy or KeyPolicy()
        self._keys = {c.iss: KeySet(c.jwks_url, self.policy) for c in clients}

    @classmethod
    def load(cls, path: Path, policy: KeyPolicy | None = None) -> TrustedClients:
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
            for j, server in enumerate(servers):
                try:
                    fhir_urls.parse_base(server)
                except fhir_urls.UnsafeUrl as exc:
                    raise ValueError(f"{where}.fhir_servers[{j}]: {exc}") from None
            if iss in {c.iss for c in clients}:
                raise ValueError(f"{where}.iss: {iss!r} is registered twice")
            clients.append(CdsClient(iss, jwks_url, tuple(servers)))
        return cls(clients, policy)

    def claimed(self, token: str) -> CdsClient | None:
        """The registered client a token names (`iss`, unverified), if any."""
        try:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return None
        return self.clients.get(iss) if isinstance(iss, str) else None

    def close(self) -> None:
        """Cancel key fetches in flight (at shutdown)."""
        for keys in self._keys.values():
            keys.close()

    async def verify(
        self, token: str, audience: str | list[str], now: float | None = None
    ) -> VerifiedCall:
        """Check a client's JWT for `audience` (the `jti` is still to be recorded: a
        replay is for the audit database to tell). May wait for the client's key set,
        within its deadline, on the event loop (no thread held)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ClientRejected("not a JWT") from None
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise ClientRejected(
                f"algorithm {alg!r} is not accepted (asymmetric only: "
                f"{', '.join(sorted(ALGORITHMS))})",
                client,
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ClientRejected("the JWT header has no 'kid'", client)
        if client is None:
            raise ClientRejected("'iss' is not a registered CDS client")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise ClientRejected("'jku' is not the client's registered JWK Set URL", client)
        try:
            key = await self._keys[client.iss].key(kid)
        except KeySetUnavailable as exc:
            raise ClientRejected(str(exc), client) from None
        except KeyNotFound:
            raise ClientRejected("no key with this 'kid' in the client's JWK Set", client) from None
        if alg not in key.algorithms:
            raise ClientRejected(
                f"the key with this 'kid' is for {', '.join(sorted(key.algorithms))}, not {alg}",
                client,
            )
        when = time.time() if now is None else now
        claims = self._claims(token, key.key, alg, audience, client, unverified, when)
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise ClientRejected("'exp' and 'iat' must be numbers", client)
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise ClientRejected(f"'exp' is more than {MAX_LIFETIME_SECONDS} s after 'iat'", client)
        if iat > when + LEEWAY_SECONDS:
            raise ClientRejected("'iat' is in the future", client)
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise ClientRejected(
                "'jti' must be a non-empty string of at most 256 characters", client
            )
        expires_at = datetime.fromtimestamp(float(exp) + LEEWAY_SECONDS, UTC)
        return VerifiedCall(client, jti, expires_at)

    @staticmethod
    def _claims(
        token: str,
        key: jwt.PyJWK,
        alg: str,
        audience: str | list[str],
        client: CdsClient,
        unverified: dict[str, Any],
        now: float,
    ) -> dict[str, Any]:
        """The verified claims, or the reason they are refused."""
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
            raise ClientRejected(f"'aud' must be {wanted}", client) from None
        except jwt.ExpiredSignatureError:
            raise ClientRejected("the JWT has expired", client) from None
        except jwt.ImmatureSignatureError:
            nbf = unverified.get("nbf")
            early = isinstance(nbf, int | float) and nbf > now + LEEWAY_SECONDS
            claim = "nbf" if early else "iat"
            raise ClientRejected(f"{claim!r} is in the future", client) from None
        except jwt.MissingRequiredClaimError as exc:
            raise ClientRejected(f"the JWT has no {exc.claim!r} claim", client) from None
        except jwt.PyJWTError as exc:
            raise ClientRejected(f"the JWT is not valid: {type(exc).__name__}", client) from None
        return claims


def looks_like_jwt(credential: str) -> bool:
    """A compact JWS (three base64url parts); API keys never contain dots."""
    return credential.count(".") == 2
