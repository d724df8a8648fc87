"""FHIR server URLs as the service checks and sends them.

An EHR's access token may go only to its registered FHIR base, so every URL the service
would fetch (the request's `fhirServer`, a query built on it, a Bundle's `next` link) is put
in one normal form first and checked in that form, and the normal form is what is sent:
what was checked is what the server receives. HTTP servers disagree about dot segments,
percent-encoded dots, backslashes and doubled slashes, so the normal form has none of them;
URLs with anything a server might read two ways (control characters, whitespace, non-ASCII,
userinfo, encoded slashes) are refused rather than repaired.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_HOST_NAME = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*\.?$")
_PERCENT = re.compile(r"%(?P<hex>.{0,2})")
_HEX_PAIR = re.compile(r"^[0-9A-Fa-f]{2}$")
_DOT_WITH_PARAMETER = re.compile(r"^\.\.?;")  # `..;` is `..` to some servlet containers
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# percent-encodings some servers decode into a separator or decode twice: refused in a path
_AMBIGUOUS = {"2F": "an encoded '/'", "5C": "an encoded '\\'", "25": "an encoded '%'"}


class UnsafeUrl(ValueError):
    """A URL the service does not fetch; the message says what is wrong with it."""


@dataclass(frozen=True)
class FhirUrl:
    """An http(s) URL in normal form: scheme and host in lower case, no default port, a path
    without dot segments, empty segments or unreserved percent-encodings, no fragment."""

    scheme: str
    host: str  # an IPv6 address in brackets
    port: int | None
    path: str  # "" or starting with "/"
    query: str | None = None

    @property
    def origin(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"

    @property
    def base(self) -> FhirUrl:
        """This URL as a FHIR base: no query and no trailing slash."""
        return FhirUrl(self.scheme, self.host, self.port, self.path.rstrip("/"))

    def join(self, relative: str) -> str:
        """`relative` (a query such as `Patient/1`) appended to this base."""
        return f"{self.origin}{self.base.path}/{relative.lstrip('/')}"

    def is_under(self, base: FhirUrl) -> bool:
        """Whether this URL is `base` or below its path, on the same scheme, host and port."""
        root = base.base
        if (self.scheme, self.host, self.port) != (root.scheme, root.host, root.port):
            return False
        return self.path.rstrip("/") == root.path or self.path.startswith(root.path + "/")

    def __str__(self) -> str:
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.origin}{self.path or '/'}{query}"


def parse(url: str) -> FhirUrl:
    """`url` in normal form; UnsafeUrl when it cannot be fetched as it stands."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("is not a URL")
    if len(url) > MAX_URL_CHARS:
        raise UnsafeUrl(f"is longer than {MAX_URL_CHARS} characters")
    for char in url:
        if not "!" <= char <= "~":
            raise UnsafeUrl(
                f"contains {_char_name(char)}; control characters, whitespace and "
                "non-ASCII characters are not accepted"
            )
    found = _SCHEME.match(url)
    scheme = found.group(1).lower() if found else ""
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrl("is not an http:// or https:// URL")
    rest = url[found.end() :] if found else url
    rest, _, _fragment = rest.partition("#")
    rest, has_query, query = rest.partition("?")
    if not rest.startswith("//"):
        raise UnsafeUrl("has no host")
    authority, slash, path = rest[2:].partition("/")
    if "\\" in authority:  # read as the host's end by some parsers, not by others
        raise UnsafeUrl("has a backslash in its host part")
    path = path.replace("\\", "/")  # as browsers and some servers read it
    host, port = _authority(authority, scheme)
    return FhirUrl(scheme, host, port, _path(slash + path), query if has_query else None)


def parse_base(url: str) -> FhirUrl:
    """A FHIR base URL (`fhirServer`, a registered server) in normal form."""
    found = parse(url)
    if found.query is not None or "#" in url:
        raise UnsafeUrl("has a query or fragment (a FHIR base URL has neither)")
    return found.base


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X}" if not char.isprintable() or char.isspace() else repr(char)


def _authority(authority: str, scheme: str) -> tuple[str, int | None]:
    if "@" in authority:
        raise UnsafeUrl("has userinfo ('user@host'); credentials in a URL are not accepted")
    if "%" in authority:
        raise UnsafeUrl("has a percent-encoded host")
    if authority.startswith("["):
        literal, bracket, after = authority[1:].partition("]")
        if not bracket:
            raise UnsafeUrl("has an unclosed IPv6 address")
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise UnsafeUrl("has an invalid IPv6 address") from None
        host, port_text = f"[{address.compressed}]", after
        if port_text and not port_text.startswith(":"):
            raise UnsafeUrl("has characters after the IPv6 address")
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
        host = host.lower()
        if not host or not _HOST_NAME.match(host):
            raise UnsafeUrl("has no valid host name")
    if port_text == "":
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UnsafeUrl("has an invalid port")
    port = int(port_text)
    return host, None if port == DEFAULT_PORTS[scheme] else port


def _path(path: str) -> str:
    """Unreserved percent-encodings decoded, then empty and dot segments removed."""

    def decode(match: re.Match[str]) -> str:
        hex_digits = match.group("hex").upper()
        if not _HEX_PAIR.match(hex_digits):
            raise UnsafeUrl("has an invalid percent-encoding")
        char = chr(int(hex_digits, 16))
        if hex_digits in _AMBIGUOUS:
            raise UnsafeUrl(f"has {_AMBIGUOUS[hex_digits]} in its path")
        if not "!" <= char <= "~":
            raise UnsafeUrl("has a percent-encoded control or non-ASCII byte in its path")
        return char if char in _UNRESERVED else f"%{hex_digits}"

    segments: list[str] = []
    for segment in _PERCENT.sub(decode, path).split("/"):
        if _DOT_WITH_PARAMETER.match(segment):
            raise UnsafeUrl("has a dot segment with a parameter ('..;') in its path")
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if path.endswith("/") and segments else ""
    return "".join("/" + s for s in segments) + trailing
