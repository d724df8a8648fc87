"""The layout's import rules (docs/architecture.md), checked on the source: data flows one
way, the library never imports the HTTP layer, and the core knows no tracking."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import personalize

ROOT = Path(__file__).resolve().parents[2]

PACKAGE = Path(personalize.__file__).parent

# area -> areas and third-party packages it must not import (directly)
FORBIDDEN: dict[str, set[str]] = {
    "config": {"data", "stats", "model", "training", "registry", "batch", "report", "service"},
    "data": {"learners", "stats", "model", "training", "registry", "batch", "report", "service"},
    "learners": {"stats", "model", "training", "registry", "batch", "report", "service"},
    "stats": {"data", "model", "training", "registry", "batch", "report", "service"},
    "model": {"training", "registry", "batch", "report", "service", "study"},
    "training": {"registry", "batch", "report", "service", "study"},
    "report": {"registry", "batch", "service", "study"},
    "portable": {"training", "registry", "batch", "report", "service", "study"},
    "registry": {"batch", "service", "study"},
    "batch": {"service", "study", "training", "report"},
    "study": {"service", "batch"},
    "service": {"study", "training", "batch"},
}
NO_TRACKING = {"config", "data", "learners", "stats", "model", "training", "fast_trees"}


def imports() -> dict[str, set[str]]:
    """Area of the package (first component under personalize) -> what its modules import:
    other areas, and third-party top-level packages prefixed with '~'."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        area = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "personalize":
                    names = [f"personalize.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("personalize."):
                    target = name.split(".")[1]
                    if target != area:
                        found.setdefault(area, set()).add(target)
                else:
                    found.setdefault(area, set()).add("~" + name.split(".")[0])
    return found


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_each_area_imports_only_upstream(area: str) -> None:
    bad = imports().get(area, set()) & FORBIDDEN[area]
    assert not bad, f"personalize.{area} imports {sorted(bad)}"


def test_only_the_cli_and_the_service_import_the_service() -> None:
    users = {area for area, targets in imports().items() if "service" in targets}
    assert users <= {"cli"}


def test_the_core_knows_no_tracking_and_no_http() -> None:
    for area, targets in imports().items():
        if area.removesuffix(".py") in NO_TRACKING:
            assert not targets & {"~mlflow", "~fastapi", "~starlette", "~uvicorn"}, area


def test_there_is_no_top_level_service_package() -> None:
    with pytest.raises(ModuleNotFoundError):
        __import__("service")


def test_reading_a_pipeline_file_loads_no_learner_library() -> None:
    """`personalize validate`, the service's settings and the scorer read pipeline files;
    the learners' libraries (LightGBM, numba, stochtree) load only when a learner is used."""
    probe = (
        "import sys\n"
        "from personalize.config import load_pipeline\n"
        "load_pipeline('pipelines/stamp.yaml')\n"
        "print(sorted(m for m in ('lightgbm', 'numba', 'stochtree') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
