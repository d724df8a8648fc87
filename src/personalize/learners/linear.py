"""Penalized linear models for PATH (Kent et al. 2020) baselines.

Features are encoded once (numeric: mean-imputed and standardized; categorical: one-hot
over the declared levels), so each feature's contribution is its coefficients times its
centered encoding: exact, and zero for a patient at the cohort average.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Self

import numba
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge

from personalize import fast_trees
from personalize.data.columns import Column, columns, shared
from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner, rescale
from personalize.learners.boosting import sigmoid

# A moderate ridge on standardized covariates. Tuning it for outcome log-loss shrinks the
# treatment interactions to almost nothing; the benefit's magnitude is instead recalibrated
# out of fold by the training pipeline (calibration for benefit), which keeps the ranking.
C = 1.0
BLOCK_VALUES = 1 << 16  # predictors per block (rows x learners) mapped while in cache


Features = pd.DataFrame | Mapping[str, Column]  # a frame, or its columns already converted


def _columns_of(X: Features) -> Mapping[str, Column]:
    return columns(X) if isinstance(X, pd.DataFrame) else X


class LinearDesign:
    """Encoding learned from training rows; `groups` maps columns back to features. The
    readers take a frame or its columns (`columns`), e.g. columns derived from a frame's
    without building another frame."""

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

    def _encode(self, X: Features) -> tuple[np.ndarray, list[int]]:
        blocks, groups = [], []
        cols = _columns_of(X)
        for j, name in enumerate(self.features_):
            col = cols[name]
            if col.levels is not None:
                blocks.append(col.onehot())
                groups += [j] * len(col.levels)
            else:
                mean, sd = self.stats_[name]
                values = np.nan_to_num(col.values, nan=mean)
                blocks.append(((values - mean) / sd)[:, None])
                groups.append(j)
        return np.hstack(blocks), groups

    def transform(self, X: Features) -> np.ndarray:
        return self._encode(X)[0] - self.center_

    def raw_matrix(self, X: Features) -> np.ndarray:
        """X without the learned centring and scaling: per numeric feature its value where
        present (0 where missing) and a presence indicator; per categorical its one-hot
        columns. Shared by every design fitted on the same features (a bootstrap ensemble),
        so several fitted models score X from one matrix (`raw_weights`)."""
        blocks = []
        cols = _columns_of(X)
        for name in self.features_:
            col = cols[name]
            if col.levels is not None:
                blocks.append(col.onehot())
            else:
                present = ~np.isnan(col.values)
                blocks.append(np.where(present, col.values, 0.0)[:, None])
                blocks.append(present.astype(float)[:, None])
        return np.hstack(blocks)

    def raw_weights(self, coef: np.ndarray) -> tuple[np.ndarray, float]:
        """(w, c) with raw_matrix(X) @ w + c == transform(X) @ coef: a missing value is
        imputed by the mean, so a numeric term is present * (x - mean) / sd - center."""
        weights: list[float] = []
        widths = np.bincount(self.groups_, minlength=len(self.features_))
        col = 0
        for j, name in enumerate(self.features_):
            if name in self.stats_:
                mean, sd = self.stats_[name]
                b = float(coef[col])
                weights += [b / sd, -b * mean / sd]
            else:
                weights += [float(v) for v in coef[col : col + widths[j]]]
            col += int(widths[j])
        return np.asarray(weights), -float(coef @ self.center_)

    def feature_terms(
        self, X: Features, coef0: np.ndarray, coef1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per coefficient vector, transform(X) * coef summed into per-feature
        contributions (n x features), in one compiled pass with numpy's arithmetic in its
        order: each encoded column as `_encode` computes it, centred, times its
        coefficient, added to its feature's sum in column order from 0.0."""
        cols = _columns_of(X)
        V = np.empty((len(cols[self.features_[0]].values), len(self.features_)))
        level = np.full(len(self.groups_), -1, dtype=np.int64)
        mean, sd = np.zeros(len(self.groups_)), np.ones(len(self.groups_))
        c = 0
        for j, name in enumerate(self.features_):
            col = cols[name]
            V[:, j] = col.values  # a categorical's codes, NaN where missing
            if col.levels is not None:
                level[c : c + len(col.levels)] = np.arange(len(col.levels))
                c += len(col.levels)
            else:
                mean[c], sd[c] = self.stats_[name]
                c += 1
        out0, out1 = np.zeros_like(V), np.zeros_like(V)
        groups = np.asarray(self.groups_, dtype=np.int64)
        _feature_terms(V, groups, level, mean, sd, self.center_, coef0, coef1, out0, out1)
        return out0, out1


