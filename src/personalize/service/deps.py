"""What a route receives as FastAPI dependencies: the settings, the audit database, the
model holder and the model this request uses, the scoring thread, the FHIR mapping, and the
caller's API key checked against its role.

Dependencies that only read app state are coroutines: FastAPI runs plain functions in its
thread pool, a hop per dependency per request that costs more than the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from personalize.service.audit import Database
from personalize.service.auth import Principal, Role, claim
from personalize.service.config import Settings
from personalize.service.fhir import FhirMapping
from personalize.service.holder import LoadedModel, ModelHolder
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


async def current_model(holder: HolderDep) -> LoadedModel:
    """The model this request uses from start to end (read once: a swap during the request
    does not affect it)."""
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
}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    database: DatabaseDep,
) -> Principal:
    """The caller's principal, checked against the key's row on every request (revocation
    takes effect at once). A coroutine that reads the row on the event loop: one indexed
    read of one row (tens of microseconds on SQLite, a loopback round trip on PostgreSQL)
    costs less than handing it to the thread pool, which took a fifth of a worker's time
    under load. scrypt, for a secret not seen before, runs in the thread pool."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    # a connection of its own, returned at once: a request waiting for the scoring thread
    # must not hold a pooled connection (the scoring thread needs one for the audit rows)
    with database.engine.connect() as connection:
        found = claim(connection, credentials.credentials)
    if found is None or not (
        found.remembered() or await anyio.to_thread.run_sync(found.check)  # scrypt: off the loop
    ):
        raise _unauthorized("invalid or revoked API key")
    return found.principal


def require(role: Role) -> Callable[..., Any]:
    """Dependency: a valid key whose role is at least `role` (401 without one, 403 when the
    role is too low)."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role < role:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this route needs the {role.name} role or higher; "
                f"the key has the {principal.role.name} role",
            )
        return principal

    return dependency


AnyKey = Annotated[Principal, Depends(require(Role.clinician))]
Clinician = AnyKey
Researcher = Annotated[Principal, Depends(require(Role.researcher))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
