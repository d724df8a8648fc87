"""AIPW doubly-robust pseudo-outcomes with inverse probability of censoring weights (IPCW)
for missing outcomes: the "observed benefit" every other evidence function scores against."""

from __future__ import annotations

from numpy.typing import ArrayLike

from personalize.learners.base import doubly_robust
from personalize.stats.trial_arrays import (
    FloatArray,
    arm_indicator,
    check_lengths,
    outcome_vector,
    propensity,
    vector,
    weight_vector,
)


def dr_scores(
    y: ArrayLike,
    treated: ArrayLike,
    e: ArrayLike,
    mu0: ArrayLike,
    mu1: ArrayLike,
    weight: ArrayLike,
) -> FloatArray:
    """AIPW doubly-robust pseudo-outcomes for the benefit, with IPCW for missing outcomes.

    For patient ``i``::

        Γ_i = mu1_i - mu0_i
              + weight_i * [ w_i (y_i - mu1_i) / e_i - (1 - w_i) (y_i - mu0_i) / (1 - e_i) ]

    where ``weight_i = R_i / P(R_i = 1 | baseline_i, arm_i)`` and ``R_i`` marks an observed
    outcome. This is the standard augmented IPW estimator with inverse probability of
    censoring weighting. Under randomization (``e`` known) and outcomes missing at random
    given baseline and arm, ``mean(Γ)`` is unbiased for the average effect when either the
    outcome models (``mu0``, ``mu1``) or the observation model behind ``weight`` is right,
    and ``E[Γ | x] = tau(x)``, which is what makes Γ a usable "observed benefit" for
    scoring predicted benefit. Unobserved patients (weight 0) keep only the plug-in part
    ``mu1 - mu0``; their NaN outcome never enters the arithmetic.

    ``mu0``, ``mu1`` must be out-of-fold predictions; in-sample fits bias everything
    downstream.
    """
    check_lengths(y=y, treated=treated, e=e, mu0=mu0, mu1=mu1, weight=weight)
    treated_ = arm_indicator(treated)
    n = treated_.shape[0]
    weight_ = weight_vector(weight, n)
    y_ = outcome_vector(y, weight_)
    e_ = propensity(e, n)
    mu0_ = vector("mu0", mu0, n)
    mu1_ = vector("mu1", mu1, n)
    return doubly_robust(y_, treated_, e_, mu0_, mu1_, weight_)
