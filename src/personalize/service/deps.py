"""What a route receives as FastAPI dependencies: the settings, the audit database, the
model holder and the model this request uses, the scoring thread, the FHIR mapping, and the
caller's API key checked against its role (within the limits of
`personalize.service.key_guard`, and with 503 while the audit database is unavailable).

Dependencies that only read app state are coroutines: FastAPI runs plain functions in its
thread pool, a hop per dependency per request that costs more than the work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from personalize.service.audit import Database
from personalize.service.auth import (
    Claim,
    Principal,
    Role,
    claim,
    decoy_check,
    split_key,
)
from personalize.service.availability import DatabaseAvailability
from personalize.service.cds_clients import (
    CdsClient,
    ClientRejected,
    TrustedClients,
    looks_like_jwt,
)
from personalize.service.config import Settings
from personalize.service.fhir import FhirMapping
from personalize.service.holder import LoadedModel, ModelHolder
from personalize.service.key_guard import HashingBusy, KeyGuard, Subject
from personalize.service.recommend import ScoringThread
from personalize.service.schemas import Problem

# ---------------------------------------------------------------------------- app state


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def get_scorer(request: Request) -> ScoringThread:
    scorer: ScoringThread = request.app.state.scorer
    return scorer


async def get_mapping(request: Request) -> FhirMapping:
    mapping: FhirMapping = request.app.state.fhir_mapping
    return mapping


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
Scorer = Annotated[ScoringThread, Depends(get_scorer)]
MappingDep = Annotated[FhirMapping, Depends(get_mapping)]


async def current_model(request: Request) -> LoadedModel:
    """The model this request uses from start to end (read once: a swap during the request
    does not affect it). Reads the holder from app state itself: every dependency FastAPI
    resolves costs tens of microseconds a request."""
    holder: ModelHolder = request.app.state.holder
    loaded = holder.current
    if loaded is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded yet: {holder.status}",
            headers={"Retry-After": str(int(holder.settings.retry_seconds) or 1)},
        )
    return loaded


CurrentModel = Annotated[LoadedModel, Depends(current_model)]


# ---------------------------------------------------------------------------- keys and roles

bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `personalize keys create`, as `Authorization: Bearer <key>`.",
)

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no key, or an invalid or revoked key"},
    403: {"model": Problem, "description": "the key's role does not allow this route"},
    429: {
        "model": Problem,
        "description": "too many failed credential checks from this address, for this key "
        "id or in this client's name; see Retry-After",
    },
    503: {
        "model": Problem,
        "description": "the audit database is unavailable, or keys are being checked at "
        "capacity; see Retry-After",
    },
}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _too_many(wait: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail="too many failed credential checks; retry later",
        headers={"Retry-After": str(wait)},
    )


def database_unavailable(availability: DatabaseAvailability) -> HTTPException:
    """503 while the audit database does not answer (no key can be checked, no
    recommendation audited)."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the audit database is unavailable; retry later",
        headers={"Retry-After": availability.retry_after},
    )


def key_guard(state: Any) -> KeyGuard:
    """The app's limits on failed key checks (`state`: the app's state), made on first use
    (its counters belong to this app; called on the event loop only, so made once)."""
    guard: KeyGuard | None = getattr(state, "key_guard", None)
    if guard is None:
        guard = state.key_guard = KeyGuard.from_settings(state.settings, state.database)
    return guard


async def get_key_guard(request: Request) -> KeyGuard:
    return key_guard(request.app.state)


KeyGuardDep = Annotated[KeyGuard, Depends(get_key_guard)]


def client_address(request: Request) -> str:
    """The caller's address: the socket's peer, or what a proxy the settings trust
    forwarded (uvicorn applies that before the app sees the request)."""
    return request.client.host if request.client else "unknown"


async def _over_limit(database: Database, guard: KeyGuard, *subjects: Subject) -> int:
    """Seconds the caller must wait (0: may go on); 503 while the audit database, which
    holds the failure counts, is unavailable."""
    _available(database)
    try:
        return await guard.wait(*subjects)
    except SQLAlchemyError:
        raise database_unavailable(database.availability) from None


async def _refuse(
    database: Database,
    guard: KeyGuard,
    *subjects: Subject,
    reason: str = "invalid or revoked API key",
) -> HTTPException:
    """Count a failed check; the answer to give: 401 with `reason`, or 429 when it went past a
    limit (it arrived together with others that all saw the count below it)."""
    _available(database)
    try:
        wait = await guard.failed(*subjects)
    except SQLAlchemyError:
        raise database_unavailable(database.availability) from None
    return _too_many(wait) if wait else _unauthorized(reason)


