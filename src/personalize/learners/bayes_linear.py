"""Bayesian linear effect model: a treatment-by-covariate regression whose interactions carry
a declared heterogeneity prior, fitted by Gibbs sampling.

latent_a(x) = b + beta.z + code[a] * (gamma + delta.z), with z the standardized covariates
(one-hot levels), the identity link for a continuous outcome and probit for a binary one
(Albert & Chib 1993: each patient's latent value is drawn given the responder status).

The priors say what the model believes before the trial: the prognostic coefficients beta
share one half-Cauchy scale, and the effect modifiers delta have a horseshoe prior
(Carvalho, Polson & Scott 2010) whose global scale is half-Cauchy with a quarter of the
outcome's spread, truncated below at a twentieth of it: most covariates are expected to
modify the effect little and a few much. The truncation keeps the global scale from
collapsing when most modifiers are null, which would shrink the real ones with them and
leave the patients with the largest benefits outside their intervals (on simulated trials
without it the 90% interval covered 82% of patients' own benefits, with it 87%). The
intercept and the average effect gamma have wide normal priors. The posterior draws of each
patient's benefit then give an interval that covers the patient's own benefit, not only
that of patients like them, as long as the effect is close to linear in the covariates.

A strictly positive covariate with a long right tail (a dose, a duration) enters as its
logarithm, the scale on which such effects are usually linear (dose-response). Values below
the training range are read as its minimum, so a scoring value of 0 has a log.

Like `bcf`, it is fitted on the observed rows without the IPCW weights: a model of the
outcome given the baseline covariates and the arm needs none when outcomes are missing at
random given those, and weights would distort the posterior's width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
from scipy.special import gammainc, gammaincinv, ndtr, ndtri
from scipy.stats import skew

from personalize import fast_trees
from personalize.data.columns import Column, columns, shared
from personalize.learners.base import (
    ARM_DRIVER,
    ArmContributions,
    Kind,
    PosteriorLearner,
    probit_contributions,
    rescale,
)
from personalize.learners.linear import LinearDesign, _arm_predictors

ARM_CODE = (-0.5, 0.5)  # the prognostic part is the arms' midpoint (as in `bcf`)
PROGNOSTIC_SCALE = 1.0  # half-Cauchy scale of the prognostic coefficients, x outcome sd
HETEROGENEITY_SCALE = 0.25  # half-Cauchy scale of the horseshoe's global scale, x outcome sd
HETEROGENEITY_FLOOR = 0.05  # the global scale's least value, x outcome sd
FLAT = 100.0  # prior sd of the intercept and the average effect, x outcome sd
SKEWED = 1.0  # a positive covariate whose skewness exceeds this (and its log's) is logged


@dataclass(frozen=True)
class Chain:
    """Gibbs sweeps: `burnin` discarded, then every `every`-th of `draws * every` kept."""

    burnin: int
    draws: int
    every: int


SERVED = Chain(burnin=500, draws=200, every=5)


@dataclass(frozen=True)
class Prior:
    """A group of the design's columns whose coefficients share one global scale: a
    half-Cauchy(0, scale) scale (x outcome sd) for the group, truncated below at `floor`,
    and with `horseshoe` a half-Cauchy local scale per coefficient as well."""

    columns: np.ndarray  # boolean mask over the design's columns
    scale: float
    floor: float = 0.0
    horseshoe: bool = False


class LogScale:
    """Which covariates enter as logarithms, and the training minimum each is held above."""

    def fit(self, X: pd.DataFrame) -> Self:
        self.floor_: dict[str, float] = {}
        for name, col in columns(X).items():
            values = col.values[np.isfinite(col.values)]
            if col.levels is not None or len(values) < 3 or values.min() <= 0:
                continue
            raw, logged = float(skew(values)), float(skew(np.log(values)))
            if raw > SKEWED and abs(logged) < abs(raw):
                self.floor_[name] = float(values.min())
        return self

    def apply(self, X: pd.DataFrame) -> pd.DataFrame:
        """X with the skewed covariates logged (training: the design is fitted on a frame)."""
        if not self.floor_:
            return X
        return X.assign(**{
            name: self._log(X[name].to_numpy(dtype=float), floor)
            for name, floor in self.floor_.items()
        })  # fmt: skip

    def apply_columns(self, cols: Mapping[str, Column]) -> dict[str, Column]:
        """`apply` on a frame's columns (`columns`): no frame built (scoring)."""
        return {**cols, **{
            name: Column(self._log(cols[name].values, floor), float64=True)
            for name, floor in self.floor_.items()
        }}  # fmt: skip

    @staticmethod
    def _log(values: np.ndarray, floor: float) -> np.ndarray:
        return np.asarray(np.log(np.maximum(values, floor)))


def _inverse_gamma(rng: np.random.Generator, shape: float, rate: np.ndarray) -> np.ndarray:
    return np.asarray(rate / rng.gamma(shape, 1.0, size=np.shape(rate)))


