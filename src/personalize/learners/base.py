"""One small interface for every effect learner.

A learner is fit on the observed rows of a cohort (IPCW-weighted) and answers, for any
patient, the expected outcome under each arm (a probability for binary outcomes, an
improvement for continuous ones) and an exact additive decomposition of those answers
into per-feature contributions. Benefit is always treatment minus control.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
from scipy.special import ndtr

Kind = Literal["binary", "continuous"]
ARM_DRIVER = "(treatment itself)"


@dataclass(frozen=True)
class ArmContributions:
    """mu_a = base_a + phi_a.sum(axis=1) exactly, for a in (control, treatment).

    Columns of phi are the features, then ARM_DRIVER for the part of a learner's answer
    that belongs to the arm rather than to any covariate (S-learner's treatment split).
    """

    names: list[str]
    base0: np.ndarray
    phi0: np.ndarray
    base1: np.ndarray
    phi1: np.ndarray

    def map_arms(
        self, h0: np.ndarray, hb0: np.ndarray, h1: np.ndarray, hb1: np.ndarray
    ) -> ArmContributions:
        """Carry the decomposition through per-arm monotone maps (link, calibration)."""
        return ArmContributions(
            self.names, hb0, rescale(self.phi0, h0 - hb0), hb1, rescale(self.phi1, h1 - hb1)
        )

    @property
    def benefit_base(self) -> np.ndarray:
        return self.base1 - self.base0

    @property
    def benefit_phi(self) -> np.ndarray:
        return self.phi1 - self.phi0


def rescale(phi: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rescale rule (Shrikumar et al. 2017, DeepLIFT): keep each feature's share of the
    change from the base and make the contributions sum exactly to `target`.

    Where the contributions sum to ~0 the share is undefined; the difference is then
    spread in proportion to |phi| (or evenly), which keeps the sum exact.
    """
    total = phi.sum(axis=1)
    ok = np.abs(total) > 1e-12
    if ok.all():  # the common case, without the masked copies (same values)
        return phi * (target / total)[:, None]
    out = np.empty_like(phi)
    out[ok] = phi[ok] * (target[ok] / total[ok])[:, None]
    if (~ok).any():
        out[~ok] = spread(phi[~ok], target[~ok] - total[~ok])
    return out


def spread(phi: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Add `extra` to each row's contributions in proportion to their size |phi| (evenly
    where all are 0): the sum grows by exactly `extra` and no share exceeds it."""
    mass = np.abs(phi)
    norm = mass.sum(axis=1, keepdims=True)
    share = np.where(norm > 0, mass / np.where(norm > 0, norm, 1), 1.0 / phi.shape[1])
    return phi + share * extra[:, None]


def probit_contributions(
    names: list[str],
    b0: np.ndarray,
    phi0: np.ndarray,
    b1: np.ndarray,
    phi1: np.ndarray,
    mu0: np.ndarray,
    mu1: np.ndarray,
) -> ArmContributions:
    """A probit posterior learner's latent contributions (adding up to the posterior-mean
    latent value from `b_a`) carried to its posterior-mean probabilities `mu_a`.

    Carried to Phi of the mean latent value, each keeps its share (a secant of Phi: at most
    0.4 x its latent size). The posterior mean of Phi differs from Phi of the mean latent by
    the posterior spread's small Jensen gap, which is spread in proportion, not rescaled:
    rescaling onto a target whose latent change is near 0 would blow a row's contributions
    up to hundreds while they still add up."""
    at0, at1 = ndtr(b0 + phi0.sum(axis=1)), ndtr(b1 + phi1.sum(axis=1))
    p0, p1 = ndtr(b0), ndtr(b1)
    return ArmContributions(
        names,
        p0,
        spread(rescale(phi0, at0 - p0), mu0 - at0),
        p1,
        spread(rescale(phi1, at1 - p1), mu1 - at1),
    )


def doubly_robust(
    y: np.ndarray,
    treated: np.ndarray,
    e: np.ndarray | float,
    mu0: np.ndarray,
    mu1: np.ndarray,
    weight: np.ndarray | float = 1.0,
) -> np.ndarray:
    """The AIPW pseudo-outcome of each patient's benefit (one formula for the DR-learner
    and the evidence; `personalize.stats.dr_scores` checks its inputs):
    ``mu1 - mu0 + weight * (t (y - mu1) / e - (1 - t) (y - mu0) / (1 - e))``, where an
    unobserved outcome (weight 0) keeps only ``mu1 - mu0`` and its NaN never enters."""
    observed = np.asarray(weight) > 0.0
    res1 = np.where(observed, y - mu1, 0.0)
    res0 = np.where(observed, y - mu0, 0.0)
    correction = treated * res1 / e - (1.0 - treated) * res0 / (1.0 - e)
    return np.asarray(mu1 - mu0 + weight * correction, dtype=np.float64)


class EffectLearner(ABC):
    """Configuration in __init__, learning in fit, learned state in trailing underscores."""

    name: str = ""  # as written in a pipeline file's training.learners
    title: str = ""  # short, for tables and plots
    description: str = ""  # one line for the model card
    linear: bool = False  # a linear model: the benefit's drivers are its coefficients
    complexity: int = 100  # the one-SE rule prefers lower (simpler) among near-equals
    posterior: bool = False  # `arm_draws` gives posterior draws; the interval comes from them
    # outcome kinds for which it is the pre-specified learner of a pipeline file that names
    # none (chosen by the recovery study: docs/training.md, "Choosing a learner"); a new
    # learner is used only where a pipeline file names it
    default_for: tuple[Kind, ...] = ()

    def __init__(self, kind: Kind = "binary", seed: int = 0) -> None:
        self.kind = kind
        self.seed = seed

    @abstractmethod
    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        """Fit on observed rows only; `weight` are the IPCW weights of those rows."""

    @abstractmethod
    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Expected outcome under control and under treatment."""

    @abstractmethod
    def contributions(self, X: pd.DataFrame) -> ArmContributions:
        """Exact additive decomposition of predict_arms."""

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the expected outcome under control and under treatment (rows x
        draws), for a learner with `posterior = True`; their means are `predict_arms`."""
        raise NotImplementedError(f"{self.name} gives no posterior draws")

    def boosters(self) -> list[Any]:
        """The fitted gradient-boosted tree models this learner predicts with (compiled
        together for fast scoring and exact TreeSHAP); none for a learner without trees."""
        return []

    @classmethod
    def arms_of(
        cls, learners: Sequence[EffectLearner], X: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """`predict_arms` of several fitted learners of this class (a bootstrap ensemble)
        as (rows x learners) arrays: the same numbers; a subclass may compute them at once."""
        arms = [learner.predict_arms(X) for learner in learners]
        return np.column_stack([a[0] for a in arms]), np.column_stack([a[1] for a in arms])

    def benefit(self, X: pd.DataFrame) -> np.ndarray:
        mu0, mu1 = self.predict_arms(X)
        return mu1 - mu0

    def clone(self, seed: int | None = None) -> Self:
        """An unfitted copy (optionally reseeded), e.g. for a bootstrap replicate."""
        return type(self)(kind=self.kind, seed=self.seed if seed is None else seed)

    def out_of_fold(self, seed: int) -> Self:
        """The unfitted copy cross-fitting fits on each fold. Out-of-fold answers feed the
        heterogeneity test, the selection and the calibration report, which read only point
        predictions: a learner may make this copy cheaper than the one it serves."""
        return self.clone(seed)


class PosteriorLearner(EffectLearner):
    """A learner that samples a posterior: its answers for each arm are the means of its
    posterior draws, and its interval comes from the draws themselves."""

    posterior = True

    @abstractmethod
    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the expected outcome under each arm (rows x draws)."""

    @abstractmethod
    def contributions(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> ArmContributions:
        """Exact additive decomposition of predict_arms; `arms`: this learner's own
        `predict_arms(X)` when the caller has them (drawing them again is most of the cost)."""

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        mu0, mu1 = self.arm_draws(X)
        return mu0.mean(axis=1), mu1.mean(axis=1)
