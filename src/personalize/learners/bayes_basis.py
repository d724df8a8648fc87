"""Bayesian effect model over a spline and interaction basis: `bayes_linear` with room to
bend, for trials whose benefit is not linear in the covariates.

latent_a(x) = b + beta.B(x) + code[a] * (gamma + delta.B(x)), where B(x) holds the linear
covariates of `bayes_linear` (standardized, one-hot levels, skewed ones logged), and two
nonlinear blocks: hinge functions max(z - k, 0) of each numeric covariate at its training
quintiles (steps, plateaus, U-shapes) and the products of pairs of numeric covariates
(effects that depend on a combination). Every column is centred on the training rows.

Priors: the linear part is `bayes_linear`'s (a half-Cauchy scale for the prognostic
coefficients, a horseshoe with a floor for the linear modifiers). The nonlinear blocks get
priors of their own without a floor, so they are shrunk to nothing unless the trial asks for
them: a half-Cauchy scale for the nonlinear prognosis and a horseshoe for the nonlinear
modifiers whose global scale is a tenth of the linear one's. A trial whose benefit is linear
gets (almost) `bayes_linear`'s answer; a bent one, the bend, and a posterior that knows the
bend is uncertain (why the interval still covers when the truth is a step or a U).

Each feature's driver is the sum of its columns' terms, a product's term split equally
between its two features: exact, and additive.
"""

from __future__ import annotations

import itertools
from typing import Self

import numpy as np
import pandas as pd

from personalize.data.columns import Column, columns, shared
from personalize.learners.base import (
    ArmContributions,
    Kind,
)
from personalize.learners.bayes_linear import (
    ARM_CODE,
    HETEROGENEITY_FLOOR,
    HETEROGENEITY_SCALE,
    PROGNOSTIC_SCALE,
    SERVED,
    BayesLinearLearner,
    Chain,
    LogScale,
    Prior,
    gibbs,
)
from personalize.learners.linear import LinearDesign

# Cross-fitting reads posterior means only: a shorter chain estimates them well
OUT_OF_FOLD = Chain(burnin=200, draws=100, every=2)
KNOTS = (0.2, 0.4, 0.6, 0.8)  # hinge knots: these training quantiles of each numeric covariate
MIN_DISTINCT = 6  # a numeric covariate with fewer distinct values gets no hinges
BENT_SHARE = 0.1  # the nonlinear modifiers' global scale, as a share of the linear ones'


class BasisDesign:
    """The basis B(x): `LinearDesign`'s columns, hinges and pairwise products, centred.
    `owners_` maps each column to its one or two features (a product's two)."""

    def fit(self, X: pd.DataFrame) -> Self:
        self.linear_ = LinearDesign().fit(X, np.ones(len(X)))
        features = self.linear_.features_
        groups = self.linear_.groups_
        self.numeric_ = [  # (feature index, its column in the linear design)
            (j, int(np.flatnonzero(groups == j)[0]))
            for j, name in enumerate(features)
            if name in self.linear_.stats_
        ]
        Z = self.linear_.transform(X)
        self.knots_: list[tuple[int, float]] = []  # (linear column, knot on the z scale)
        for _, c in self.numeric_:
            values = np.unique(Z[:, c])
            if len(values) >= MIN_DISTINCT:
                knots = np.unique(np.quantile(Z[:, c], KNOTS))
                self.knots_ += [(c, float(k)) for k in knots if k < values[-2]]
        self.pairs_ = list(itertools.combinations([c for _, c in self.numeric_], 2))
        raw = self._bent(Z)
        self.center_ = raw.mean(axis=0)
        sd = raw.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        owner_of = {c: j for j, c in self.numeric_}
        self.owners_ = [(int(j), int(j)) for j in groups] + [
            (owner_of[c], owner_of[c]) for c, _ in self.knots_
        ] + [(owner_of[a], owner_of[b]) for a, b in self.pairs_]  # fmt: skip
        self.linear_width_ = Z.shape[1]
        self.hinge_width_ = len(self.knots_)
        return self

    def _bent(self, Z: np.ndarray) -> np.ndarray:
        hinges = [np.maximum(Z[:, c] - k, 0.0) for c, k in self.knots_]
        products = [Z[:, a] * Z[:, b] for a, b in self.pairs_]
        return np.column_stack(hinges + products) if hinges or products else Z[:, :0]

    def transform(self, X: pd.DataFrame | dict[str, Column]) -> np.ndarray:
        Z = self.linear_.transform(X)
        return np.hstack([Z, (self._bent(Z) - self.center_) / self.scale_])

    @property
    def width(self) -> int:
        return self.linear_width_ + len(self.center_)

    def shares(self) -> np.ndarray:
        """(columns x features): each column's term goes to its features in equal shares."""
        S = np.zeros((self.width, len(self.linear_.features_)))
        for col, (a, b) in enumerate(self.owners_):
            S[col, a] += 0.5
            S[col, b] += 0.5
        return S


