"""Penalized linear models for PATH (Kent et al. 2020) baselines.

Features are encoded once (numeric: mean-imputed and standardized; categorical: one-hot
over the declared levels), so each feature's contribution is its coefficients times its
centered encoding: exact, and zero for a patient at the cohort average.
"""

from __future__ import annotations

import warnings
from typing import Self

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge

from personalize.data.columns import columns
from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner, rescale
from personalize.learners.boosting import sigmoid

# A moderate ridge on standardized covariates. Tuning it for outcome log-loss shrinks the
# treatment interactions to almost nothing; the benefit's magnitude is instead recalibrated
# out of fold by the training pipeline (calibration for benefit), which keeps the ranking.
C = 1.0


class LinearDesign:
    """Encoding learned from training rows; `groups` maps columns back to features."""

    def fit(self, X: pd.DataFrame, weight: np.ndarray) -> Self:
        self.features_ = list(X.columns)
        self.stats_: dict[str, tuple[float, float]] = {}
        for name in self.features_:
            col = X[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                continue
            values = col.to_numpy(dtype=float)
            ok = ~np.isnan(values)
            mean = float(np.average(values[ok], weights=weight[ok])) if ok.any() else 0.0
            sd = float(np.sqrt(np.average((values[ok] - mean) ** 2, weights=weight[ok])))
            self.stats_[name] = (mean, sd if sd > 0 else 1.0)
        Z, groups = self._encode(X)
        self.groups_ = np.asarray(groups)
        self.center_ = np.average(Z, axis=0, weights=weight)
        return self

    def _encode(self, X: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
        blocks, groups = [], []
        cols = columns(X)
        for j, name in enumerate(self.features_):
            col = cols[name]
            if col.levels is not None:
                codes = col.codes
                onehot = np.zeros((len(X), len(col.levels)))
                seen = codes >= 0
                onehot[np.flatnonzero(seen), codes[seen]] = 1.0
                blocks.append(onehot)
                groups += [j] * onehot.shape[1]
            else:
                mean, sd = self.stats_[name]
                values = np.nan_to_num(col.values, nan=mean)
                blocks.append(((values - mean) / sd)[:, None])
                groups.append(j)
        return np.hstack(blocks), groups

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return self._encode(X)[0] - self.center_

    def by_feature(self, terms: np.ndarray) -> np.ndarray:
        """Sum encoded-column terms (n x columns) into per-feature contributions."""
        out = np.zeros((terms.shape[0], len(self.features_)))
        for col, group in enumerate(self.groups_):  # np.add.at's order, without its overhead
            out[:, group] += terms[:, col]
        return out


class LinearLearner(EffectLearner):
    """logit(p_a) (or E[y_a]) = b + beta.z + a * (gamma + delta.z); delta only if interactions."""

    interactions = True

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        self.design_ = LinearDesign().fit(X, weight)
        Z = self.design_.transform(X)
        a = treated.astype(float)[:, None]
        D = np.hstack([Z, a, a * Z]) if self.interactions else np.hstack([Z, a])
        if self.kind == "binary":
            model: LogisticRegression | Ridge = LogisticRegression(C=C, max_iter=2000)
        else:
            model = Ridge(alpha=1.0 / C)
        with warnings.catch_warnings():  # scikit-learn's API-transition notices, not ours
            warnings.simplefilter("ignore", FutureWarning)
            model.fit(D, y, sample_weight=weight)
        coef = np.ravel(model.coef_)
        p = Z.shape[1]
        self.intercept_ = float(np.ravel(model.intercept_)[0])
        self.beta_ = coef[:p]
        self.gamma_ = float(coef[p])
        self.delta_ = coef[p + 1 :] if self.interactions else np.zeros(p)
        return self

    def _arm_terms(self, Z: np.ndarray, arm: int) -> tuple[float, np.ndarray]:
        return self.intercept_ + arm * self.gamma_, Z * (self.beta_ + arm * self.delta_)

    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        Z = self.design_.transform(X)
        pad = np.zeros((len(X), 1))
        parts = []
        for arm in (0, 1):
            base, terms = self._arm_terms(Z, arm)
            phi = self.design_.by_feature(terms)
            raw = base + phi.sum(axis=1)
            base_arr = np.full(len(X), base)
            if self.kind == "binary":
                value, base_arr = sigmoid(raw), sigmoid(base_arr)
                phi = rescale(phi, value - base_arr)
            parts.append((base_arr, np.hstack([phi, pad])))
        (b0, p0), (b1, p1) = parts
        return ArmContributions([*X.columns, ARM_DRIVER], b0, p0, b1, p1)

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        c = self.contributions(X)
        return c.base0 + c.phi0.sum(axis=1), c.base1 + c.phi1.sum(axis=1)
