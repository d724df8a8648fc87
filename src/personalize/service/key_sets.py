"""A CDS client's public keys: its JWK Set, fetched from the one URL registered for it and
cached with a real expiry.

What an EHR expects of a verifier's cache, and why each rule is here:

- **Removal takes effect.** A cached copy is used for at most `cache_seconds` after the
  fetch that produced it; after that the set is fetched again and a key no longer in it is
  refused. Every fetch replaces the whole set (a key is never kept because it was seen
  once).
- **Rotation works on first use.** A `kid` not in the cached copy triggers a fetch, at most
  once per `refresh_seconds` per client, so an EHR that publishes a new key and then signs
  with it is accepted at once, and made-up kids cannot make the service hammer the EHR.
- **A hung key server costs nobody else.** Fetching is asynchronous (no worker thread is
  held while a server does not answer), bounded by an overall deadline and a size cap, and
  shared: requests that need the same fetch wait for that one. After a failed fetch the
  server is not tried again for `breaker_seconds`; keys still within their cache time keep
  working meanwhile.
- **A key is used only with the algorithm it declares** (`alg`), or, when it declares none,
  with the algorithms of its key type (RSA: RS/PS; EC: the ES of its curve).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import httpx
import jwt

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values())


@dataclass(frozen=True)
class KeyPolicy:
    """How long keys are trusted and how hard a key server may be asked."""

    cache_seconds: float = 300.0
    refresh_seconds: float = 2.0
    timeout_seconds: float = 5.0
    breaker_seconds: float = 30.0
    max_bytes: int = 256 * 1024


class KeyNotFound(Exception):
    """The client's current key set has no usable key with this `kid`."""


class KeySetUnavailable(Exception):
    """The client's key set cannot be had now; the message says why (no key material)."""


@dataclass(frozen=True)
class PublicKey:
    """One usable key of a set and the algorithms it may verify."""

    key: jwt.PyJWK
    algorithms: frozenset[str]


def algorithms_of(jwk: dict[str, Any]) -> frozenset[str]:
    """The algorithms a JWK may be used with: the one it declares, else its key type's."""
    declared = jwk.get("alg")
    if declared is not None:
        return frozenset({declared}) & ALGORITHMS if isinstance(declared, str) else frozenset()
    if jwk.get("kty") == "RSA":
        return RSA_ALGORITHMS
    if jwk.get("kty") == "EC" and jwk.get("crv") in EC_ALGORITHMS:
        return frozenset({EC_ALGORITHMS[jwk["crv"]]})
    return frozenset()


def parse_key_set(body: bytes) -> dict[str, PublicKey]:
    """The usable signing keys of a JWK Set document, by `kid` (keys without a kid, for
    encryption, of unknown types or algorithms are left out)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise KeySetUnavailable("the client's JWK Set is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeySetUnavailable("the client's JWK Set has no 'keys' list")
    keys: dict[str, PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        algorithms = algorithms_of(entry)
        if not algorithms:
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        keys[entry["kid"]] = PublicKey(key, algorithms)
    return keys


class KeySet:
    """One client's JWK Set (`http(s)://` or `file://`), as the module docstring says."""

    def __init__(
        self,
        url: str,
        policy: KeyPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.policy = policy or KeyPolicy()
        self._clock = clock
        self._transport = transport
        self._keys: dict[str, PublicKey] = {}
        self._fetched_at = -math.inf  # when the fetch behind the cached copy started
        self._tried_at = -math.inf  # when the last fetch started
        self._closed_until = -math.inf  # the breaker: no fetch before this
        self._failure: str | None = None  # why the last fetch failed
        self._flight: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None

    def cached(self, kid: str) -> PublicKey | None:
        """The key from the cached copy, if that copy is still within its cache time."""
        if self._clock() - self._fetched_at > self.policy.cache_seconds:
            return None
        return self._keys.get(kid)

    async def key(self, kid: str) -> PublicKey:
        """The current key with this `kid`, fetching the set when the cached copy has
        expired or lacks it (within the limits above)."""
        found = self.cached(kid)
        if found is not None:
            return found
        flight = self._current_flight()
        if flight is None:
            now = self._clock()
            if now < self._closed_until:
                raise KeySetUnavailable(
                    f"the client's JWK Set cannot be fetched ({self._failure}); not tried "
                    f"again for {math.ceil(self._closed_until - now)} s"
                )
            fresh = now - self._fetched_at <= self.policy.cache_seconds
            if fresh and now - self._tried_at < self.policy.refresh_seconds:
                raise KeyNotFound(kid)
            flight = self._start_flight()
        await asyncio.shield(flight)
        found = self.cached(kid)
        if found is not None:
            return found
        if self._failure is not None:
            raise KeySetUnavailable(f"the client's JWK Set cannot be fetched ({self._failure})")
        raise KeyNotFound(kid)

    def close(self) -> None:
        """Cancel a fetch in flight (at shutdown)."""
        if self._flight is not None and not self._flight[1].done():
            self._flight[1].cancel()
        self._flight = None

    # ------------------------------------------------------------------ fetching

    def _current_flight(self) -> asyncio.Task[None] | None:
        # a task belongs to one event loop; a server runs one, a test client one per session
        if self._flight is None:
            return None
        loop, task = self._flight
        if task.done() or loop is not asyncio.get_running_loop():
            return None
        return task

    def _start_flight(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._refresh())
        self._flight = (asyncio.get_running_loop(), task)
        return task

    async def _refresh(self) -> None:
        started = self._tried_at = self._clock()
        try:
            with anyio.fail_after(self.policy.timeout_seconds):
                body = await self._read()
            keys = parse_key_set(body)
        except TimeoutError:
            self._fail(started, f"no answer within {self.policy.timeout_seconds:g} s")
        except KeySetUnavailable as exc:
            self._fail(started, str(exc).removeprefix("the client's JWK Set "))
        else:
            self._keys, self._fetched_at, self._failure = keys, started, None

    def _fail(self, started: float, reason: str) -> None:
        self._failure = reason
        self._closed_until = started + self.policy.breaker_seconds
        if self._clock() - self._fetched_at > self.policy.cache_seconds:
            self._keys = {}

    async def _read(self) -> bytes:
        if self.url.startswith("file://"):
            return await anyio.to_thread.run_sync(self._read_file)
        limit = self.policy.max_bytes
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self.policy.timeout_seconds,
                    follow_redirects=False,
                    transport=self._transport,
                ) as client,
                client.stream("GET", self.url, headers={"Accept": "application/json"}) as answer,
            ):
                if answer.status_code != 200:
                    raise KeySetUnavailable(f"the client's JWK Set answered {answer.status_code}")
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise KeySetUnavailable(f"the client's JWK Set is over {limit} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise KeySetUnavailable(
                f"the client's JWK Set cannot be reached ({type(exc).__name__})"
            ) from None

    def _read_file(self) -> bytes:
        path, limit = Path(urlparse(self.url).path), self.policy.max_bytes
        try:
            with path.open("rb") as file:
                body = file.read(limit + 1)
        except OSError as exc:
            raise KeySetUnavailable(
                f"the client's JWK Set cannot be read ({type(exc).__name__})"
            ) from None
        if len(body) > limit:
            raise KeySetUnavailable(f"the client's JWK Set is over {limit} bytes")
        return body


__all__ = [
    "ALGORITHMS",
    "KeyNotFound",
    "KeyPolicy",
    "KeySet",
    "KeySetUnavailable",
    "PublicKey",
    "algorithms_of",
    "parse_key_set",
]
