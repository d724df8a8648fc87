"""The weighted R-loss of Nie & Wager: an alternative criterion for choosing among
candidate learners."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from personalize.stats.trial_arrays import (
    arm_indicator,
    check_lengths,
    outcome_vector,
    propensity,
    vector,
    weight_vector,
)


def r_loss(
    y: ArrayLike,
    treated: ArrayLike,
    e: ArrayLike,
    m: ArrayLike,
    tau: ArrayLike,
    weight: ArrayLike,
) -> float:
    """Weighted R-loss (Nie & Wager): lower is better for predicted benefit ``tau``.

    ``sum(weight * ((y - m) - (treated - e) * tau)^2) / sum(weight)`` over observed patients,
    with ``m`` the out-of-fold marginal outcome prediction (``e mu1 + (1 - e) mu0`` or a
    separate outcome model). The IPCW-weighted (Hájek) mean estimates the loss on the full
    cohort; normalizing by ``sum(weight)`` instead of ``n`` only rescales it, so the
    ranking of candidate learners on the same data is the same either way.
    """
    check_lengths(y=y, treated=treated, e=e, m=m, tau=tau, weight=weight)
    treated_ = arm_indicator(treated)
    n = treated_.shape[0]
    weight_ = weight_vector(weight, n)
    y_ = outcome_vector(y, weight_)
    e_ = propensity(e, n)
    m_ = vector("m", m, n)
    tau_ = vector("tau", tau, n)
    obs = weight_ > 0.0
    resid = (y_[obs] - m_[obs]) - (treated_[obs] - e_[obs]) * tau_[obs]
    return float(np.sum(weight_[obs] * resid**2) / np.sum(weight_[obs]))
