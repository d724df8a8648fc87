"""The trained registry the service, scoring and page tests share: trained once per test
session (the `trained_registry` fixture in tests/conftest.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from personalize import registry
from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import simulate

STAMP_MODEL = "personalize-stamp"

# (pipeline, scenario, patients, seed, learners), registered in this order. STAMP v1, the
# champion, is the demo cohort (seed 7, 770 patients) under a T-learner over LightGBM, so
# the compiled trees, the bootstrap intervals and the page's "770 patients" are exercised;
# STAMP v2 is a second version to move `champion` to; OPTIMUM brings another contract
# (no preference field); stamp-continuous a continuous outcome.
PLAN: list[tuple[str, str, int, int, list[str]]] = [
    ("stamp", "stamp", 770, 7, ["t"]),
    ("stamp", "stamp", 400, 2, ["effect_linear"]),
    ("optimum", "optimum", 300, 1, ["effect_linear"]),
    ("stamp-continuous", "stamp", 400, 1, ["effect_linear"]),
]


def small(name: str, learners: list[str]) -> Pipeline:
    """A shipped pipeline, quick to train (10 bootstrap refits), with gates any model
    passes: what is under test is what uses the model, not the gates."""
    spec = load_pipeline(f"pipelines/{name}.yaml")
    return spec.model_copy(
        update={
            "training": spec.training.model_copy(update={"bootstrap": 10, "learners": learners}),
            "gates": spec.gates.model_copy(
                update={"calibration_slope": (-100.0, 100.0), "max_ece": 1.0}
            ),
        }
    )


@dataclass(frozen=True)
class TrainedRegistry:
    """An MLflow registry on SQLite: its database and the versions registered per model."""

    root: Path
    db: Path
    # model name -> registered versions; champion is the first
    versions: dict[str, list[str]]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"

    def champion(self, name: str = STAMP_MODEL) -> str:
        return registry.ModelRef(name, alias=registry.CHAMPION).uri

    def copy(self, into: Path) -> TrainedRegistry:
        """An independent registry (own aliases) sharing the read-only artifacts: for a
        test that moves `champion`."""
        into.mkdir(parents=True, exist_ok=True)
        db = into / "mlflow.db"
        shutil.copy(self.db, db)
        return TrainedRegistry(self.root, db, self.versions)

    def set_champion(self, version: str, name: str = STAMP_MODEL) -> None:
        MlflowClient(self.uri).set_registered_model_alias(name, registry.CHAMPION, version)

    def remove_champion(self, name: str = STAMP_MODEL) -> None:
        MlflowClient(self.uri).delete_registered_model_alias(name, registry.CHAMPION)


def train_registry(root: Path) -> TrainedRegistry:
    """Train and register PLAN under `root`; the first version of each model is champion.
    MLflow's global tracking URI is left as it was."""
    registry.quiet_mlflow()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    versions: dict[str, list[str]] = {}
    previous = mlflow.get_tracking_uri()
    try:
        for pipeline, scenario, n, seed, learners in PLAN:
            reg = registry.train(small(pipeline, learners), simulate(scenario, n, seed).cohort, uri)
            versions.setdefault(reg.model_name, []).append(reg.version)
    finally:
        mlflow.set_tracking_uri(previous)
    client = MlflowClient(uri)
    for name, registered in versions.items():
        client.set_registered_model_alias(name, registry.CHAMPION, registered[0])
    return TrainedRegistry(root, root / "mlflow.db", versions)
