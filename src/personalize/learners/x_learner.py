"""X-learner (Künzel et al. 2019): impute each patient's effect with the other arm's
outcome model, regress the imputed effects per arm, blend by the allocation ratio."""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from personalize.learners.boosting import booster, booster_value
from personalize.learners.pseudo_outcome import EffectRegressionLearner


class XLearner(EffectRegressionLearner):
    name = "x"
    title = "X-learner"
    description = "X-learner (Künzel et al. 2019) over LightGBM"
    complexity = 40

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        classify = self.kind == "binary"
        t = treated == 1
        self.control_model_ = booster(classify, self.seed).fit(
            X[~t], y[~t], sample_weight=weight[~t]
        )
        treated_model = booster(classify, self.seed + 1).fit(X[t], y[t], sample_weight=weight[t])
        imputed_t = y[t] - booster_value(self.control_model_, X[t], classify)
        imputed_c = booster_value(treated_model, X[~t], classify) - y[~t]
        tau_t = booster(False, self.seed + 2).fit(X[t], imputed_t, sample_weight=weight[t])
        tau_c = booster(False, self.seed + 3).fit(X[~t], imputed_c, sample_weight=weight[~t])
        share_t = float(np.average(t, weights=weight))
        # g(x) = e: weight the control-arm effect model by the treated share and vice versa
        self.effect_models_ = [(share_t, tau_c), (1.0 - share_t, tau_t)]
        return self
