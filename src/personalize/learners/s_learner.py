"""S-learner: one outcome model with the arm as a feature; benefit from toggling it."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd

from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner
from personalize.learners.boosting import booster, booster_arm, booster_value

ARM_COLUMN = "__treated__"


def with_arm(X: pd.DataFrame, arm: np.ndarray | int) -> pd.DataFrame:
    return X.assign(**{ARM_COLUMN: np.broadcast_to(arm, len(X)).astype(float)})


class SLearner(EffectLearner):
    name = "s"
    title = "S-learner"
    description = "S-learner: one LightGBM outcome model with the arm as a feature"
    complexity = 60

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        self.model_ = booster(self.kind == "binary", self.seed)
        self.model_.fit(with_arm(X, treated), y, sample_weight=weight)
        return self

    def boosters(self) -> list[Any]:
        return [self.model_]

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        classify = self.kind == "binary"
        return (
            booster_value(self.model_, with_arm(X, 0), classify),
            booster_value(self.model_, with_arm(X, 1), classify),
        )

    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        classify = self.kind == "binary"
        a0 = booster_arm(self.model_, with_arm(X, 0), classify)
        a1 = booster_arm(self.model_, with_arm(X, 1), classify)
        return ArmContributions([*X.columns, ARM_DRIVER], a0.base, a0.phi, a1.base, a1.phi)
