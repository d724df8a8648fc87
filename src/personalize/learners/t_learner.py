"""T-learner: one outcome model per arm; benefit is the difference of their predictions."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd

from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner
from personalize.learners.boosting import booster, booster_arm, booster_value


class TLearner(EffectLearner):
    name = "t"
    title = "T-learner"
    description = "T-learner: one LightGBM outcome model per arm"
    complexity = 30

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        classify = self.kind == "binary"
        self.models_ = []
        for arm in (0, 1):
            rows = treated == arm
            model = booster(classify, self.seed + arm)
            model.fit(X[rows], y[rows], sample_weight=weight[rows])
            self.models_.append(model)
        return self

    def boosters(self) -> list[Any]:
        return list(self.models_)

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        classify = self.kind == "binary"
        return (
            booster_value(self.models_[0], X, classify),
            booster_value(self.models_[1], X, classify),
        )

    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        a0, a1 = (booster_arm(m, X, self.kind == "binary") for m in self.models_)
        pad = np.zeros((len(X), 1))
        return ArmContributions(
            [*X.columns, ARM_DRIVER],
            a0.base,
            np.hstack([a0.phi, pad]),
            a1.base,
            np.hstack([a1.phi, pad]),
        )
