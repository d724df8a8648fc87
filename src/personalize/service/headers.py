"""Security headers on every response: no framing, no MIME sniffing, no referrer, a
Content-Security-Policy per kind of response, and no caching of anything but static files.

The clinician page and the API documentation are the only HTML the service serves; each
gets a policy that allows exactly its own local files. Everything else (JSON, the model
card, metrics) gets a policy that allows nothing, so a response opened in a browser runs
no script and loads nothing. Answers are not cached (`no-store`): recommendations, cards
and errors carry patient-derived data, and a shared cache or the browser's disk must not
keep them. Only the page's and the documentation's static assets may be cached.

An unhandled error is answered here, as a 500 with the same headers: Starlette's own error
handler runs outside every middleware and would answer without them. Its log line names
the exception's type and where it was raised, not its message (which may quote a patient's
value). In production the answer also says to use HTTPS only (HSTS): the service runs
behind a TLS terminator there.
"""

from __future__ import annotations

import functools
import logging
import traceback

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("personalize.service.errors")

PAGE_ASSETS = "/page/"
DOCS = "/docs"
DOCS_ASSETS = "/docs/assets/"

# what a policy always says: never framed, no <base>, no form posts
_ALWAYS = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
API_POLICY = f"default-src 'none'; {_ALWAYS}"
# the page and the documentation: their own scripts, styles and images only, no inline
# script or style, requests to the service only (Swagger UI works under it as it is)
HTML_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    f"connect-src 'self'; {_ALWAYS}"
)

COMMON = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


def policy(path: str) -> str:
    """The Content-Security-Policy of the response to `path`."""
    if path in ("/", DOCS) or path.startswith((PAGE_ASSETS, DOCS_ASSETS)):
        return HTML_POLICY
    return API_POLICY


def cacheable(path: str) -> bool:
    """Static files that carry no patient data."""
    return path.startswith((PAGE_ASSETS, DOCS_ASSETS))


HSTS = ("strict-transport-security", "max-age=31536000; includeSubDomains")
INTERNAL_ERROR = b'{"detail":"internal error"}'


@functools.cache
def _raw(csp: str, no_store: bool, hsts: bool = False) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a response gets, as raw (name, value) pairs in order (encoded once per
    kind of response)."""
    added = [*COMMON, ("content-security-policy", csp)]
    if no_store:
        added.append(("cache-control", "no-store"))
    if hsts:
        added.append(HSTS)
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in added)


class SecurityHeadersMiddleware:
    """Adds the headers to every response that passes through it, errors included (a 413
    of the body limit, a 422, a 401); a header a route set itself is left as it is."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        added = _raw(policy(path), not cacheable(path), self.hsts)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # what starlette's MutableHeaders.setdefault does for each, in one pass
                raw = message["headers"] = list(message["headers"])
                present = {name for name, _ in raw}
                raw += [(name, value) for name, value in added if name not in present]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if started:  # too late to answer: the client sees a cut-off response
                raise
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "unhandled %s at %s:%s on %s %s",
                type(exc).__name__, where.filename, where.lineno, scope.get("method"), path,
            )  # fmt: skip
            await send_with_headers({
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(INTERNAL_ERROR)).encode()),
                ],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": INTERNAL_ERROR})
