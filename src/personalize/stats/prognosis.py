"""Prognosis: each patient's expected outcome averaged over the arms, m(x).

With a few dozen responders per arm, per-arm outcome models discriminate poorly and
calibrate erratically. Randomization lets both arms share one prognostic model (PATH's
risk modeling, Kent et al. 2020): a penalized regression on all observed patients. The
per-arm outcomes are then m(x) -/+ the benefit, split by the allocation ratio.
"""

from __future__ import annotations

import warnings
from typing import Self

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.linear_model import LogisticRegression, Ridge

from personalize.learners.base import Kind
from personalize.learners.linear import LinearDesign


class Prognosis:
    """A strongly penalized regression: with about five events per covariate, a weak ridge
    over-disperses predictions (held-out calibration slopes near 0.5 in simulation); the
    remaining miscalibration is corrected by Platt scaling out of fold."""

    def __init__(self, kind: Kind = "binary", C: float = 0.03) -> None:
        self.kind = kind
        self.C = C

    def fit(self, X: pd.DataFrame, y: np.ndarray, weight: np.ndarray) -> Self:
        self.design_ = LinearDesign().fit(X, weight)
        Z = self.design_.transform(X)
        if self.kind == "binary":
            self.model_: LogisticRegression | Ridge = LogisticRegression(C=self.C, max_iter=2000)
        else:
            self.model_ = Ridge(alpha=1.0 / self.C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model_.fit(Z, y, sample_weight=weight)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The fitted model's prediction, computed row by row with the same arithmetic
        whatever the batch: scikit-learn's BLAS product blocks rows by batch size, which
        moved the last bit of a patient's answer with its neighbours (service vs scorer)."""
        Z = self.design_.transform(X)
        score = np.einsum("ij,j->i", Z, np.ravel(self.model_.coef_)) + float(
            np.ravel(self.model_.intercept_)[0]
        )
        if isinstance(self.model_, LogisticRegression):
            return np.asarray(expit(score), dtype=float)
        return np.asarray(score, dtype=float)


def split_arms(
    m: np.ndarray, benefit: np.ndarray, e: float, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-arm outcomes whose allocation-weighted mean is m and whose difference is the
    benefit (probabilities are kept within [0, 1])."""
    p0 = m - e * benefit
    p1 = m + (1 - e) * benefit
    if binary:
        return np.clip(p0, 0.0, 1.0), np.clip(p1, 0.0, 1.0)
    return p0, p1
