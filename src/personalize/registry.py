"""MLflow: one experiment per pipeline, one run per training, the model as a pyfunc
registered with alias `candidate`; `promote` moves `champion` only through the gates.

`ModelRef` is the one reader of `models:/<name>@<alias>` and `models:/<name>/<version>`
references, and `resolve` the one place that asks the registry which version (and run) a
reference points at; the service and the batch scorer both go through them.

A run that fails (invalid cohort, exception mid-way) is marked FAILED and registers nothing:
registration is the last step, after every artifact has been written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from personalize.config import CategoricalFeature, Pipeline
from personalize.data.validate import CohortError, validate
from personalize.model import OUTPUT_COLUMNS, PersonalizeModel

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_FILE = "personalize_model.joblib"
PACKAGES = [
    "personalize",
    "lightgbm",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
    "mlflow",
    "pydantic",
]


def quiet_mlflow() -> None:
    """MLflow's own chatter (table creation, progress bars, pickling notices) is not for
    our users' terminals; warnings and errors still come through."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the CloudPickle notice
    logging.getLogger("alembic").setLevel(logging.WARNING)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store under ./models."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = Path("models").resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Local stores keep artifacts beside the database; servers use their own root."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def experiment_id(client: MlflowClient, pipeline: Pipeline, uri: str) -> str:
    exp = client.get_experiment_by_name(pipeline.name)
    if exp is not None:
        return str(exp.experiment_id)
    root = _artifact_root(uri)
    location = f"{root}/{pipeline.name}" if root else None
    return str(client.create_experiment(pipeline.name, artifact_location=location))


class PersonalizePyfunc(PythonModel):
    """The registered artifact: the same PersonalizeModel.predict the service and scorer use."""

    def load_context(self, context: Any) -> None:
        self.model: PersonalizeModel = joblib.load(context.artifacts["model"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        explain = int((params or {}).get("explain", 3))
        return self.model.predict(model_input, explain=explain)


def signature(pipeline: Pipeline) -> ModelSignature:
    """Every covariate optional (missing values are allowed); the id passes through."""
    cols: list[ColSpec | TensorSpec] = [ColSpec("string", pipeline.cohort.id, required=False)]
    for name, spec in pipeline.features.items():
        kind = "string" if isinstance(spec, CategoricalFeature) else "double"
        cols.append(ColSpec(kind, name, required=False))
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", pipeline.cohort.id, required=False)]
    for name in OUTPUT_COLUMNS:
        kind = (
            "string" if name in ("recommendation", "rationale", "drivers", "warnings") else "double"
        )
        outputs.append(ColSpec(kind, name))
    return ModelSignature(
        inputs=Schema(cols),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("explain", "long", 3)]),
    )


def typical_patient(model: PersonalizeModel) -> pd.DataFrame:
    """An input example made of aggregates (medians, first level): no real patient's row."""
    row: dict[str, Any] = {model.pipeline.cohort.id: "example"}
    for name, spec in model.pipeline.features.items():
        if isinstance(spec, CategoricalFeature):
            row[name] = spec.levels[0]
        else:
            lo, hi = model.training_range.numeric.get(name, (spec.min or 0.0, spec.max or 0.0))
            row[name] = float((lo + hi) / 2)
    return pd.DataFrame([row])


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


@dataclass(frozen=True)
class Registered:
    run_id: str
    model_name: str
    version: str
    summary: dict[str, Any]


def train(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    tracking_uri: str | None = None,
    step: Callable[[str], None] | None = None,
) -> Registered:
    """Validate, train, log everything, register a version with alias `candidate`."""
    from personalize import report, training

    quiet_mlflow()
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, pipeline, uri)
    tags = {
        "pipeline": pipeline.name,
        "synthetic": str(pipeline.synthetic).lower(),
        "missing": pipeline.outcome.missing,
        "outcome_kind": pipeline.outcome.kind,
    }
    if pipeline.outcome.missing == "complete_case":
        tags["complete_case"] = "true"
    with mlflow.start_run(experiment_id=exp, tags=tags) as run:
        params: dict[str, str] = {}
        _flatten("", pipeline.model_dump(mode="json", exclude={"description"}), params)
        mlflow.log_params({k[:250]: v[:6000] for k, v in params.items()})
        mlflow.log_dict(pipeline.model_dump(mode="json"), "pipeline.json")
        mlflow.log_dict(package_versions(), "package_versions.json")
        report_ = validate(frame, pipeline)
        mlflow.log_dict(report_.to_dict(), "validation_report.json")
        if not report_.ok:
            raise CohortError(report_)  # the run context marks the run FAILED
        result = training.fit(pipeline, frame, step=step)
        mlflow.set_tag("cohort_sha256", result.model.info.cohort_sha256)
        mlflow.set_tag("learner", result.chosen)
        mlflow.log_metrics(_finite(result.metrics()))
        mlflow.log_dict(result.ipcw.summary(), "ipcw.json")
        mlflow.log_dict(
            {
                "blp": result.blp.to_dict(),
                "autoc": result.autoc.to_dict(),
                "qini": result.qini.to_dict(),
                "groups": result.groups.to_dict(),
                "policy": result.policy.to_dict(),
                "decision_rule": result.model.rule.to_dict(),
            },
            "evidence.json",
        )
        mlflow.log_dict(
            {"subgroups": result.subgroups, "importance": result.importance}, "subgroups.json"
        )
        for name, fig in report.figures(result).items():
            mlflow.log_figure(fig, f"plots/{name}")
        name = pipeline.registry.model_name
        card = report.model_card_dict(result, model_name=name, version=None, run_id=run.info.run_id)
        result.model.info = dataclasses.replace(result.model.info, card=card)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            joblib.dump(result.model, path)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PersonalizePyfunc(),
                artifacts={"model": str(path)},
                signature=signature(pipeline),
                input_example=typical_patient(result.model),
                pip_requirements=[
                    f"{k}=={v}"
                    for k, v in package_versions().items()
                    if k not in ("python", "personalize")
                ],
            )
        summary = result.summary()
        with contextlib.redirect_stderr(io.StringIO()):  # "Created version ..." chatter
            mv = mlflow.register_model(
                info.model_uri,
                name,
                tags={
                    "synthetic": str(pipeline.synthetic).lower(),
                    "learner": result.chosen,
                    "run_id": run.info.run_id,
                },
            )
        client.set_registered_model_alias(name, CANDIDATE, mv.version)
        for key, value in _gate_metrics(result).items():
            client.set_model_version_tag(name, mv.version, key, str(value))
        version = str(mv.version)
        mlflow.log_dict(
            report.model_card_dict(
                result, model_name=name, version=version, run_id=run.info.run_id
            ),
            "model_card.json",
        )
        mlflow.log_text(
            report.model_card(result, model_name=name, version=version, run_id=run.info.run_id),
            "model_card.md",
        )
    return Registered(run.info.run_id, name, str(mv.version), summary)


