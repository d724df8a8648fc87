"""Bayesian Causal Forests (Hahn, Murray & Carvalho 2020), fitted with `stochtree`.

Two sums of trees: a prognostic forest mu(x) and an effect forest tau(x), regularised
towards a homogeneous effect, with a known propensity (the trial's allocation ratio). For
a binary outcome the link is probit: control = Phi(mu(x)), treatment = Phi(mu(x) + tau(x)).
The posterior draws give each patient's benefit an interval that covers the patient's own
benefit, not only that of patients like them (docs/training.md, "Intervals").

After fitting, the forests are copied into plain arrays (`TreeArrays`) and evaluated by
compiled loops: the model pickles without stochtree's C++ objects, and scoring needs no
stochtree at all. Consecutive draws mostly share a tree's splits and differ in its leaf
values, so each distinct tree shape is walked once per row and its leaf's value added for
every draw that has it (`SharedShapes`).

Drivers are path attributions of the posterior-mean forests (Saabas): along each patient's
path every split's change in the expected leaf value goes to its feature, so they add up
exactly to the patient's latent value; the rescale rule carries them to Phi of it, and
the posterior mean of Phi's small difference from that is shared in proportion. A root
split's term depends on its own feature alone, so each feature's root terms form one step
function, looked up once per row (`RootSteps`); only the splits below the roots are walked.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
from scipy.special import ndtr

from personalize.data.columns import columns
from personalize.learners.base import (
    ARM_DRIVER,
    ArmContributions,
    Kind,
    PosteriorLearner,
    probit_contributions,
    rescale,
)

# the forests' classes are also named here: models pickled before they had their own
# module find them under this one
from personalize.learners.bcf_forests import RootSteps, SharedShapes, TreeArrays


@dataclass(frozen=True)
class Chain:
    """The sampler's schedule: `gfr` grow-from-root warm-start sweeps, then `chains`
    independent MCMC chains, each started from its own warm-start forest, run `burnin`
    sweeps and keep every `every`-th of the next `draws * every` (stochtree's
    `num_chains`, `keep_every`): chains * draws posterior draws in all."""

    gfr: int
    chains: int
    burnin: int
    draws: int
    every: int


# Measured on simulated STAMP trials (docs/training.md, "Intervals"): four chains, each
# from its own warm-start forest, cover the patient's benefit at least as often as one
# chain of 500 burn-in and 1,000 draws, with the same accuracy, in a third of the time
# (one chain mixes slowly between tree structures). Cross-fitting needs only posterior
# means (the heterogeneity test, the per-arm calibration), which one short chain
# estimates well.
SERVED = Chain(gfr=10, chains=4, burnin=50, draws=25, every=5)
OUT_OF_FOLD = Chain(gfr=10, chains=1, burnin=100, draws=100, every=1)
# How the arms enter the model: latent = mu(x) + code[arm] * tau(x). Centred (-1/2, +1/2),
# mu is the arms' midpoint and the prior shrinks both arms towards it alike; coded (0, 1), mu
# is the control arm's surface and the shrunk treatment arm inherits the control arm's
# prognosis. On 10 simulated STAMP trials (N = 770) centring took PEHE from 0.123 to 0.116
# and the 90% interval's coverage of each patient's own benefit from 0.80 to 0.92
# (benchmarks/results/recovery.md); Hahn, Murray & Carvalho (2020, section 5.2) make the
# same point for their adaptive coding.
ARM_CODE = (-0.5, 0.5)


class Design:
    """Features as the forests see them: numeric values (a missing value takes the training
    mean, so training and scoring agree) and one 0/1 column per declared level."""

    def fit(self, X: pd.DataFrame) -> Self:
        self.features_ = list(X.columns)
        cols = columns(X)
        self.means_ = {
            name: float(np.nanmean(col.values)) if np.isfinite(col.values).any() else 0.0
            for name, col in cols.items()
            if col.levels is None
        }
        groups: list[int] = []
        for j, name in enumerate(self.features_):
            levels = cols[name].levels
            groups += [j] * (len(levels) if levels is not None else 1)
        self.groups_ = np.asarray(groups, dtype=np.int64)
        return self

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        blocks = []
        cols = columns(X)
        for name in self.features_:
            col = cols[name]
            if col.levels is None:
                blocks.append(np.where(np.isnan(col.values), self.means_[name], col.values))
            else:
                blocks.extend(col.onehot().T)
        return np.ascontiguousarray(np.column_stack(blocks), dtype=np.float64)


class BCFLearner(PosteriorLearner):
    name = "bcf"
    title = "Bayesian Causal Forest"
    description = (
        "Bayesian Causal Forest (Hahn, Murray & Carvalho 2020; stochtree): prognostic and "
        "effect forests, posterior intervals for each patient's benefit"
    )
    # Among near-equals after the Bayesian linear model (which shares its posterior
    # intervals and homogeneity-seeking prior) and before the learners without a posterior.
    # Named in a pipeline file where effects are not expected to be close to linear.
    complexity = 5

    def __init__(self, kind: Kind = "binary", seed: int = 0, chain: Chain = SERVED) -> None:
        super().__init__(kind, seed)
        self.chain = chain

    def clone(self, seed: int | None = None) -> Self:
        return type(self)(self.kind, self.seed if seed is None else seed, self.chain)

    def out_of_fold(self, seed: int) -> Self:
        return type(self)(self.kind, seed, OUT_OF_FOLD)

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        """Fit on the observed rows without the IPCW weights: a model of the outcome given
        the baseline covariates and the arm needs none when outcomes are missing at random
        given those, and weights (as precisions) would only distort the posterior's width."""
        from stochtree import BCFModel, OutcomeModel  # a compiled library: load when fitting

        self.design_ = Design().fit(X)
        Z = self.design_.matrix(X)
        binary = self.kind == "binary"
        self.allocation_ = float(np.mean(treated))
        chain = self.chain
        model = BCFModel()
        with warnings.catch_warnings():  # "global error variance not sampled with probit"
            warnings.simplefilter("ignore", UserWarning)
            model.sample(
                X_train=Z,
                Z_train=np.where(treated == 1, ARM_CODE[1], ARM_CODE[0]),
                y_train=y.astype(float),
                propensity_train=np.full(len(y), self.allocation_),
                num_gfr=chain.gfr,
                num_burnin=chain.burnin,
                num_mcmc=chain.draws,
                general_params={
                    "num_chains": chain.chains,
                    "keep_every": chain.every,
                    "outcome_model": OutcomeModel(
                        outcome="binary" if binary else "continuous",
                        link="probit" if binary else "identity",
                    ),
                    "adaptive_coding": False,
                    "random_seed": self.seed,
                    "num_threads": 1,
                },
            )
        keep = np.arange(model.num_samples)
        Zp = np.column_stack([Z, np.full(len(Z), self.allocation_)])  # + the propensity column
        self.mu_ = TreeArrays.from_json(
            json.loads(model.forest_container_mu.dump_json_string()), keep, Zp
        )
        self.tau_ = TreeArrays.from_json(
            json.loads(model.forest_container_tau.dump_json_string()), keep, Zp
        )
        self.mu_mean_, self.tau_mean_ = self.mu_.merged(), self.tau_.merged()
        self.y_bar_ = float(model.y_bar)
        self.y_std_ = float(model.y_std)
        tau_0 = np.asarray(model.tau_0_samples, dtype=float) if model.sample_tau_0 else None
        self.tau_0_ = np.zeros(len(keep)) if tau_0 is None else np.ravel(tau_0)[keep]
        self.code_ = ARM_CODE
        return self

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        Z = self.design_.matrix(X)
        return np.ascontiguousarray(np.column_stack([Z, np.full(len(Z), self.allocation_)]))

    def _code(self) -> tuple[float, float]:
        return getattr(self, "code_", (0.0, 1.0))  # models fitted before the coding was kept

    def latent_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(control, effect) per row and draw on the latent (probit) or outcome scale."""
        Z = self._matrix(X)
        effect = self.tau_0_ + self.y_std_ * self.tau_.sums(Z)
        control = self.y_bar_ + self.y_std_ * self.mu_.sums(Z) + self._code()[0] * effect
        return control, effect

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the expected outcome under each arm (rows x draws)."""
        control, effect = self.latent_draws(X)
        if self.kind == "binary":
            return ndtr(control), ndtr(control + effect)
        return control, control + effect

    def contributions(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> ArmContributions:
        """`arms`: this learner's own `predict_arms(X)` when the caller has them (their
        posterior draws are most of the cost of computing them again)."""
        Z = self._matrix(X)
        scale = self.y_std_ / self.mu_.draws
        phi_c, base_c = self.mu_mean_.attributions(Z, scale)
        phi_e, base_e = self.tau_mean_.attributions(Z, scale)
        base_c += self.y_bar_
        base_e += float(self.tau_0_.mean())
        # one-hot columns back to their feature; the constant propensity column (which no
        # split can separate, so it gets nothing) to the arm driver's slot
        groups = np.append(self.design_.groups_, len(self.design_.features_))
        phi0 = np.zeros((len(X), len(self.design_.features_) + 1))
        phi1 = np.zeros_like(phi0)
        c0, c1 = self._code()
        for col, group in enumerate(groups):
            phi0[:, group] += phi_c[:, col] + c0 * phi_e[:, col]
            phi1[:, group] += phi_c[:, col] + c1 * phi_e[:, col]
        mu0, mu1 = self.predict_arms(X) if arms is None else arms
        b0, b1 = np.full(len(X), base_c + c0 * base_e), np.full(len(X), base_c + c1 * base_e)
        names = [*self.design_.features_, ARM_DRIVER]
        if self.kind == "binary":
            return probit_contributions(names, b0, phi0, b1, phi1, mu0, mu1)
        # the identity link: the posterior mean is the latent mean
        return ArmContributions(names, b0, rescale(phi0, mu0 - b0), b1, rescale(phi1, mu1 - b1))


__all__ = [
    "OUT_OF_FOLD",
    "SERVED",
    "BCFLearner",
    "Chain",
    "RootSteps",
    "SharedShapes",
    "TreeArrays",
]