def _global_scale(
    rng: np.random.Generator, squares: np.ndarray, xi: float, a2: float, floor: float = 0.0
) -> tuple[float, float]:
    """One draw of a half-Cauchy(0, sqrt(a2)) scale's square, truncated below at `floor`,
    given the coefficients' scaled squares, and of its mixing variable xi. The square's
    conditional is inverse-gamma; truncated, its reciprocal is a gamma below 1 / floor,
    drawn by inverting the gamma's distribution function."""
    shape, rate = (len(squares) + 1) / 2, float(squares.sum() / 2 + 1 / xi)
    if floor > 0:
        top = gammainc(shape, rate / floor)  # P(reciprocal <= 1 / floor)
        g = gammaincinv(shape, rng.uniform(0.0, top)) / rate if top > 0 else 1 / floor
        s2 = 1 / g if g > 0 else floor
    else:
        s2 = float(_inverse_gamma(rng, shape, np.asarray(rate)))
    return max(s2, floor), float(_inverse_gamma(rng, 1.0, np.asarray(1 / a2 + 1 / s2)))


def gibbs(
    D: np.ndarray,
    y: np.ndarray,
    priors: Sequence[Prior],
    binary: bool,
    chain: Chain,
    rng: np.random.Generator,
) -> np.ndarray:
    """Posterior draws (draws x columns of D) of the coefficients. Each prior group's
    columns share its global scale; columns in no group get the wide normal prior.
    Half-Cauchy scales are sampled through their inverse-gamma mixtures (Makalic &
    Schmidt 2016)."""
    n, q = D.shape
    spread = 1.0 if binary else float(np.std(y)) or 1.0
    flat = (FLAT * spread) ** 2
    a2 = [(g.scale * spread) ** 2 for g in priors]
    floors = [(g.floor * spread) ** 2 for g in priors]
    DtD = D.T @ D
    sigma2 = 1.0 if binary else float(np.var(y)) or 1.0
    # each group's global scale (squared) and its mixing variable
    s = [max(a, f) if g.horseshoe else 1.0 for g, a, f in zip(priors, a2, floors, strict=True)]
    xi = [1.0] * len(priors)
    local, nu = np.ones(q), np.ones(q)  # the horseshoe's local scales
    z = np.where(y > 0, 0.5, -0.5) if binary else y
    kept = []
    for sweep in range(chain.burnin + chain.draws * chain.every):
        prior_var = np.full(q, flat)
        for g, group in enumerate(priors):
            cols = group.columns
            prior_var[cols] = s[g] * local[cols] if group.horseshoe else s[g]
        precision = DtD / sigma2 + np.diag(1.0 / np.maximum(prior_var, 1e-12))
        L = np.linalg.cholesky(precision)
        mean = np.linalg.solve(precision, D.T @ z / sigma2)
        beta = mean + np.linalg.solve(L.T, rng.standard_normal(q))
        fit = D @ beta
        if binary:  # the latent values, truncated by the responder status
            u = rng.uniform(1e-12, 1 - 1e-12, n)
            below = ndtr(-fit)  # P(latent <= 0)
            z = fit + ndtri(np.where(y > 0, below + u * (1 - below), u * below))
            z = np.where(np.isfinite(z), z, fit)
        else:
            r = y - fit
            sigma2 = float(_inverse_gamma(rng, n / 2, np.asarray(r @ r / 2)))
        for g, group in enumerate(priors):
            cols = group.columns
            d2 = beta[cols] ** 2
            if group.horseshoe:
                local[cols] = _inverse_gamma(rng, 1.0, d2 / (2 * s[g]) + 1 / nu[cols])
                nu[cols] = _inverse_gamma(rng, 1.0, 1 + 1 / local[cols])
                d2 = d2 / local[cols]
            s[g], xi[g] = _global_scale(rng, d2, xi[g], a2[g], floors[g])
        if sweep >= chain.burnin and (sweep - chain.burnin) % chain.every == chain.every - 1:
            kept.append(beta)
    return np.asarray(kept)


