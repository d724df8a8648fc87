"""Schemathesis against a real `personalize serve` on loopback: every operation in
/openapi.json, with data generated from the schema (including the loaded model's patient
contract), answers without a 5xx and with a response that conforms to the schema.

(Schemathesis' own pytest collection, `from_fixture(...).parametrize()`, does not run under
this pytest version, so each operation's Hypothesis strategy is driven directly.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from personalize.service.routes import ROUTERS
from support.registry import TrainedRegistry
from support.servers import Server, cli, serve

pytestmark = pytest.mark.slow

ROUTES = [
    route
    for router in ROUTERS
    for route in router.routes
    if isinstance(route, APIRoute) and route.include_in_schema
]
OPERATIONS = sorted((method, route.path) for route in ROUTES for method in route.methods)
# negative data (wrong types, unknown fields, out-of-range values ...) where there is input
WITH_INPUT = sorted(
    (method, route.path)
    for route in ROUTES
    if route.body_field is not None or route.dependant.query_params
    for method in route.methods
)
MODES = [(schemathesis.GenerationMode.POSITIVE, op) for op in OPERATIONS] + [
    (schemathesis.GenerationMode.NEGATIVE, op) for op in WITH_INPUT
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[tuple[Server, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    with serve(tmp, trained_registry, env={"PERSONALIZE_BATCH_MAX": "20"}) as server:
        made = cli("keys", "create", "--role", "admin", env=server.env)
        assert made.returncode == 0, made.stderr
        yield server, {"Authorization": f"Bearer {made.stdout.strip()}"}


@pytest.fixture(scope="module")
def api_schema(live: tuple[Server, dict[str, str]]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live[0].url}/openapi.json")


def test_the_schema_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(
    ("mode", "operation"), MODES, ids=[f"{m.value}-{o[0]} {o[1]}" for m, o in MODES]
)
def test_operation_conforms_and_never_5xx(
    api_schema: schemathesis.BaseSchema,
    live: tuple[Server, dict[str, str]],
    mode: schemathesis.GenerationMode,
    operation: tuple[str, str],
) -> None:
    method, path = operation
    headers = live[1]

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
