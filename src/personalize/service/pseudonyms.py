"""The HMAC key of patient pseudonyms, kept outside the audit database.

A pseudonym is ``HMAC-SHA256(key, patient reference)``. Patient references (MRNs, FHIR ids)
are few and guessable, so whoever holds both the pseudonyms and the key can link them to
patients by trying candidates; the key therefore never lives beside the pseudonyms. It
comes from, in order:

1. ``PERSONALIZE_PSEUDONYM_SECRET`` (the key itself), or
2. ``PERSONALIZE_PSEUDONYM_SECRET_FILE`` (a file holding it; surrounding whitespace is
   ignored), or, only outside production,
3. a key generated once into ``models/pseudonym.key`` (mode 0600), with a warning.

Either explicit key must have at least `MIN_BYTES` bytes. With ``PERSONALIZE_ENV=production``
the service refuses to start without one of the first two. Every replica must be given the
same key, or the same patient gets different pseudonyms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from personalize.service.config import Settings

log = logging.getLogger("personalize.service.pseudonyms")

SECRET_VARIABLE = "PERSONALIZE_PSEUDONYM_SECRET"
FILE_VARIABLE = "PERSONALIZE_PSEUDONYM_SECRET_FILE"
ENV_VARIABLE = "PERSONALIZE_ENV"
MIN_BYTES = 32
DEVELOPMENT_KEY_FILE = Path("models") / "pseudonym.key"
GENERATE_HINT = "e.g. `openssl rand -hex 32`"


class PseudonymKeyError(ValueError):
    """A pseudonym key that cannot be used; the message names the variable."""


def check_strength(key: bytes, source: str) -> bytes:
    """`key` if it has at least `MIN_BYTES` bytes; otherwise an error naming `source`."""
    if len(key) < MIN_BYTES:
        raise PseudonymKeyError(
            f"{source}: the pseudonym key has {len(key)} bytes; it needs at least {MIN_BYTES} "
            f"({GENERATE_HINT})"
        )
    return key


def read_key_file(path: Path, source: str = FILE_VARIABLE) -> bytes:
    """The key held in `path` (surrounding whitespace removed), checked for strength."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise PseudonymKeyError(
            f"{source}: cannot read the pseudonym key file {str(path)!r} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    return check_strength(key, f"{source} ({path})")


def explicit_key(secret: str | None, secret_file: Path | None, env: str) -> bytes | None:
    """The key given in the settings, None if none is (development only): raises
    `PseudonymKeyError` for a weak or unreadable key, for both sources at once, and for
    production without either."""
    if secret is not None and secret_file is not None:
        raise PseudonymKeyError(f"set {SECRET_VARIABLE} or {FILE_VARIABLE}, not both")
    if secret is not None:
        return check_strength(secret.encode(), SECRET_VARIABLE)
    if secret_file is not None:
        return read_key_file(secret_file)
    if env == "production":
        raise PseudonymKeyError(
            f"{ENV_VARIABLE}=production needs a pseudonym key outside the audit database: set "
            f"{SECRET_VARIABLE} (at least {MIN_BYTES} bytes, {GENERATE_HINT}) or "
            f"{FILE_VARIABLE} (a file holding it)"
        )
    return None


def pseudonym_key(settings: Settings) -> bytes:
    """The key the service pseudonymizes with (see the module docstring for where from)."""
    secret = settings.pseudonym_secret.get_secret_value() if settings.pseudonym_secret else None
    key = explicit_key(secret, settings.pseudonym_secret_file, settings.env)
    if key is not None:
        return key
    path = DEVELOPMENT_KEY_FILE.resolve()
    key = development_key(path)
    log.warning(
        "no %s or %s: patient pseudonyms use the development key in %s (generated once, "
        "outside the audit database). Not for production: set %s=production and give a key",
        SECRET_VARIABLE,
        FILE_VARIABLE,
        path,
        ENV_VARIABLE,
    )
    return key


def development_key(path: Path) -> bytes:
    """The key in `path`, generated there first if absent (mode 0600, created whole: a
    worker starting at the same time reads either nothing or the complete key)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym-", suffix=".tmp")
        try:
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(MIN_BYTES) + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(draft, path)
        finally:
            os.unlink(draft)
    return read_key_file(path, "the development pseudonym key file")


__all__ = [
    "DEVELOPMENT_KEY_FILE",
    "MIN_BYTES",
    "PseudonymKeyError",
    "check_strength",
    "development_key",
    "explicit_key",
    "pseudonym_key",
    "read_key_file",
]
