"""Fill missing CDS Hooks prefetch by querying the EHR's FHIR server.

CDS Hooks lets an EHR send prefetch partly or not at all, with `fhirServer` and
`fhirAuthorization.access_token` for the service to fetch the rest itself. The service
queries only a server registered for the calling client (anything else would let a caller
aim the service at internal addresses) and sends the token only to URLs under that server's
base, compared in normal form (`fhir_urls`). The request's values are checked before any
request is made (a bad one is the caller's 400). A FHIR server can hold the service no
longer than the deadline for all of one call's fetching, answers are capped in size, a
search is followed for a few pages only, and a server that just timed out or could not be
reached is left alone for a while (`CircuitBreaker`) so each caller does not wait for it
again. What cannot be fetched is left out with a note, never a 5xx.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from personalize.service import fhir_urls
from personalize.service.fhir_urls import FhirUrl, UnsafeUrl

DEADLINE_SECONDS = 8.0  # all the fetching for one CDS call
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 5.0
MAX_RESPONSE_BYTES = 5 * 1024 * 1024
MAX_TOTAL_BYTES = 10 * 1024 * 1024  # every response of one CDS call together
MAX_PAGES = 5
MAX_TOKEN_CHARS = 8 * 1024
MAX_CONTEXT_VALUE_CHARS = 256  # as every patient reference
BREAKER_SECONDS = 30.0
_PLACEHOLDER = re.compile(r"\{\{\s*context\.([A-Za-z0-9_]+)\s*\}\}")
_REFUSED_CHARACTERS = "control characters, whitespace and non-ASCII characters are not accepted"


class RequestInvalid(ValueError):
    """A value of the CDS request that cannot be used to fetch; the message names the field
    (the caller's 400)."""


class FetchFailed(Exception):
    """A query that gave no usable FHIR resource; the message says why (no token, no data)."""


class Unreachable(FetchFailed):
    """The FHIR server timed out or could not be connected to: what opens the breaker."""


@dataclass
class Fetched:
    """What the queries returned, by prefetch key, and what the card should say about it."""

    prefetch: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class CircuitBreaker:
    """FHIR servers (per client) that just timed out or could not be reached, and until when
    they are left alone, so a hung server costs the next callers nothing. One per app, used
    from the event loop only (no lock)."""

    def __init__(
        self, seconds: float = BREAKER_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self._open_until: dict[tuple[str, str], float] = {}

    def wait(self, key: tuple[str, str]) -> float | None:
        """Seconds until `key` is tried again; None when it may be tried now."""
        until = self._open_until.get(key)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._open_until[key]
            return None
        return left

    def trip(self, key: tuple[str, str]) -> None:
        self._open_until[key] = self.clock() + self.seconds

    def reset(self, key: tuple[str, str]) -> None:
        self._open_until.pop(key, None)


def requested_server(url: str) -> FhirUrl:
    """The request's `fhirServer` in normal form; RequestInvalid when it is not a usable
    FHIR base URL as sent (nothing is stripped or repaired)."""
    try:
        return fhir_urls.parse_base(url)
    except UnsafeUrl as exc:
        raise RequestInvalid(f"fhirServer {exc}") from None


def requested_token(authorization: dict[str, Any] | None) -> str | None:
    """`fhirAuthorization.access_token`, when sent; RequestInvalid when it could not travel
    as a Bearer header unchanged."""
    token = (authorization or {}).get("access_token")
    if token is None:
        return None
    name = "fhirAuthorization.access_token"
    if not isinstance(token, str) or not token:
        raise RequestInvalid(f"{name} must be a non-empty string")
    if len(token) > MAX_TOKEN_CHARS:
        raise RequestInvalid(f"{name} is longer than {MAX_TOKEN_CHARS} characters")
    if any(not "!" <= char <= "~" for char in token):
        raise RequestInvalid(f"{name}: {_REFUSED_CHARACTERS}")
    return token


def fill_template(template: str, context: dict[str, Any]) -> str:
    """A prefetch template with its `{{context.X}}` tokens replaced (URL-quoted); a token
    whose value the context lacks makes the template unusable (FetchFailed), a value that
    is not a plain identifier is the caller's error (RequestInvalid)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = context.get(name)
        if not isinstance(found, str) or not found:
            raise FetchFailed(f"the context has no {name!r} for the query")
        if len(found) > MAX_CONTEXT_VALUE_CHARS:
            raise RequestInvalid(
                f"context.{name} is longer than {MAX_CONTEXT_VALUE_CHARS} characters"
            )
        if any(not char.isprintable() or char.isspace() for char in found):
            raise RequestInvalid(
                f"context.{name}: control characters and whitespace are not accepted"
            )
        if found in (".", ".."):
            raise RequestInvalid(f"context.{name} is not an identifier")
        return quote(found, safe="")

    return _PLACEHOLDER.sub(value, template)


def _note(key: str, why: str) -> str:
    return f"{key}: not fetched from the FHIR server ({why})"


async def fetch(
    server: FhirUrl,
    access_token: str | None,
    queries: dict[str, str],
    context: dict[str, Any],
    *,
    breaker: CircuitBreaker,
    client_id: str,
    deadline: float = DEADLINE_SECONDS,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Fetched:
    """Run each prefetch template in `queries` against `server` (a base already checked
    against `client_id`'s registered servers) within `deadline` seconds in all. Every
    template is filled before the first request, so a RequestInvalid sends nothing. A query
    that fails is left out with a note."""
    result = Fetched()
    planned: dict[str, str] = {}
    for key, template in queries.items():
        try:
            planned[key] = _query_url(server, fill_template(template, context))
        except FetchFailed as exc:
            result.notes.append(_note(key, str(exc)))
    headers = {"Accept": "application/fhir+json", "Accept-Encoding": "identity"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    budget = _Budget(MAX_TOTAL_BYTES)
    circuit = (client_id, str(server))
    pending = list(planned)
    with anyio.move_on_after(deadline) as scope:
        async with httpx.AsyncClient(
            headers=headers, timeout=timeout, follow_redirects=False, transport=transport
        ) as client:
            while pending:
                key = pending[0]
                wait = breaker.wait(circuit)
                if wait is not None:
                    why = (
                        "the FHIR server timed out or could not be reached a moment ago; "
                        f"not asked again for {math.ceil(wait)} s"
                    )
                    result.notes.append(_note(key, why))
                else:
                    try:
                        found = await _resource_or_search(client, server, planned[key], budget)
                    except Unreachable as exc:
                        breaker.trip(circuit)
                        result.notes.append(_note(key, str(exc)))
                    except FetchFailed as exc:
                        breaker.reset(circuit)  # it answered
                        result.notes.append(_note(key, str(exc)))
                    else:
                        breaker.reset(circuit)
                        result.prefetch[key] = found
                pending.pop(0)
    if scope.cancelled_caught and pending:
        breaker.trip(circuit)
        why = f"the FHIR server did not answer within {deadline:g} s"
        result.notes += [_note(key, why) for key in pending]
    return result


def _query_url(server: FhirUrl, query: str) -> str:
    """The URL of a filled template, in normal form and under the server's base."""
    try:
        url = fhir_urls.parse(server.join(query))
    except UnsafeUrl as exc:
        raise FetchFailed(f"the query URL {exc}") from None
    if not url.is_under(server):
        raise FetchFailed("the query URL leaves the FHIR server's base; not sent")
    return str(url)


class _Budget:
    """The bytes all of one call's responses may still take."""

    def __init__(self, total: int) -> None:
        self.left = total


async def _resource_or_search(
    client: httpx.AsyncClient, base: FhirUrl, url: str, budget: _Budget
) -> Any:
    first = await _get(client, url, budget)
    if first.get("resourceType") != "Bundle":
        return first
    entries = _entries(first)
    next_url, pages = _next_link(first, base), 1
    while next_url is not None:
        if pages >= MAX_PAGES:
            raise FetchFailed(f"the search has more than {MAX_PAGES} pages")
        page = await _get(client, next_url, budget)
        if page.get("resourceType") != "Bundle":
            raise FetchFailed("a later page of the search is not a Bundle")
        entries += _entries(page)
        next_url, pages = _next_link(page, base), pages + 1
    return {**first, "entry": entries, "link": []}


def _entries(bundle: dict[str, Any]) -> list[Any]:
    entries = bundle.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise FetchFailed("the Bundle's entry is not a list")
    return list(entries)


def _next_link(bundle: dict[str, Any], base: FhirUrl) -> str | None:
    """The Bundle's next page, in normal form, followed only when it is under the base."""
    links = bundle.get("link")
    if links is None:
        return None
    if not isinstance(links, list):
        raise FetchFailed("the Bundle's link is not a list")
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str):
                raise FetchFailed("the next page link has no URL")
            try:
                parsed = fhir_urls.parse(url)
            except UnsafeUrl as exc:
                raise FetchFailed(f"the next page link {exc}; not followed") from None
            if not parsed.is_under(base):
                raise FetchFailed(
                    "the next page link is outside the FHIR server's base; not followed"
                )
            return str(parsed)
    return None


async def _get(client: httpx.AsyncClient, url: str, budget: _Budget) -> dict[str, Any]:
    try:
        async with client.stream("GET", url) as response:
            code = response.status_code
            if code in (401, 403):
                raise FetchFailed(f"the FHIR server refused the access token ({code})")
            if code == 404:
                raise FetchFailed("not found on the FHIR server")
            if 300 <= code < 400:
                raise FetchFailed(f"the FHIR server answered {code} (a redirect; not followed)")
            if not 200 <= code < 300:
                raise FetchFailed(f"the FHIR server answered {code}")
            encoding = response.headers.get("content-encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchFailed("the FHIR server's answer is compressed (none was asked for)")
            declared = response.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else 0
            _check_size(size, budget)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                _check_size(len(body), budget)
    except httpx.ConnectTimeout:
        raise Unreachable(
            f"the FHIR server could not be connected to within {CONNECT_TIMEOUT_SECONDS:g} s"
        ) from None
    except httpx.TimeoutException:
        raise Unreachable(
            f"the FHIR server did not answer within {READ_TIMEOUT_SECONDS:g} s"
        ) from None
    except httpx.NetworkError as exc:
        raise Unreachable(f"the FHIR server cannot be reached ({type(exc).__name__})") from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise FetchFailed(
            f"the FHIR server's answer is not usable ({type(exc).__name__})"
        ) from None
    budget.left -= len(body)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchFailed("the FHIR server's answer is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("resourceType"), str):
        raise FetchFailed("the FHIR server's answer is not a FHIR resource")
    return parsed


def _check_size(size: int, budget: _Budget) -> None:
    if size > MAX_RESPONSE_BYTES:
        raise FetchFailed(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
    if size > budget.left:
        raise FetchFailed(
            f"the FHIR server's answers to this call are larger than {MAX_TOTAL_BYTES} bytes in all"
        )
