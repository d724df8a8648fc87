"""API keys and roles.

A key looks like ``pz_<key id>_<secret>``. The key id (16 hex characters) is the primary key
of its row, so lookup is one indexed read; the secret is checked against a salted scrypt
hash (per-key random salt). Only the hash is stored; the full key is printed once by
``personalize keys create``.

Roles are cumulative, least privilege first: clinician (single recommendations, model
card, CDS Hooks) < researcher (+ batch) < admin (+ reload). The routes check them through
`personalize.service.deps` (401 without a valid key, 403 without the role; what failed
checks may cost is bounded by `personalize.service.key_guard`).

An unknown or revoked key id costs the same scrypt as a known one (`decoy_check`), so the
time an answer takes does not tell which key ids exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from sqlalchemy import Connection, bindparam, select

from personalize.service.audit import ApiKey, Database, utcnow

KEY_PREFIX = "pz"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ALGORITHM = f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}"


class Role(IntEnum):
    clinician = 1
    researcher = 2
    admin = 3


ROLE_NAMES = [r.name for r in Role]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id (safe to log and audit) and its role."""

    key_id: str
    role: Role


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    role: str
    note: str | None
    created_at: datetime
    revoked_at: datetime | None


# ------------------------------------------------------------------------- hashing


def _scrypt(secret: str, salt: bytes, algorithm: str) -> bytes:
    name, n, r, p = algorithm.split("$")
    if name != "scrypt":
        raise ValueError(f"unknown key hash algorithm {name!r}")
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024
    )


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != 16 or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


class VerifiedSecrets:
    """Memo of the (deliberately slow) scrypt check: (key id, sha256 of the presented
    secret) -> the stored hash it matched. Pure memoization, never authorization: the key's
    row (role, revocation) is read from the database on every request, and a memo entry
    only counts while it names the row's current hash. Owned by the app that checks keys
    (its key guard), bounded to `size` entries, least recently used dropped."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: str) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


# Core, not the ORM: this runs on every request, and the ORM session cost four times the read
_KEY_ROW = select(ApiKey.role, ApiKey.revoked_at, ApiKey.algorithm, ApiKey.salt, ApiKey.hash).where(
    ApiKey.key_id == bindparam("key_id")
)


@dataclass(frozen=True)
class Claim:
    """A presented key whose row exists and is not revoked; its secret is still to check."""

    key_id: str
    secret: str
    role: str
    algorithm: str
    salt: str
    hash: str

    @property
    def memo(self) -> tuple[str, str]:
        return _memo(self.key_id, self.secret)

    def remembered(self, verified: VerifiedSecrets) -> bool:
        """The secret matched this row's hash before (no scrypt needed)."""
        return verified.get(self.memo) == self.hash

    def check(self, verified: VerifiedSecrets) -> bool:
        """The slow check (scrypt), remembered in `verified` when it succeeds."""
        try:
            digest = _scrypt(self.secret, bytes.fromhex(self.salt), self.algorithm).hex()
        except ValueError:
            return False
        if not hmac.compare_digest(digest, self.hash):
            return False
        verified.put(self.memo, self.hash)
        return True

    @property
    def principal(self) -> Principal:
        return Principal(key_id=self.key_id, role=Role[self.role])


def _memo(key_id: str, secret: str) -> tuple[str, str]:
    return (key_id, hashlib.sha256(secret.encode()).hexdigest())


# what an unknown key id is checked against: random, so nothing matches it
_DECOY_SALT = secrets.token_bytes(16)
_DECOY_HASH = secrets.token_hex(64)


def decoy_check(secret: str) -> bool:
    """The slow check for a key id without a usable row (unknown, revoked): the same
    scrypt as `Claim.check`, against a hash nothing matches. Always False."""
    digest = _scrypt(secret, _DECOY_SALT, ALGORITHM).hex()
    hmac.compare_digest(digest, _DECOY_HASH)
    return False


def claim(connection: Connection, key: str) -> Claim | None:
    """The key's row if the key is well formed, exists, is not revoked and has a role."""
    parts = split_key(key)
    if parts is None:
        return None
    key_id, secret = parts
    row = connection.execute(_KEY_ROW, {"key_id": key_id}).one_or_none()
    if row is None or row.revoked_at is not None or row.role not in ROLE_NAMES:
        return None
    return Claim(key_id, secret, row.role, row.algorithm, row.salt, row.hash)


# ------------------------------------------------------------------------- key management


def create_key(db: Database, role: str, note: str | None = None) -> tuple[str, str]:
    """Store a new key's hash; return (key id, full key). The key is not kept anywhere."""
    if role not in ROLE_NAMES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLE_NAMES)}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    row = ApiKey(
        key_id=key_id,
        role=role,
        algorithm=ALGORITHM,
        salt=salt.hex(),
        hash=_scrypt(secret, salt, ALGORITHM).hex(),
        note=note,
        created_at=utcnow(),
    )
    with db.session() as session:
        session.add(row)
        session.commit()
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def revoke_key(db: Database, key_id: str) -> bool:
    """Revoke a key (effective on the next request, in every replica). False if unknown;
    revoking twice keeps the first revocation time."""
    with db.session() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.commit()
        return True


def list_keys(db: Database) -> list[KeyInfo]:
    with db.session() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        return [KeyInfo(r.key_id, r.role, r.note, r.created_at, r.revoked_at) for r in rows]
