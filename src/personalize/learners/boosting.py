"""LightGBM regularized for trial-sized data, and its exact TreeSHAP contributions."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from personalize import fast_trees
from personalize.learners.base import rescale

# Hundreds of rows: shallow trees, few leaves, slow learning, row and column subsampling.
TRIAL_PARAMS: dict[str, Any] = {
    "n_estimators": 120,
    "learning_rate": 0.03,
    "num_leaves": 7,
    "max_depth": 3,
    "min_child_samples": 25,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
    "min_split_gain": 0.0,
    "cat_smooth": 20.0,
    "min_data_per_group": 25,
    "n_jobs": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}


def booster(classify: bool, seed: int) -> lgb.LGBMModel:
    cls = lgb.LGBMClassifier if classify else lgb.LGBMRegressor
    return cls(random_state=seed, **TRIAL_PARAMS)


def raw_score(model: lgb.LGBMModel, X: pd.DataFrame) -> np.ndarray:
    """Log-odds for a classifier, the prediction for a regressor.

    Large inputs (and boosters inside a `fast_trees.batch`) go through the compiled
    trees, whose raw scores are bit-identical to LightGBM's own."""
    fast = fast_trees.raw_score(model, X)
    if fast is not None:
        return fast
    return np.asarray(model.predict(X, raw_score=True), dtype=float)


def raw_scores(models: list[lgb.LGBMModel], X: pd.DataFrame) -> np.ndarray:
    """`raw_score` of several boosters, stacked (boosters x rows)."""
    fast = fast_trees.raw_scores_of(models, X)
    if fast is not None:
        return fast
    return np.stack([raw_score(model, X) for model in models])


def tree_contributions(model: lgb.LGBMModel, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """TreeSHAP on the raw scale: (phi n x p, base n); raw = base + phi.sum(1).

    Path-dependent TreeSHAP as LightGBM's `pred_contrib` computes it, from per-tree tables
    of every decision pattern (`fast_trees`; equal to pred_contrib to rounding, and the
    same bits for a patient in any batch). LightGBM itself where the tables do not apply.
    """
    fast = fast_trees.contributions(model, X)
    if fast is not None:
        return fast
    contrib = np.asarray(model.predict(X, pred_contrib=True), dtype=float)
    return contrib[:, :-1], contrib[:, -1]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class BoostedArm:
    """One booster's answer on the outcome scale with its exact decomposition.

    For a classifier the TreeSHAP log-odds contributions are carried to the probability
    scale by the rescale rule, so value == base + phi.sum(1) on the scale people read.
    """

    def __init__(self, model: lgb.LGBMModel, X: pd.DataFrame, classify: bool) -> None:
        phi, base = tree_contributions(model, X)
        if classify:
            raw = base + phi.sum(axis=1)
            self.value = sigmoid(raw)
            self.base = sigmoid(base)
            self.phi = rescale(phi, self.value - self.base)
        else:
            self.base = base
            self.phi = phi
            self.value = base + phi.sum(axis=1)


def booster_arm(model: lgb.LGBMModel, X: pd.DataFrame, classify: bool) -> BoostedArm:
    return BoostedArm(model, X, classify)


def booster_value(model: lgb.LGBMModel, X: pd.DataFrame, classify: bool) -> np.ndarray:
    """Prediction on the outcome scale without contributions (the fast path)."""
    raw = raw_score(model, X)
    return sigmoid(raw) if classify else raw
