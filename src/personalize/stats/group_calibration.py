"""Calibration for benefit by group: predicted vs doubly-robust observed benefit by quantile
group of the predicted benefit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from personalize.stats.trial_arrays import (
    check_lengths,
    interval_level,
    normal_quantile,
    vector,
)


@dataclass(frozen=True)
class GroupRow:
    """One quantile group of predicted benefit: predicted vs doubly-robust observed."""

    group: int
    n: int
    tau_min: float
    tau_max: float
    mean_predicted: float
    mean_observed: float
    se: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "group": self.group,
            "n": self.n,
            "tau_min": self.tau_min,
            "tau_max": self.tau_max,
            "mean_predicted": self.mean_predicted,
            "mean_observed": self.mean_observed,
            "se": self.se,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }


@dataclass(frozen=True)
class GroupCalibration:
    """Calibration for benefit by quantile group of predicted benefit (lowest first).

    ``slope`` / ``intercept`` come from regressing the groups' observed benefit on their
    predicted benefit (slope 1, intercept 0 = well calibrated for benefit; slope near 0 =
    the ranking carries no signal). NaN when the groups' predictions do not vary.
    """

    groups: tuple[GroupRow, ...]
    slope: float
    slope_se: float
    intercept: float
    level: float

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "slope": self.slope,
            "slope_se": self.slope_se,
            "intercept": self.intercept,
            "level": self.level,
        }

    def metrics(self, prefix: str = "benefit_calibration_") -> dict[str, float]:
        """Flat scalar metrics for experiment tracking."""
        return {
            f"{prefix}slope": self.slope,
            f"{prefix}slope_se": self.slope_se,
            f"{prefix}intercept": self.intercept,
        }


def benefit_calibration_by_group(
    tau: ArrayLike,
    scores: ArrayLike,
    n_groups: int = 5,
    level: float = 0.95,
) -> GroupCalibration:
    """Predicted vs doubly-robust observed benefit by quantile group of predicted benefit.

    "Calibration for benefit" (van Klaveren et al.): patients are split into ``n_groups``
    groups of (nearly) equal size by rank of ``tau`` (stable sort, so ties are split
    deterministically by input order). Per group: mean predicted benefit, mean of the DR
    ``scores`` (the observed benefit, unbiased for the group's true average benefit) with
    SE ``sd / sqrt(n)`` and a normal ``level`` interval.

    The summary slope regresses group observed on group predicted benefit, weighting each
    group by the inverse of its squared SE (a fixed-effect meta-regression, so
    ``slope_se`` is honest about the groups' noise); with a zero SE it falls back to
    weighting by group size and reports ``slope_se`` as NaN.
    """
    check_lengths(tau=tau, scores=scores)
    tau_ = vector("tau", tau)
    n = tau_.shape[0]
    scores_ = vector("scores", scores, n)
    level = interval_level(level)
    if int(n_groups) != n_groups or n_groups < 2:
        raise ValueError(f"n_groups: need an integer >= 2, got {n_groups}")
    if n < 2 * n_groups:
        raise ValueError(f"tau: need at least {2 * n_groups} patients for {n_groups} groups")
    z = normal_quantile(level)
    order = np.argsort(tau_, kind="stable")
    rows: list[GroupRow] = []
    for g, idx in enumerate(np.array_split(order, int(n_groups)), start=1):
        t, s = tau_[idx], scores_[idx]
        mean_obs = float(s.mean())
        se = float(s.std(ddof=1) / np.sqrt(idx.size))
        rows.append(
            GroupRow(
                group=g,
                n=int(idx.size),
                tau_min=float(t.min()),
                tau_max=float(t.max()),
                mean_predicted=float(t.mean()),
                mean_observed=mean_obs,
                se=se,
                ci_low=mean_obs - z * se,
                ci_high=mean_obs + z * se,
            )
        )
    pred = np.array([r.mean_predicted for r in rows])
    obs = np.array([r.mean_observed for r in rows])
    ses = np.array([r.se for r in rows])
    slope = intercept = slope_se = float("nan")
    if np.ptp(pred) > 1e-12 * max(1.0, float(np.max(np.abs(pred)))):
        inverse_variance = bool(np.all(ses > 0.0))
        wts = 1.0 / ses**2 if inverse_variance else np.array([r.n for r in rows], float)
        x = np.column_stack([np.ones_like(pred), pred])
        xtwx = x.T @ (x * wts[:, None])
        cov = np.linalg.inv(xtwx)
        beta = cov @ (x.T @ (wts * obs))
        intercept, slope = float(beta[0]), float(beta[1])
        if inverse_variance:
            slope_se = float(np.sqrt(cov[1, 1]))
    return GroupCalibration(
        groups=tuple(rows), slope=slope, slope_se=slope_se, intercept=intercept, level=level
    )
