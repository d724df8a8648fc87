"""The model as an MLflow pyfunc that travels: what `mlflow.pyfunc.load_model` gives in an
environment that has never seen this project.

The logged model carries the `personalize` package itself (MLflow's `code_paths`: put on
`sys.path` when the model loads) and complete pinned requirements of what a loaded model
imports, so `mlflow.pyfunc.get_model_dependencies(uri)` installed into a fresh virtual
environment is enough. The signature takes what a CSV reader gives: numeric features (and
the id) of any numeric type, integers included; every feature optional, and a feature's
column may be absent (its values are then missing, as for the scorer and the service).
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from personalize.config import CategoricalFeature, Pipeline
from personalize.model import OUTPUT_COLUMNS, PersonalizeModel

# what a loaded model imports (personalize.model, every learner, joblib's unpickling) and
# MLflow itself; checked by loading a registered model in a fresh virtual environment
MODEL_PACKAGES = (
    "mlflow",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "lightgbm",
    "numba",
    "pyarrow",
    "pydantic",
    "PyYAML",
    "rich",
    "joblib",
    "cloudpickle",
)
PACKAGE_DIR = Path(__file__).resolve().parent


class PersonalizePyfunc(PythonModel):
    """The registered artifact: the same PersonalizeModel.predict the service and scorer
    use, after adding the optional feature columns the input left out."""

    def load_context(self, context: Any) -> None:
        self.model: PersonalizeModel = joblib.load(context.artifacts["model"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        explain = int((params or {}).get("explain", 3))
        absent = [f for f in self.model.pipeline.features if f not in model_input.columns]
        if absent:
            model_input = model_input.assign(**dict.fromkeys(absent, None))
        return self.model.predict(model_input, explain=explain)


def requirements() -> list[str]:
    """The pinned requirements of a loaded model, from this environment's versions."""
    return [f"{name}=={metadata.version(name)}" for name in MODEL_PACKAGES]


def package_copy(directory: Path) -> Path:
    """A copy of the `personalize` package for `code_paths`, without compiled caches."""
    target = Path(directory) / "personalize"
    shutil.copytree(
        PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nb[ic]")
    )
    return target


def _levels_are_text(levels: list[Any]) -> bool:
    return all(isinstance(level, str) and not _numeric_text(level) for level in levels)


def _numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def signature(pipeline: Pipeline) -> ModelSignature:
    """Every covariate optional (missing values are allowed, a column may be absent); the id
    passes through. Numeric features, the id and categoricals whose levels read as numbers
    take any type (a CSV reader makes them integers): the model converts them itself."""
    cols: list[ColSpec | TensorSpec] = [ColSpec(AnyType(), pipeline.cohort.id, required=False)]
    for name, spec in pipeline.features.items():
        text = isinstance(spec, CategoricalFeature) and _levels_are_text(list(spec.levels))
        cols.append(ColSpec("string" if text else AnyType(), name, required=False))
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", pipeline.cohort.id, required=False)]
    for name in OUTPUT_COLUMNS:
        kind = (
            "string"
            if name in ("recommendation", "rationale", "better_bet", "drivers", "warnings")
            else "double"
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