MAX_FLOAT = float(np.finfo(np.float64).max)  # np.nan_to_num's stand-in for +inf


@numba.njit(nogil=True, cache=True)
def _feature_terms(
    V: np.ndarray,
    groups: np.ndarray,
    level: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    center: np.ndarray,
    coef0: np.ndarray,
    coef1: np.ndarray,
    out0: np.ndarray,
    out1: np.ndarray,
) -> None:
    """out_a[i, groups[c]] += (encoded[i, c] - center[c]) * coef_a[c], c in order; encoded
    is a level's one-hot 0/1 (level[c] >= 0), else (nan_to_num(x, nan=mean) - mean) / sd."""
    for i in range(V.shape[0]):
        for c in range(groups.shape[0]):
            v = V[i, groups[c]]
            if level[c] >= 0:
                e = 1.0 if v == v and np.int64(v) == level[c] else 0.0
            else:
                if v != v:
                    v = mean[c]
                elif v > MAX_FLOAT:
                    v = MAX_FLOAT
                elif v < -MAX_FLOAT:
                    v = -MAX_FLOAT
                e = (v - mean[c]) / sd[c]
            z = e - center[c]
            out0[i, groups[c]] += z * coef0[c]
            out1[i, groups[c]] += z * coef1[c]


@numba.njit(nogil=True, cache=True)
def _arm_predictors(
    R: np.ndarray,
    W0: np.ndarray,
    const0: np.ndarray,
    W1: np.ndarray,
    const1: np.ndarray,
    out0: np.ndarray,
    out1: np.ndarray,
) -> None:
    """out_a[i, m] = const_a[m] + sum_c R[i, c] * W_a[c, m], summed over c in order for
    every (i, m): the same bits for a model whatever the other columns of W (a BLAS
    product would not promise that). Rows are read once for both arms, four at a time,
    and the sums of the members and of the four rows advance side by side (independent
    chains: vectorized across members, and no waiting on one sum when there is one
    member)."""
    n, q = R.shape
    m = W0.shape[1]
    full = n - n % 4
    for i in range(0, full, 4):
        for k in range(4):
            for j in range(m):
                out0[i + k, j] = const0[j]
                out1[i + k, j] = const1[j]
        for c in range(q):
            r0, r1, r2, r3 = R[i, c], R[i + 1, c], R[i + 2, c], R[i + 3, c]
            for j in range(m):
                w = W0[c, j]
                out0[i, j] += r0 * w
                out0[i + 1, j] += r1 * w
                out0[i + 2, j] += r2 * w
                out0[i + 3, j] += r3 * w
            for j in range(m):
                w = W1[c, j]
                out1[i, j] += r0 * w
                out1[i + 1, j] += r1 * w
                out1[i + 2, j] += r2 * w
                out1[i + 3, j] += r3 * w
    for i in range(full, n):
        for j in range(m):
            out0[i, j] = const0[j]
            out1[i, j] = const1[j]
        for c in range(q):
            r = R[i, c]
            for j in range(m):
                out0[i, j] += r * W0[c, j]
            for j in range(m):
                out1[i, j] += r * W1[c, j]


