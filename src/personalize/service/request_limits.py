"""How much of a request line and its headers a worker holds before the app sees them.

uvicorn's httptools protocol feeds every chunk it reads to the parser, and the parser keeps
a header's bytes until the header ends: nothing bounds what one connection makes a worker
buffer (a 200 MB header took a worker from 0.5 to 2 GB and blocked its event loop for
seconds), nor how many headers it collects. `LimitedHttpToolsProtocol` counts the bytes
that arrive while a request's headers are incomplete and the headers the parser reports;
past `HeaderLimits` it answers 431 and closes the connection, having held at most the limit
plus one read from the socket. It keeps httptools (C) as the parser: h11, which has a size
limit of its own, is pure Python and slower.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from personalize.service.config import Settings
from personalize.service.headers import API_POLICY, COMMON

log = logging.getLogger("personalize.service.limits")

# after a 431, how long the rest of what the client sends is read and dropped before the
# connection closes: closing with unread data resets the connection, and a client still
# sending its request could lose the answer
LINGER_SECONDS = 2.0

_REFUSAL_HEADERS = b"".join(
    name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
    for name, value in (
        *COMMON,
        ("content-security-policy", API_POLICY),
        ("cache-control", "no-store"),
        ("content-type", "application/json"),
        ("connection", "close"),
    )
)


@dataclass(frozen=True)
class HeaderLimits:
    """The request line and headers a worker accepts: `max_bytes` in all, `max_count`
    header fields."""

    max_bytes: int
    max_count: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HeaderLimits:
        return cls(max_bytes=settings.max_header_bytes, max_count=settings.max_headers)


DEFAULT_HEADER_LIMITS = HeaderLimits(
    max_bytes=Settings.model_fields["max_header_bytes"].default,
    max_count=Settings.model_fields["max_headers"].default,
)


class _Refused(Exception):
    """Stops the parser inside a callback (httptools re-raises it wrapped)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `HeaderLimits` (the config's `header_limits`).

    Two counts, both against `max_bytes`: the bytes received since the request began while
    its headers are incomplete (what bounds memory: checked after each read, before the
    next is parsed), and the request target plus each header as the parser reports them
    (exact, whatever the reads: a request whose oversized headers arrive in one read is
    refused as well)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "header_limits", DEFAULT_HEADER_LIMITS)
        self.max_header_bytes: int = limits.max_bytes
        self.max_headers: int = limits.max_count
        self.awaiting_headers = True  # reading a request line and headers (or before one)
        self.received_header_bytes = 0
        self.parsed_header_bytes = 0
        self.header_count = 0
        self.refusal: str | None = None
        self.linger: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the limits (a malformed request still gets uvicorn's 400)."""
        if self.refusal is not None:  # answered 431: drop what still comes
            return
        self._unset_keepalive_if_required()
        if self.awaiting_headers:
            self.received_header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.refusal is None:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.awaiting_headers and self.received_header_bytes > self.max_header_bytes:
            self.refuse(self._too_large())
        if self.refusal is not None:
            self._answer_431()

    def on_message_begin(self) -> None:
        self.parsed_header_bytes = 0
        self.header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.parsed_header_bytes += len(url)
        if self.parsed_header_bytes > self.max_header_bytes:
            self.refuse(self._too_large())
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.parsed_header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_count > self.max_headers:
            self.refuse(f"more than {self.max_headers} request headers (PERSONALIZE_MAX_HEADERS)")
            raise _Refused
        if self.parsed_header_bytes > self.max_header_bytes:
            self.refuse(self._too_large())
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        self.received_header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.awaiting_headers = True
        self.received_header_bytes = 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linger is not None:
            self.linger.cancel()
        super().connection_lost(exc)

    def refuse(self, detail: str) -> None:
        if self.refusal is None:
            self.refusal = detail

    def _too_large(self) -> str:
        return (
            f"request line and headers larger than {self.max_header_bytes} bytes "
            "(PERSONALIZE_MAX_HEADER_BYTES)"
        )

    def _answer_431(self) -> None:
        """431, then the connection ends: at once if an earlier pipelined request is still
        being answered (a 431 cannot go before its response; the client sees the
        connection close after it), else after a short lingering read."""
        assert self.refusal is not None
        client = self.client[0] if self.client else "unknown"
        log.warning("431 to %s: %s", client, self.refusal)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = json.dumps({"detail": self.refusal}).encode()
        parts = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [_REFUSAL_HEADERS, b"content-length: %d\r\n\r\n" % len(body), body]
        self.transport.write(b"".join(parts))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is complete; reading goes on a little
        self.linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)


__all__ = ["DEFAULT_HEADER_LIMITS", "HeaderLimits", "LimitedHttpToolsProtocol"]
