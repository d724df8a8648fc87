"""The audit database (SQLAlchemy): API keys, the audit log of every recommendation, and the
signals replicas share. SQLite by default, PostgreSQL in production; several service
processes share it, so nothing another replica needs lives in process memory.

The audit log holds no patient covariates: only a pseudonymous patient reference (keyed
HMAC of the caller's reference with a server secret), who asked (key id), which model
answered, and what it recommended. The HMAC key is not in this database
(`personalize.service.pseudonyms`): whoever holds the database alone cannot link a
pseudonym to a patient reference by trying candidate references.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from personalize.service.availability import DatabaseAvailability

log = logging.getLogger("personalize.service.audit")

# where earlier versions kept the pseudonym key (in this database, beside the pseudonyms)
LEGACY_PSEUDONYM_SECRET = "pseudonym_hmac_key"
CONNECT_TIMEOUT_SECONDS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """A key's salted hash and role; the secret itself is never stored."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(64))  # e.g. scrypt$16384$8$1
    salt: Mapped[str] = mapped_column(String(64))  # hex
    hash: Mapped[str] = mapped_column(String(128))  # hex
    note: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRecord(Base):
    """One recommendation given: who asked, which model answered, what it said."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_created_at", "created_at"),
        Index("ix_audit_log_patient", "patient_pseudonym"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    channel: Mapped[str] = mapped_column(String(16))  # single | batch | cds-hooks
    key_id: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    model_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recommendation: Mapped[str] = mapped_column(String(200))
    benefit: Mapped[float] = mapped_column(Float)
    benefit_lower: Mapped[float] = mapped_column(Float)
    benefit_upper: Mapped[float] = mapped_column(Float)
    outcome_treatment: Mapped[float] = mapped_column(Float)
    outcome_control: Mapped[float] = mapped_column(Float)


class ServiceSecret(Base):
    """Secrets every replica must share. No longer holds the pseudonym key: a row named
    `LEGACY_PSEUDONYM_SECRET` left by an earlier version is reported at startup."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServiceSignal(Base):
    """When something every replica must act on was last asked for (e.g. a model reload
    requested from one worker): the others read it on their next check."""

    __tablename__ = "service_signals"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CdsTokenSeen(Base):
    """A CDS client's JWT id, kept until the token expires: a second use is a replay, in
    whichever worker or replica it arrives."""

    __tablename__ = "cds_tokens_seen"
    __table_args__ = (Index("ix_cds_tokens_seen_expires_at", "expires_at"),)

    token: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(iss, jti)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuthFailure(Base):
    """A failed credential check, kept for the failure window: every worker and replica
    counts the same failures (`personalize.service.key_guard`). The subject is a digest
    (of an address, a key id, an address and a client), never the value itself."""

    __tablename__ = "auth_failures"
    __table_args__ = (Index("ix_auth_failures_subject_at", "subject", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(40))
    at: Mapped[float] = mapped_column(Float)  # Unix time: the same clock on every replica


class CdsFeedback(Base):
    """What the clinician did with a card (CDS Hooks feedback), once per card and outcome
    (the constraint holds across workers and replicas). The card id is the audit record's
    id, so feedback joins the recommendation it is about. Only coded values are kept: the
    override reason's code from the card's own list, never its display or the clinician's
    comment, which may name the patient. A new table: earlier versions kept
    `LEGACY_FEEDBACK_TABLE` with the reason as given (free text included)."""

    __tablename__ = "cds_feedback_v2"
    __table_args__ = (UniqueConstraint("card", "outcome", name="uq_cds_feedback_v2_card_outcome"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    key_id: Mapped[str] = mapped_column(String(32))
    service_id: Mapped[str] = mapped_column(String(64))
    card: Mapped[str] = mapped_column(String(32))  # the audit record's id
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | overridden
    override_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)  # a code
    outcome_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # UTC


LEGACY_FEEDBACK_TABLE = "cds_feedback"


@event.listens_for(CdsFeedback.__table__, "after_create")
def _report_legacy_feedback(target: Any, connection: Any, **_: Any) -> None:
    """Said once, when this version's feedback table is created beside an earlier one: the
    old table is neither read nor written, and may hold free text."""
    if inspect(connection).has_table(LEGACY_FEEDBACK_TABLE):
        log.warning(
            "the audit database still holds table %s, where an earlier version kept CDS "
            "feedback with override reasons as the EHR sent them (free text that may name a "
            "patient included). Feedback now goes to %s; the old table is not used: review "
            "it and drop it (see docs/security.md)",
            LEGACY_FEEDBACK_TABLE,
            CdsFeedback.__tablename__,
        )


# built once: SQLAlchemy computes a new statement's cache key on every execution
_INSERT_AUDIT = insert(AuditRecord)


@dataclass(frozen=True)
class FeedbackEntry:
    """One feedback item as it is kept: coded values and a parsed time only."""

    card: str  # the audit record's id
    outcome: str
    override_reason: str | None  # a code of the card's overrideReasons
    outcome_at: datetime


class FeedbackExists(Exception):
    """Feedback with this outcome was recorded for these cards before (audit ids)."""

    def __init__(self, taken: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"feedback already recorded for {len(taken)} card(s)")
        self.taken = list(taken)


@dataclass(frozen=True)
class AuditEntry:
    """One patient's recommendation, as `Database.record` writes it."""

    patient_ref: str | None
    recommendation: str
    benefit: float
    benefit_lower: float
    benefit_upper: float
    outcome_treatment: float
    outcome_control: float


@dataclass(frozen=True)
class AuditRequest:
    """One request's recommendations and who asked for them, through which channel."""

    channel: str
    key_id: str
    entries: Sequence[AuditEntry]


class Database:
    """Engine, sessions and availability of the audit database, and the pseudonym key
    (given by the caller; `personalize.service.pseudonyms` finds it)."""

    def __init__(
        self,
        url: str,
        pseudonym_secret: str | bytes | None = None,
        *,
        retry_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if isinstance(pseudonym_secret, str):
            pseudonym_secret = pseudonym_secret.encode()
        self._pseudonym_key = pseudonym_secret or None
        self.availability = DatabaseAvailability("audit database", retry_seconds)

    def create_schema(self) -> None:
        """Create the tables if absent. Several workers may start at once: a concurrent
        creator's 'already exists' is not an error, so retry a few times."""
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._report_legacy_pseudonym_key()

    def _report_legacy_pseudonym_key(self) -> None:
        with self.engine.connect() as connection:
            legacy = connection.execute(
                select(ServiceSecret.name).where(ServiceSecret.name == LEGACY_PSEUDONYM_SECRET)
            ).first()
        if legacy is not None:
            log.warning(
                "the audit database still holds the pseudonym key of an earlier version "
                "(table service_secrets, name %r): with it, anyone who has the database can "
                "link the pseudonyms written under it to patient references. It is no longer "
                "used; delete that row (to keep linking old pseudonyms, first copy its value "
                "to a key file kept elsewhere, see docs/security.md)",
                LEGACY_PSEUDONYM_SECRET,
            )

    def probe(self) -> bool:
        """Whether the database answers with the tables requests need, recreating them if
        they are gone (a database recreated empty); tells `availability` either way."""
        try:
            self._read_tables()
        except SQLAlchemyError:
            try:
                Base.metadata.create_all(self.engine)
                self._read_tables()
            except SQLAlchemyError as exc:
                self.availability.failed(exc)
                return False
        self.availability.answered()
        return True

    def _read_tables(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(select(ApiKey.key_id).limit(0)).all()
            connection.execute(select(AuditRecord.id).limit(0)).all()

    def dispose(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self.sessions()

    def raise_signal(self, name: str) -> datetime:
        """Record that `name` was asked for now (for every replica to see)."""
        now = utcnow()
        with self.session() as session:
            row = session.get(ServiceSignal, name)
            if row is None:
                session.add(ServiceSignal(name=name, raised_at=now))
            else:
                row.raised_at = now
            try:
                session.commit()
            except IntegrityError:  # another replica created the row first: update it
                session.rollback()
                session.get_one(ServiceSignal, name).raised_at = now
                session.commit()
        return now

    def signal(self, name: str) -> datetime | None:
        """When `name` was last raised, if ever; None too while the database does not
        answer (it is polled every second: an outage is reported once, by `availability`)."""
        availability = self.availability
        if not availability.due() or (availability.down and not self.probe()):
            return None
        try:
            with self.engine.connect() as connection:
                return connection.execute(
                    select(ServiceSignal.raised_at).where(ServiceSignal.name == name)
                ).scalar_one_or_none()
        except SQLAlchemyError as exc:
            availability.failed(exc)
            return None

    def pseudonym_key(self) -> bytes:
        """The HMAC key the service was given."""
        if self._pseudonym_key is None:
            raise RuntimeError(
                "no pseudonym key: this Database was opened without one (key management "
                "only), so it cannot write audit rows with patient references"
            )
        return self._pseudonym_key

    def pseudonym(self, patient_ref: str | None) -> str | None:
        if patient_ref is None:
            return None
        return hmac.new(self.pseudonym_key(), patient_ref.encode(), hashlib.sha256).hexdigest()

    def record(
        self,
        *,
        model_name: str,
        model_version: str,
        model_run_id: str | None,
        requests: Sequence[AuditRequest],
    ) -> list[list[str]]:
        """Write one audit row per entry of every request, in one transaction; returns
        each request's row ids."""
        now = utcnow()
        rows: list[list[dict[str, Any]]] = []
        for request in requests:
            request_id = uuid.uuid4().hex
            rows.append(
                [
                    {
                        "id": uuid.uuid4().hex,
                        "request_id": request_id,
                        "created_at": now,
                        "channel": request.channel,
                        "key_id": request.key_id,
                        "model_name": model_name,
                        "model_version": model_version,
                        "model_run_id": model_run_id,
                        "patient_pseudonym": self.pseudonym(e.patient_ref),
                        "recommendation": e.recommendation,
                        "benefit": e.benefit,
                        "benefit_lower": e.benefit_lower,
                        "benefit_upper": e.benefit_upper,
                        "outcome_treatment": e.outcome_treatment,
                        "outcome_control": e.outcome_control,
                    }
                    for e in request.entries
                ]
            )
        # one Core INSERT in one transaction: ORM objects cost more than the write itself
        try:
            with self.engine.begin() as connection:
                connection.execute(_INSERT_AUDIT, [row for request in rows for row in request])
        except SQLAlchemyError as exc:
            self.availability.failed(exc)
            raise
        self.availability.answered()
        return [[str(row["id"]) for row in request] for request in rows]

    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record a CDS client's JWT id; False when it was recorded before (a replay).
        Expired ids are purged as new ones arrive."""
        token = hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(CdsTokenSeen).where(CdsTokenSeen.expires_at < utcnow()))
                connection.execute(
                    insert(CdsTokenSeen), [{"token": token, "expires_at": expires_at}]
                )
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            self.availability.failed(exc)
            raise
        self.availability.answered()
        return True

    def cds_records(self, ids: Sequence[str], key_id: str) -> set[str]:
        """Which of these audit record ids are CDS Hooks cards given to `key_id`: only the
        caller a card was given to may send feedback on it."""
        if not ids:
            return set()
        with self.engine.connect() as connection:
            found = connection.execute(
                select(AuditRecord.id).where(
                    AuditRecord.id.in_(list(ids)),
                    AuditRecord.channel == "cds-hooks",
                    AuditRecord.key_id == key_id,
                )
            ).scalars()
            return set(found)

    def record_feedback(
        self, key_id: str, service_id: str, entries: Sequence[FeedbackEntry]
    ) -> None:
        """Write a feedback request's entries in one transaction, all or none; FeedbackExists
        when a card already has feedback with that outcome (from this request's caller or a
        concurrent one: the unique constraint decides)."""
        now = utcnow()
        rows = [
            {
                "id": uuid.uuid4().hex,
                "created_at": now,
                "key_id": key_id,
                "service_id": service_id,
                "card": e.card,
                "outcome": e.outcome,
                "override_reason": e.override_reason,
                "outcome_at": e.outcome_at.astimezone(UTC),
            }
            for e in entries
        ]
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(CdsFeedback), rows)
        except IntegrityError:
            taken = self._feedback_recorded(entries)
            if not taken:
                raise
            raise FeedbackExists(taken) from None
        except SQLAlchemyError as exc:
            self.availability.failed(exc)
            raise
        self.availability.answered()

    def _feedback_recorded(self, entries: Sequence[FeedbackEntry]) -> list[tuple[str, str]]:
        """Which (card, outcome) pairs of `entries` have feedback recorded already."""
        with self.engine.connect() as connection:
            recorded = set(
                connection.execute(
                    select(CdsFeedback.card, CdsFeedback.outcome).where(
                        CdsFeedback.card.in_({e.card for e in entries})
                    )
                ).tuples()
            )
        return [(e.card, e.outcome) for e in entries if (e.card, e.outcome) in recorded]


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a server may drop idle connections
    if url.startswith("sqlite"):  # a file: nothing to ping, and a ping per request costs
        kwargs = {"connect_args": {"timeout": 30}}
    for plain in ("postgresql://", "postgres://"):  # psycopg 3 is the installed driver
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url.removeprefix(plain)
    if url.startswith("postgresql+psycopg"):
        # an unreachable server must fail a request within seconds, not hang it: a bounded
        # connect, and a bounded wait for the server to acknowledge what was sent (a pooled
        # connection's ping) - unless the URL says otherwise
        given = make_url(url).query
        kwargs["connect_args"] = {
            name: value
            for name, value in (
                ("connect_timeout", CONNECT_TIMEOUT_SECONDS),
                ("tcp_user_timeout", CONNECT_TIMEOUT_SECONDS * 1000),
            )
            if name not in given
        }
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # several worker processes, one file
            # WAL + NORMAL: no fsync per commit, never corrupt; a power loss (not a process
            # crash) can lose the last commits. Production audit logs belong in PostgreSQL.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


__all__ = [
    "ApiKey",
    "AuditEntry",
    "AuditRecord",
    "AuditRequest",
    "Base",
    "CdsFeedback",
    "CdsTokenSeen",
    "Database",
    "FeedbackEntry",
    "FeedbackExists",
    "SQLAlchemyError",
    "ServiceSecret",
    "ServiceSignal",
    "make_engine",
]
