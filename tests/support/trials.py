"""Toy randomized trials with a known benefit of a chosen shape, for the model checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from personalize.config import Pipeline


def toy_pipeline(learners: Sequence[str] = ("bayes_linear",), **update: object) -> Pipeline:
    """Four numeric covariates, arms A (treatment) and B, a continuous outcome (higher is
    better); `update`: top-level pipeline keys (e.g. checks="warn")."""
    return Pipeline.model_validate(
        {
            "name": "toy-checks",
            "synthetic": True,
            "cohort": {"id": "pid", "arm": {"column": "arm", "treatment": "A", "control": "B"}},
            "features": {f"x{j}": {"type": "numeric", "min": -10, "max": 10} for j in (1, 2, 3, 4)},
            "outcome": {"kind": "continuous", "column": "y", "better": "higher"},
            "training": {"learners": list(learners), "bootstrap": 10},
            "gates": {"calibration_slope": [-100, 100], "max_ece": 1.0},
            "registry": {"model_name": "toy-checks"},
            **update,
        }
    )


def toy_benefit(shape: str, x: np.ndarray) -> np.ndarray:
    """The true benefit (A minus B): linear in x1, or a U-shape in x1 that a linear model
    cannot represent (its best linear approximation is flat)."""
    if shape == "linear":
        return 0.6 * x[:, 0]
    if shape == "u":
        return 0.8 * (x[:, 0] ** 2 - 1)
    raise ValueError(shape)


def toy_trial(shape: str, n: int = 800, seed: int = 0) -> pd.DataFrame:
    """A 1:1 trial: outcome = 0.5 x2 + (arm - 1/2) benefit + N(0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    treated = rng.permutation(np.arange(n) % 2)
    frame = pd.DataFrame({f"x{j + 1}": x[:, j] for j in range(4)})
    frame.insert(0, "pid", [f"P{i:04d}" for i in range(n)])
    frame.insert(1, "arm", np.where(treated == 1, "A", "B"))
    frame["y"] = 0.5 * x[:, 1] + (treated - 0.5) * toy_benefit(shape, x) + rng.normal(size=n)
    return frame