def _available(database: Database) -> None:
    """503 at once while the database is known to be down (its retry is `_claim`'s)."""
    if database.availability.down:
        raise database_unavailable(database.availability)


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    database: Database,
    guard: KeyGuard,
) -> Principal:
    """The caller's principal, checked against the key's row on every request (revocation
    takes effect at once). A coroutine that reads the row on the event loop: one indexed
    read of one row (tens of microseconds on SQLite, a loopback round trip on PostgreSQL)
    costs less than handing it to the thread pool, which took a fifth of a worker's time
    under load. A secret this process verified before for the row's current hash passes at
    once; any other needs scrypt, run in the thread pool a bounded number at once (for an
    unknown key id too, against a decoy), unless a failure limit says 429 first: the key
    id's own, or, for a key id without a usable row, the address's."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    address = client_address(request)
    parts = split_key(credentials.credentials)
    if parts is None:
        at = guard.address(address)
        if wait := await _over_limit(database, guard, at):
            raise _too_many(wait)
        raise await _refuse(database, guard, at)
    key_id, secret = parts
    found = await _claim(database, credentials.credentials)
    if found is not None and found.remembered(guard.verified):
        return found.principal
    failing = (guard.address(address), *guard.key(key_id, address))
    gates = failing[1:] if found is not None else failing
    if wait := await _over_limit(database, guard, *gates):
        raise _too_many(wait)
    check = (
        functools.partial(found.check, guard.verified)
        if found is not None
        else functools.partial(decoy_check, secret)
    )
    try:
        async with guard.hashing():
            valid = await anyio.to_thread.run_sync(check)  # scrypt: off the loop
    except HashingBusy:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="busy checking API keys; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    if not valid or found is None:
        raise await _refuse(database, guard, *failing)
    return found.principal


async def _claim(database: Database, key: str) -> Claim | None:
    """The key's row (see `claim`), or 503 while the database is unavailable: then at most
    one request per retry interval tries it (in the thread pool: a server that does not
    answer must not stall the event loop), the others are answered at once."""
    availability = database.availability
    if availability.down and not (
        availability.due() and await anyio.to_thread.run_sync(database.probe)
    ):
        raise database_unavailable(availability)
    try:
        # a connection of its own, returned at once: a request waiting for the scoring
        # thread must not hold a pooled connection (it needs one for the audit rows)
        with database.engine.connect() as connection:
            found = claim(connection, key)
    except SQLAlchemyError as exc:
        availability.failed(exc)
        raise database_unavailable(availability) from None
    availability.answered()
    return found


def allowed(principal: Principal, role: Role) -> Principal:
    """The principal, or 403 when its role is below `role`."""
    if principal.role < role:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"this route needs the {role.name} role or higher; "
            f"the key has the {principal.role.name} role",
        )
    return principal


def require(role: Role) -> Callable[..., Any]:
    """Dependency: a valid key whose role is at least `role` (401 without one, 403 when the
    role is too low). One dependency besides the bearer scheme, reading the database and
    the key guard from app state itself (each dependency FastAPI resolves costs tens of
    microseconds a request)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        state = request.app.state
        principal = await authenticate(request, credentials, state.database, key_guard(state))
        return allowed(principal, role)

    return dependency


AnyKey = Annotated[Principal, Depends(require(Role.clinician))]
Clinician = AnyKey
Researcher = Annotated[Principal, Depends(require(Role.researcher))]
Admin = Annotated[Principal, Depends(require(Role.admin))]


# ---------------------------------------------------------------------------- CDS clients


@dataclass(frozen=True)
class CdsCaller:
    """Who called a CDS Hooks route: a registered EHR (its JWT verified) or the project's
    own tools with a clinician API key (`client` None)."""

    principal: Principal
    client: CdsClient | None = None


async def _cds_caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    database: Database,
    guard: KeyGuard,
    audience: list[str],
) -> CdsCaller:
    clients: TrustedClients | None = request.app.state.cds_clients
    if (
        clients is None
        or credentials is None
        or credentials.scheme.lower() != "bearer"
        or not looks_like_jwt(credentials.credentials)
    ):
        principal = await authenticate(request, credentials, database, guard)
        return CdsCaller(allowed(principal, Role.clinician))
    address = client_address(request)
    try:
        call = await clients.verify(credentials.credentials, audience)
        fresh = await anyio.to_thread.run_sync(
            database.first_use, call.client.iss, call.jti, call.expires_at
        )
        if not fresh:
            raise ClientRejected("this 'jti' was already used (replay)", call.client)
    except ClientRejected as exc:
        claimed = exc.claimed
        at = guard.client(address, claimed.iss) if claimed else guard.address(address)
        if wait := await _over_limit(database, guard, at):
            raise _too_many(wait) from None
        raise await _refuse(database, guard, at, reason=f"CDS client JWT refused: {exc}") from None
    except SQLAlchemyError:
        raise database_unavailable(database.availability) from None
    return CdsCaller(Principal(call.client.key_id, Role.clinician), call.client)


async def cds_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database: DatabaseDep,
    guard: KeyGuardDep,
    settings: SettingsDep,
) -> CdsCaller:
    """A CDS service's caller: a registered client's JWT whose `aud` is this service's
    endpoint (or its feedback endpoint), else a clinician API key."""
    service = settings.cds_audience(request.path_params.get("service_id", ""))
    feedback = request.url.path.endswith("/feedback")
    audience = [service, f"{service}/feedback"] if feedback else [service]
    return await _cds_caller(request, credentials, database, guard, audience)


async def discovery_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database: DatabaseDep,
    guard: KeyGuardDep,
    settings: SettingsDep,
) -> CdsCaller | None:
    """Discovery describes the service and holds no patient data: open, but a credential
    that is sent must be valid (a JWT with `aud` the discovery endpoint, or a key)."""
    if credentials is None:
        return None
    return await _cds_caller(request, credentials, database, guard, [settings.cds_audience()])


CdsCallerDep = Annotated[CdsCaller, Depends(cds_caller)]
DiscoveryCaller = Annotated[CdsCaller | None, Depends(discovery_caller)]
