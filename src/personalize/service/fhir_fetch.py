"""Fill missing CDS Hooks prefetch by querying the EHR's FHIR server.

CDS Hooks lets an EHR send prefetch partly or not at all, with `fhirServer` and
`fhirAuthorization.access_token` for the service to fetch the rest itself. The service
queries only a server registered for the calling client (anything else would let a caller
aim the service at internal addresses), with connect and read timeouts, a cap on each
response's size and a bound on the pages of a search it follows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 5 * 1024 * 1024
MAX_PAGES = 5
_PLACEHOLDER = re.compile(r"\{\{\s*context\.([A-Za-z0-9_]+)\s*\}\}")


class FetchFailed(Exception):
    """A query that gave no usable FHIR resource; the message says why (no token, no data)."""


@dataclass
class Fetched:
    """What the queries returned, by prefetch key, and what the card should say about it."""

    prefetch: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fill_template(template: str, context: dict[str, Any]) -> str:
    """A prefetch template with its `{{context.X}}` tokens replaced (URL-quoted); a token
    whose value the context lacks makes the template unusable."""

    def value(match: re.Match[str]) -> str:
        found = context.get(match.group(1))
        if not isinstance(found, str) or not found:
            raise FetchFailed(f"the context has no {match.group(1)!r} for the query")
        return quote(found, safe="")

    return _PLACEHOLDER.sub(value, template)


async def fetch(
    server: str,
    access_token: str | None,
    queries: dict[str, str],
    context: dict[str, Any],
    transport: httpx.AsyncBaseTransport | None = None,
) -> Fetched:
    """Run each prefetch template in `queries` against `server` (already checked against
    the client's registered servers). A query that fails is left out with a note."""
    base = server.rstrip("/")
    headers = {"Accept": "application/fhir+json"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    result = Fetched()
    async with httpx.AsyncClient(
        headers=headers, timeout=timeout, follow_redirects=False, transport=transport
    ) as client:
        for key, template in queries.items():
            try:
                url = f"{base}/{fill_template(template, context).lstrip('/')}"
                result.prefetch[key] = await _resource_or_search(client, base, url)
            except FetchFailed as exc:
                result.notes.append(f"{key}: not fetched from the FHIR server ({exc})")
    return result


async def _resource_or_search(client: httpx.AsyncClient, base: str, url: str) -> Any:
    first = await _get(client, url)
    if first.get("resourceType") != "Bundle":
        return first
    entries = list(first.get("entry") or [])
    next_url, pages = _next_link(first, base), 1
    while next_url is not None:
        if pages >= MAX_PAGES:
            raise FetchFailed(f"the search has more than {MAX_PAGES} pages")
        page = await _get(client, next_url)
        entries += page.get("entry") or []
        next_url, pages = _next_link(page, base), pages + 1
    return {**first, "entry": entries, "link": []}


def _next_link(bundle: dict[str, Any], base: str) -> str | None:
    """The Bundle's next page, followed only when it is on the same server."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and (url == base or url.startswith(base + "/")):
                return url
            raise FetchFailed("the next page is on another server; not followed")
    return None


async def _get(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        async with client.stream("GET", url) as response:
            if response.status_code in (401, 403):
                raise FetchFailed(
                    f"the FHIR server refused the access token ({response.status_code})"
                )
            if response.status_code == 404:
                raise FetchFailed("not found on the FHIR server")
            if response.status_code >= 400:
                raise FetchFailed(f"the FHIR server answered {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise FetchFailed(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise FetchFailed(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
    except httpx.TimeoutException:
        raise FetchFailed("the FHIR server did not answer in time") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"the FHIR server cannot be reached ({type(exc).__name__})") from None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchFailed("the FHIR server's answer is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("resourceType"), str):
        raise FetchFailed("the FHIR server's answer is not a FHIR resource")
    return parsed