class BayesBasisLearner(BayesLinearLearner):
    name = "bayes_basis"
    title = "Bayesian spline-and-interaction effect model"
    description = (
        "Bayesian effect model over linear, hinge and pairwise-product terms of the "
        "covariates, horseshoe priors that keep the bends out unless the trial asks for them "
        "(Gibbs sampling), posterior intervals for each patient's benefit"
    )
    linear = False
    complexity = 4
    default_for: tuple[Kind, ...] = ()

    def out_of_fold(self, seed: int) -> Self:
        return type(self)(self.kind, seed, OUT_OF_FOLD)

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        """Fit on the observed rows without the IPCW weights (as `bayes_linear`)."""
        self.logs_ = LogScale().fit(X)
        Xl = self.logs_.apply(X)
        self.basis_ = BasisDesign().fit(Xl)
        B = self.basis_.transform(Xl)
        code = np.where(treated == 1, ARM_CODE[1], ARM_CODE[0])[:, None]
        q, lin = B.shape[1], self.basis_.linear_width_
        D = np.hstack([np.ones((len(B), 1)), code, B, code * B])
        marks = np.zeros(D.shape[1], dtype=int)
        marks[2 : 2 + lin], marks[2 + lin : 2 + q] = 1, 3  # prognostic: linear, bent
        marks[2 + q : 2 + q + lin], marks[2 + q + lin :] = 2, 4  # modifiers: linear, bent
        priors = (
            Prior(marks == 1, PROGNOSTIC_SCALE),
            Prior(marks == 2, HETEROGENEITY_SCALE, HETEROGENEITY_FLOOR, horseshoe=True),
            Prior(marks == 3, PROGNOSTIC_SCALE),
            Prior(marks == 4, HETEROGENEITY_SCALE * BENT_SHARE, horseshoe=True),
        )
        draws = gibbs(
            D, y.astype(float), priors, self.kind == "binary", self.chain,
            np.random.default_rng(self.seed),
        )  # fmt: skip
        self.intercept_, self.gamma_ = draws[:, 0], draws[:, 1]
        self.beta_, self.delta_ = draws[:, 2 : 2 + q], draws[:, 2 + q :]
        self.weights_ = [
            (
                np.ascontiguousarray((self.beta_ + c * self.delta_).T),
                self.intercept_ + c * self.gamma_,
            )
            for c in ARM_CODE
        ]
        return self

    def _basis(self, X: pd.DataFrame) -> np.ndarray:
        """B(X), once per input for the draws and the drivers (`shared`)."""
        return shared(
            X,
            ("bayes-basis", id(self)),
            lambda: self.basis_.transform(self.logs_.apply_columns(columns(X))),
        )

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self._draws_of(np.ascontiguousarray(self._basis(X)))

    def contributions(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> ArmContributions:
        """Each feature's share of the posterior-mean linear predictor (exact on the latent
        scale; carried to probabilities as `bayes_linear`'s are)."""
        B = self._basis(X)
        S = self.basis_.shares()
        phi0, phi1 = (
            (B * (self.beta_.mean(axis=0) + c * self.delta_.mean(axis=0))) @ S for c in ARM_CODE
        )
        return self._carried(X, self.basis_.linear_.features_, phi0, phi1, arms)


__all__ = ["SERVED", "BasisDesign", "BayesBasisLearner"]