class LinearLearner(EffectLearner):
    """logit(p_a) (or E[y_a]) = b + beta.z + a * (gamma + delta.z); delta only if interactions."""

    interactions = True

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        self.__dict__.pop("arm_weights_", None)  # a refit has other weights
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

    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        coefs = [self.beta_ + arm * self.delta_ for arm in (0, 1)]
        phis = self.design_.feature_terms(X, *coefs)
        pad = np.zeros((len(X), 1))
        parts = []
        for arm, phi in zip((0, 1), phis, strict=True):
            base = self.intercept_ + arm * self.gamma_
            raw = base + phi.sum(axis=1)
            base_arr = np.full(len(X), base)
            if self.kind == "binary":
                value, base_arr = sigmoid(raw), sigmoid(base_arr)
                phi = rescale(phi, value - base_arr)
            parts.append((base_arr, np.hstack([phi, pad])))
        (b0, p0), (b1, p1) = parts
        return ArmContributions([*X.columns, ARM_DRIVER], b0, p0, b1, p1)

    def _arm_weights(self, arm: int) -> tuple[np.ndarray, float]:
        """The arm's linear predictor as weights on `LinearDesign.raw_matrix` and a constant.
        Fixed once fitted, so computed once per arm: one patient's answer asks for every
        bootstrap member's weights, which otherwise cost more than the prediction."""
        cache: dict[int, tuple[np.ndarray, float]] = self.__dict__.setdefault("arm_weights_", {})
        if arm not in cache:
            w, c = self.design_.raw_weights(self.beta_ + arm * self.delta_)
            cache[arm] = (w, c + self.intercept_ + arm * self.gamma_)
        return cache[arm]

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        mu0, mu1 = type(self).arms_of([self], X)
        return mu0[:, 0], mu1[:, 0]

    @classmethod
    def arms_of(
        cls, learners: Sequence[EffectLearner], X: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every learner's arms from one shared raw matrix: per arm, the members' weights
        side by side (columns x learners), summed column by column in one fixed order, so a
        learner's numbers are the same bits alone or in an ensemble. Scoring a bootstrap
        ensemble is then one pass over the rows (in blocks, on `fast_trees.threads()`
        threads: disjoint rows, the same numbers), not one design per member."""
        fitted = [m for m in learners if isinstance(m, LinearLearner)]
        features = {tuple(m.design_.features_) for m in fitted}
        if len(fitted) != len(learners) or len(features) != 1:
            return super().arms_of(learners, X)
        # one raw matrix per input for the learner and its members (the learner is asked twice)
        design = fitted[0].design_
        R = shared(X, ("linear-raw-matrix", *features), lambda: design.raw_matrix(X))
        (W0, c0), (W1, c1) = (cls._weights(fitted, arm) for arm in (0, 1))
        n, m = len(R), W0.shape[1]
        mu0, mu1 = np.empty((n, m)), np.empty((n, m))
        binary = fitted[0].kind == "binary"

        block = max(256, BLOCK_VALUES // max(m, 1))

        def rows(start: int, stop: int) -> None:
            # a block's predictors are mapped while still in cache; the map is elementwise
            for a in range(start, stop, block):
                b = min(a + block, stop)
                _arm_predictors(R[a:b], W0, c0, W1, c1, mu0[a:b], mu1[a:b])
                if binary:
                    mu0[a:b] = sigmoid(mu0[a:b])
                    mu1[a:b] = sigmoid(mu1[a:b])

        fast_trees.in_parts(n, rows, align=block)
        return mu0, mu1

    @staticmethod
    def _weights(fitted: Sequence[LinearLearner], arm: int) -> tuple[np.ndarray, np.ndarray]:
        """Per arm, the members' weights side by side (columns x learners) and constants."""
        weights = [m._arm_weights(arm) for m in fitted]
        W = np.ascontiguousarray(np.column_stack([w for w, _ in weights]))
        return W, np.array([c for _, c in weights])
