"""An unhandled error is answered with the security headers, without its message, and its
log line names where it happened but not what it said; production adds HSTS."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from personalize.service.headers import HSTS, SecurityHeadersMiddleware

SECRET = "phq8=23 for MRN-0042"


async def broken(request: object) -> JSONResponse:
    raise ValueError(SECRET)


async def fine(request: object) -> JSONResponse:
    return JSONResponse({"ok": True})


def client(hsts: bool = False) -> TestClient:
    app = Starlette(routes=[Route("/broken", broken), Route("/fine", fine)])
    app.add_middleware(SecurityHeadersMiddleware, hsts=hsts)
    return TestClient(app, raise_server_exceptions=True)


def test_a_500_carries_the_headers_and_no_message(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="personalize.service.errors"):
        r = client().get("/broken")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert SECRET not in r.text
    (record,) = caplog.records
    assert "ValueError" in record.getMessage() and "test_security_headers.py" in record.getMessage()
    assert SECRET not in record.getMessage() and record.exc_info is None


def test_hsts_only_in_production() -> None:
    assert "strict-transport-security" not in client().get("/fine").headers
    r = client(hsts=True).get("/fine")
    assert r.headers["strict-transport-security"] == HSTS[1]
    assert client(hsts=True).get("/broken").headers["strict-transport-security"] == HSTS[1]
