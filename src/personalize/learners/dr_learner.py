"""DR-learner (Kennedy 2023): regress cross-fitted doubly-robust pseudo-outcomes on the
covariates. The propensity is the trial's allocation ratio, known by design."""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from personalize.learners.base import doubly_robust
from personalize.learners.boosting import booster, booster_value
from personalize.learners.pseudo_outcome import EffectRegressionLearner

NUISANCE_FOLDS = 3


class DRLearner(EffectRegressionLearner):
    name = "dr"
    title = "DR-learner"
    description = "DR-learner (Kennedy 2023): LightGBM on doubly-robust pseudo-outcomes"
    complexity = 50

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        classify = self.kind == "binary"
        e = float(np.average(treated, weights=weight))
        mu = np.zeros((len(X), 2))
        folds = StratifiedKFold(NUISANCE_FOLDS, shuffle=True, random_state=self.seed)
        strata = treated * 2 + (y > np.median(y) if not classify else y).astype(int)
        for train, test in folds.split(X, strata):
            for arm in (0, 1):
                rows = train[treated[train] == arm]
                model = booster(classify, self.seed + arm).fit(
                    X.iloc[rows], y[rows], sample_weight=weight[rows]
                )
                mu[test, arm] = booster_value(model, X.iloc[test], classify)
        pseudo = doubly_robust(y, treated, e, mu[:, 0], mu[:, 1])
        c = treated == 0
        self.control_model_ = booster(classify, self.seed).fit(X[c], y[c], sample_weight=weight[c])
        tau = booster(False, self.seed + 2).fit(X, pseudo, sample_weight=weight)
        self.effect_models_ = [(1.0, tau)]
        return self
