"""Inverse probability of censoring weights (IPCW) for outcomes missing at random given
baseline and arm: complete cases stand in for similar patients whose
outcome was not observed."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV

from personalize.learners.linear import LinearDesign


@dataclass(frozen=True)
class IPCW:
    weights: np.ndarray  # 0 where the outcome is missing
    method: str
    clip: float
    n_clipped: int
    observed_share: float
    effective_sample_size: float
    min_probability: float

    def summary(self) -> dict[str, float | int | str]:
        out = asdict(self)
        del out["weights"]
        return out


def ipcw_weights(
    X: pd.DataFrame,
    treated: np.ndarray,
    observed: np.ndarray,
    method: str = "ipcw",
    clip: float = 10.0,
) -> IPCW:
    """Model P(observed | baseline, arm) with a penalized logistic regression (main effects
    and arm interactions), weight complete cases by its inverse, clip extreme weights and
    rescale so the weights sum to the cohort size. `complete_case` gives unit weights."""
    n = len(X)
    obs = observed.astype(bool)
    if method == "complete_case" or obs.all():
        weight = obs.astype(float)
        return IPCW(weight, method, clip, 0, float(obs.mean()), float(obs.sum()), 1.0)
    ones = np.ones(n)
    Z = LinearDesign().fit(X, ones).transform(X)
    a = treated.astype(float)[:, None]
    design = np.hstack([Z, a, a * Z])
    model = LogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3, scoring="neg_log_loss", max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(design, obs.astype(int))
        prob = model.predict_proba(design)[:, 1]
    raw = np.where(obs, 1.0 / np.clip(prob, 1e-6, 1.0), 0.0)
    cap = clip * raw[obs].mean()
    n_clipped = int((raw > cap).sum())
    weight = np.minimum(raw, cap)
    weight *= n / weight.sum()
    ess = float(weight.sum() ** 2 / (weight**2).sum())
    return IPCW(weight, method, clip, n_clipped, float(obs.mean()), ess, float(prob[obs].min()))