class BayesLinearLearner(PosteriorLearner):
    name = "bayes_linear"
    title = "Bayesian linear effect model"
    description = (
        "Bayesian linear effect model: treatment-by-covariate regression with a horseshoe "
        "heterogeneity prior (Gibbs sampling), posterior intervals for each patient's benefit"
    )
    linear = True
    complexity = 3  # the simplest posterior learner: preferred among near-equals
    # A candidate (and half of the default `bayes_average`): alone it is sharp when the
    # benefit is close to linear and overconfident when it is not (docs/training.md,
    # "Choosing a learner").

    def __init__(self, kind: Kind = "binary", seed: int = 0, chain: Chain = SERVED) -> None:
        super().__init__(kind, seed)
        self.chain = chain

    def clone(self, seed: int | None = None) -> Self:
        return type(self)(self.kind, self.seed if seed is None else seed, self.chain)

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        """Fit on the observed rows without the IPCW weights (module docstring)."""
        self.logs_ = LogScale().fit(X)
        Xl = self.logs_.apply(X)
        self.design_ = LinearDesign().fit(Xl, np.ones(len(X)))
        Z = self.design_.transform(Xl)
        code = np.where(treated == 1, ARM_CODE[1], ARM_CODE[0])[:, None]
        p = Z.shape[1]
        D = np.hstack([np.ones((len(Z), 1)), code, Z, code * Z])
        marks = np.zeros(D.shape[1], dtype=int)
        marks[2 : 2 + p], marks[2 + p :] = 1, 2
        priors = (
            Prior(marks == 1, PROGNOSTIC_SCALE),
            Prior(marks == 2, HETEROGENEITY_SCALE, HETEROGENEITY_FLOOR, horseshoe=True),
        )
        draws = gibbs(
            D, y.astype(float), priors, self.kind == "binary", self.chain,
            np.random.default_rng(self.seed),
        )  # fmt: skip
        self.intercept_, self.gamma_ = draws[:, 0], draws[:, 1]
        self.beta_, self.delta_ = draws[:, 2 : 2 + p], draws[:, 2 + p :]
        # each arm's linear predictor per draw as weights on the raw matrix (columns x draws)
        self.weights_ = []
        for c in ARM_CODE:
            ws = [self.design_.raw_weights(coef) for coef in self.beta_ + c * self.delta_]
            W = np.ascontiguousarray(np.column_stack([w for w, _ in ws]))
            const = np.array([k for _, k in ws]) + self.intercept_ + c * self.gamma_
            self.weights_.append((W, const))
        return self

    def keep_draws(self, k: int) -> Self:
        """Keep `k` of the posterior draws, evenly spaced (the indices `numpy.linspace`
        rounds to): a mixture that reads k draws need not compute the others, and the
        posterior means the drivers use are then those of the draws it reads."""
        n = len(self.intercept_)
        if k >= n:
            return self
        kept = np.linspace(0, n - 1, k).round().astype(int)
        self.intercept_, self.gamma_ = self.intercept_[kept], self.gamma_[kept]
        self.beta_, self.delta_ = self.beta_[kept], self.delta_[kept]
        self.weights_ = [(np.ascontiguousarray(W[:, kept]), c[kept]) for W, c in self.weights_]
        return self

    def _logged(self, X: pd.DataFrame) -> dict[str, Column]:
        """X's columns with the skewed covariates logged, once per input for the draws and
        the drivers (`shared`: one patient's answer asks for both)."""
        return shared(
            X, ("bayes-linear-logged", id(self)), lambda: self.logs_.apply_columns(columns(X))
        )

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the expected outcome under each arm (rows x draws)."""
        return self._draws_of(self.design_.raw_matrix(self._logged(X)))

    def _draws_of(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each arm's draws from a design matrix and `weights_`: one compiled pass over the
        rows for both arms and every draw, through the link."""
        (W0, c0), (W1, c1) = self.weights_
        mu0, mu1 = np.empty((len(R), len(c0))), np.empty((len(R), len(c1)))
        binary = self.kind == "binary"

        def rows(start: int, stop: int) -> None:
            _arm_predictors(R[start:stop], W0, c0, W1, c1, mu0[start:stop], mu1[start:stop])
            if binary:
                mu0[start:stop] = ndtr(mu0[start:stop])
                mu1[start:stop] = ndtr(mu1[start:stop])

        fast_trees.in_parts(len(R), rows)
        return mu0, mu1

    def contributions(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> ArmContributions:
        """Each feature's term of the posterior-mean linear predictor (exact on the latent
        scale; carried to probabilities as `bcf`'s are). `arms`: this learner's own
        `predict_arms(X)` when the caller has them."""
        Xl = self._logged(X)
        coefs = [self.beta_.mean(axis=0) + c * self.delta_.mean(axis=0) for c in ARM_CODE]
        phi0, phi1 = self.design_.feature_terms(Xl, *coefs)
        return self._carried(X, self.design_.features_, phi0, phi1, arms)

    def _carried(
        self,
        X: pd.DataFrame,
        features: list[str],
        phi0: np.ndarray,
        phi1: np.ndarray,
        arms: tuple[np.ndarray, np.ndarray] | None,
    ) -> ArmContributions:
        """Per-feature latent terms of the posterior-mean predictor (rows x features, per
        arm) carried to the arms' answers: through the probit for a responder, rescaled onto
        the posterior means for a continuous outcome."""
        pad = np.zeros((len(X), 1))
        phi0, phi1 = np.hstack([phi0, pad]), np.hstack([phi1, pad])
        b0, b1 = (
            np.full(len(X), float(self.intercept_.mean() + c * self.gamma_.mean()))
            for c in ARM_CODE
        )
        mu0, mu1 = self.predict_arms(X) if arms is None else arms
        names = [*features, ARM_DRIVER]
        if self.kind == "binary":
            return probit_contributions(names, b0, phi0, b1, phi1, mu0, mu1)
        return ArmContributions(names, b0, rescale(phi0, mu0 - b0), b1, rescale(phi1, mu1 - b1))