def _gate_metrics(result: Any) -> dict[str, float]:
    out = {}
    for arm, cal in result.calibration.items():
        out[f"gate.calibration_slope.{arm}"] = cal.slope
        if cal.ece is not None:
            out[f"gate.ece.{arm}"] = cal.ece
    return out


# --------------------------------------------------------------------------- model references

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(Exception):
    """The registry could not be reached, or has no such model, version or alias."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model's name with an alias (which can move to another version) or a
    version number (which cannot). Names never contain '/' or ':' (MLflow refuses them)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """`models:/<name>@<alias>` or `models:/<name>/<version>`; ValueError otherwise."""
        match = MODEL_URI.match(uri)
        if not match:
            raise ValueError(
                f"model URI {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
            )
        return cls(match["name"], match["alias"], match["version"])

    @classmethod
    def champion(cls, pipeline: Pipeline) -> ModelRef:
        """The pipeline's registered model as promoted: what `serve` and `score` use unless
        told otherwise."""
        return cls(pipeline.registry.model_name, alias=CHAMPION)

    @property
    def uri(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredVersion:
    """The version a reference pointed at when it was resolved."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        """`models:/<name>/<version>`: this version's artifact, wherever the aliases move."""
        return ModelRef(self.name, version=self.version).uri


def lookup(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The registry's entry for a reference now (MlflowException when there is none)."""
    if ref.alias is not None:
        return client.get_model_version_by_alias(ref.name, ref.alias)
    return client.get_model_version(ref.name, str(ref.version))


def resolve(ref: ModelRef, tracking_uri: str | None = None) -> RegisteredVersion:
    """Name, version and run an alias or version points at now. Load `.uri` of the answer,
    not the alias, and a move of the alias meanwhile cannot change what is loaded."""
    client = MlflowClient(tracking_uri or default_tracking_uri())
    try:
        mv = lookup(client, ref)
    except MlflowException as exc:
        raise RegistryError(f"{ref.uri}: {exc.message}") from None
    except Exception as exc:  # network, database
        raise RegistryError(f"{ref.uri}: {type(exc).__name__}: {exc}") from None
    return RegisteredVersion(str(mv.name), str(mv.version), mv.run_id)


# --------------------------------------------------------------------------- promotion


class GateError(Exception):
    """A version that does not meet its pipeline's promotion gates."""


def promote(name: str, version: str, tracking_uri: str | None = None) -> tuple[str, list[str]]:
    """Move `champion` to NAME/VERSION (a number or an alias such as `candidate`) if every
    gate passes; return the version promoted and the checks made."""
    quiet_mlflow()
    client = MlflowClient(tracking_uri or default_tracking_uri())
    ref = ModelRef(name, version=version) if version.isdigit() else ModelRef(name, alias=version)
    try:
        mv = lookup(client, ref)
    except MlflowException:
        raise GateError(f"no model version {name}/{version} in the registry") from None
    version = str(mv.version)
    run = client.get_run(mv.run_id) if mv.run_id else None
    pipe = (
        Pipeline.model_validate(
            json.loads(
                Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=mv.run_id,
                        artifact_path="pipeline.json",
                        tracking_uri=client.tracking_uri,
                    )
                ).read_text()
            )
        )
        if run
        else None
    )
    if pipe is None:
        raise GateError(f"{name}/{version} has no training run to check gates against")
    lo, hi = pipe.gates.calibration_slope
    failed: list[str] = []
    checked: list[str] = []
    for key, raw in mv.tags.items():
        if not key.startswith("gate."):
            continue
        value = float(raw)
        _, metric, arm = key.split(".", 2)
        if metric == "calibration_slope":
            ok = lo <= value <= hi
            rule = f"calibration slope {arm} = {value:.2f} within [{lo:g}, {hi:g}]"
        else:
            ok = value <= pipe.gates.max_ece
            rule = f"ECE {arm} = {value:.3f} <= {pipe.gates.max_ece:g}"
        (checked if ok else failed).append(rule)
    if not checked and not failed:
        raise GateError(f"{name}/{version} carries no gate metrics; retrain it")
    if failed:
        raise GateError("gates failed: " + "; ".join(failed))
    client.set_registered_model_alias(name, CHAMPION, version)
    return version, checked


def load_model(model_uri: str, tracking_uri: str | None = None) -> PersonalizeModel:
    """The registered PersonalizeModel itself (what the service and the scorer call); give
    a resolved version's `uri` to load exactly that version."""
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/artifacts")
    model: PersonalizeModel = joblib.load(Path(local) / MODEL_FILE)
    return model
