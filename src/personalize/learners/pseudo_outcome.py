"""Shared shape of learners that regress an effect directly (X- and DR-learner).

The control arm comes from an outcome model; the treatment arm is control plus the
directly modelled benefit, so both arms and the benefit decompose on one additive scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner
from personalize.learners.boosting import (
    booster_arm,
    booster_value,
    raw_score,
    raw_scores,
    sigmoid,
    tree_contributions,
)


class EffectRegressionLearner(EffectLearner):
    """Subclasses set control_model_ and effect_models_ = [(share, regressor), ...]."""

    control_model_: lgb.LGBMModel
    effect_models_: list[tuple[float, lgb.LGBMModel]]

    def _effect(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        phi = np.zeros((len(X), X.shape[1]))
        base = np.zeros(len(X))
        for share, model in self.effect_models_:
            p, b = tree_contributions(model, X)
            phi += share * p
            base += share * b
        return phi, base

    def boosters(self) -> list[Any]:
        return [self.control_model_, *(model for _, model in self.effect_models_)]

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        mu0 = booster_value(self.control_model_, X, self.kind == "binary")
        tau = sum(share * raw_score(model, X) for share, model in self.effect_models_)
        return mu0, mu0 + tau

    @classmethod
    def arms_of(
        cls, learners: Sequence[EffectLearner], X: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """All learners' arms from one stacked look-up of their boosters' raw scores, with
        `predict_arms`' arithmetic in its order (so the same bits), elementwise."""
        fitted = [learner for learner in learners if isinstance(learner, EffectRegressionLearner)]
        n_effects = {len(learner.effect_models_) for learner in fitted}
        if len(fitted) != len(learners) or len(n_effects) != 1:
            return super().arms_of(learners, X)
        control = raw_scores([m.control_model_ for m in fitted], X)
        mu0 = sigmoid(control) if fitted[0].kind == "binary" else control
        tau = np.zeros_like(mu0)
        for k in range(n_effects.pop()):
            shares = np.array([m.effect_models_[k][0] for m in fitted])[:, None]
            tau = tau + shares * raw_scores([m.effect_models_[k][1] for m in fitted], X)
        return mu0.T, (mu0 + tau).T

    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        arm0 = booster_arm(self.control_model_, X, self.kind == "binary")
        phi, base = self._effect(X)
        pad = np.zeros((len(X), 1))
        return ArmContributions(
            [*X.columns, ARM_DRIVER],
            arm0.base,
            np.hstack([arm0.phi, pad]),
            arm0.base + base,
            np.hstack([arm0.phi + phi, pad]),
        )
