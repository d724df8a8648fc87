"""FHIR servers on loopback that misbehave, one per base path, all recording every request
(path and Authorization header) they get:

- `/slow/fhir`: answers only after `answer_after` seconds (a hung server, as far as a caller
  with a deadline can tell);
- `/drip/fhir`: sends a 200 and then its body at one byte a second;
- `/dotdot/fhir`, `/encoded/fhir`, `/newline/fhir`, `/long/fhir`: a search whose Bundle's
  `next` link climbs out of the base (`{base}/../other/Observation`, with `%2e%2e`), holds a
  newline, or is 70 KB long;
- `/big/fhir`: a search of 4 MiB pages that never ends;
- anything else (`/other/...`): an empty Bundle, so a request that got there is seen.

Patient reads (`{base}/Patient/{id}`) on the link-trick bases answer a Patient.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.ehr import Seen

PATIENT = {"resourceType": "Patient", "id": "pat-9", "gender": "male", "birthDate": "1966-03-02"}
LINK_TRICKS = {
    "dotdot": "/../other/Observation?subject=pat-9",
    "encoded": "/%2e%2e/other/Observation?subject=pat-9",
    "newline": "/Observation?subject=pat-9&_offset=2\nX-Injected: 1",
    "long": "/Observation?subject=pat-9&_offset=2&pad=" + "a" * 70_000,
}
PAGE_BYTES = 4 * 1024 * 1024


@dataclass
class MisbehavingFhir:
    url: str
    answer_after: float = 15.0
    seen: list[Seen] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def base(self, name: str) -> str:
        """The FHIR base of one behaviour: slow, drip, dotdot, encoded, newline, long, big."""
        return f"{self.url}/{name}/fhir"

    def seen_under(self, name: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(f"/{name}/")]


def _bundle(link: str | None, entries: list[dict[str, Any]], pad: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [] if link is None else [{"relation": "next", "url": link}],
        "entry": entries,
    }
    if pad:
        body["meta"] = {"tag": [{"code": "x" * pad}]}
    return body


@contextlib.contextmanager
def misbehaving_fhir(answer_after: float = 15.0) -> Iterator[MisbehavingFhir]:
    """The servers on a free loopback port; held requests end when the context exits."""
    state: dict[str, MisbehavingFhir] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the caller may have given up
                self.wfile.write(data)

        def do_GET(self) -> None:
            fhir = state["fhir"]
            fhir.seen.append(Seen(self.path, self.headers.get("Authorization")))
            name, _, rest = self.path.lstrip("/").partition("/")
            if name == "slow":
                if not fhir.stopping.wait(fhir.answer_after):
                    self._send(PATIENT)
                return None
            if name == "drip":
                data = json.dumps(PATIENT).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for byte in data:
                    if fhir.stopping.wait(1.0):
                        return None
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the caller gave up
                        return None
                return None
            if name in LINK_TRICKS and rest.startswith("fhir/Patient/"):
                return self._send(PATIENT)
            if name in LINK_TRICKS and rest.startswith("fhir/Observation"):
                return self._send(_bundle(fhir.base(name) + LINK_TRICKS[name], []))
            if name == "big":
                return self._send(_bundle(fhir.base(name) + "/Observation?more", [], PAGE_BYTES))
            return self._send(_bundle(None, []))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["fhir"] = MisbehavingFhir(f"http://127.0.0.1:{server.server_address[1]}", answer_after)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["fhir"]
    finally:
        state["fhir"].stopping.set()
        server.shutdown()
        server.server_close()
