"""Model checks: out-of-fold tests that a trained model's benefit is not plainly wrong.

A misspecified learner (a linear model of a benefit that is a step, a U-shape, or an
interaction) still produces tidy intervals; nothing in them says they are wrong. These
checks look for it from the cross-fitted predictions, before anyone serves the model:

- **calibration for benefit**: the best-linear-predictor slope of the doubly-robust
  observed benefit on the benefit the model serves should be 1; its 90% interval
  excluding 1 says the predicted spread is too wide or too narrow;
- **flexible comparator**: a flexible learner's out-of-fold doubly-robust loss against the
  served model's, paired over patients; a comparator clearly better (one-sided 5%) says the
  served model misses structure the data show.

A fired check blocks promotion unless the pipeline says `checks: warn` (docs/training.md,
"Model checks"). Pure numpy/scipy; no learners, no tracking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from personalize.stats.blp import Coefficient

SLOPE_LEVEL = 0.90  # the benefit slope's interval
COMPARATOR_Z = float(stats.norm.ppf(0.95))  # one-sided 5%: 1.64 standard errors

BENEFIT_SLOPE = "benefit_slope"
COMPARATOR = "comparator"


@dataclass(frozen=True)
class Check:
    """One check: its statistic with an interval (NaN where it has none) and p-value,
    whether it fired, and why in one plain sentence."""

    name: str
    title: str
    statistic: float
    ci_low: float
    ci_high: float
    p_value: float
    fired: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (NaN as None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class ModelChecks:
    """The checks of one trained model; `passed` when none fired."""

    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return not any(c.fired for c in self.checks)

    @property
    def fired(self) -> list[Check]:
        return [c for c in self.checks if c.fired]

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def warning(self) -> str | None:
        """One line for a reader of the model's answers, or None when every check passed."""
        if self.passed:
            return None
        reasons = "; ".join(f"{c.title}: {c.reason}" for c in self.fired)
        return f"the model failed its checks, its estimates may be wrong ({reasons})"

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}

    def metrics(self, prefix: str = "check/") -> dict[str, float]:
        """Flat scalar metrics for experiment tracking."""
        out = {f"{prefix}passed": float(self.passed)}
        for c in self.checks:
            out[f"{prefix}{c.name}/statistic"] = c.statistic
            out[f"{prefix}{c.name}/ci_low"] = c.ci_low
            out[f"{prefix}{c.name}/ci_high"] = c.ci_high
            out[f"{prefix}{c.name}/p_value"] = c.p_value
            out[f"{prefix}{c.name}/fired"] = float(c.fired)
        return out


def benefit_slope_check(coefficient: Coefficient, applied_slope: float = 1.0) -> Check:
    """Calibration for benefit of the benefit the model serves.

    `coefficient` is the out-of-fold BLP slope of the learner's own benefit (with its
    cross-fitting standard error); `applied_slope` the slope the model multiplies that
    benefit by before serving it (1 for a posterior learner, the clipped BLP slope for the
    others), so the served benefit's slope is `coefficient / applied_slope`.

    Fires when the 90% interval excludes 1. A benefit that barely varies has a slope with
    a wide interval that reaches 1, and so never fires: it makes no patient-specific claim
    to be wrong about (the comparator is what notices real heterogeneity it misses). A
    constant served benefit (no slope to estimate, or an applied slope of 0) does not fire
    either, for the same reason."""
    title = "calibration for benefit"
    est, se = coefficient.estimate, coefficient.se
    if not (math.isfinite(est) and math.isfinite(se)) or applied_slope <= 0:
        return Check(
            BENEFIT_SLOPE,
            title,
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            False,
            "the served benefit is the same for every patient: no slope to check",
        )
    slope, se = est / applied_slope, se / applied_slope
    z = float(stats.norm.ppf(0.5 + SLOPE_LEVEL / 2))
    lo, hi = slope - z * se, slope + z * se
    p = float(2 * stats.norm.sf(abs(slope - 1) / se)) if se > 0 else float("nan")
    fired = bool(lo > 1 or hi < 1)
    shown = f"slope {slope:.2f} ({SLOPE_LEVEL:.0%} CI {lo:.2f} to {hi:.2f})"
    if hi < 1:
        reason = f"{shown}: the predicted differences between patients are larger than observed"
    elif lo > 1:
        reason = f"{shown}: the predicted differences between patients are smaller than observed"
    else:
        reason = f"{shown} is consistent with 1"
    return Check(BENEFIT_SLOPE, title, slope, lo, hi, p, fired, reason)


def comparator_check(
    scores: ArrayLike, served: ArrayLike, comparator: ArrayLike, comparator_title: str
) -> Check:
    """A flexible learner's out-of-fold doubly-robust loss against the served model's.

    Per patient, the served benefit's squared DR residual minus the comparator's: its mean
    estimates the served model's PEHE minus the comparator's (the DR scores are unbiased
    for each patient's benefit, and both predictions are out of fold). Fires when the
    comparator is better by more than 1.64 standard errors of that paired mean (one-sided
    5%). The statistic is the mean difference (positive: the comparator is better)."""
    title = "flexible comparator"
    gamma = np.asarray(scores, dtype=float)
    diff = (gamma - np.asarray(served, dtype=float)) ** 2 - (
        gamma - np.asarray(comparator, dtype=float)
    ) ** 2
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    if not se > 0:
        return Check(
            COMPARATOR,
            title,
            mean,
            float("nan"),
            float("nan"),
            float("nan"),
            False,
            f"the {comparator_title} predicts what the served model does",
        )
    lo, hi = mean - COMPARATOR_Z * se, mean + COMPARATOR_Z * se
    p = float(stats.norm.sf(mean / se))
    fired = bool(mean > COMPARATOR_Z * se)
    shown = f"DR-loss difference {mean:.4f} (SE {se:.4f}, one-sided p = {p:.2g})"
    if fired:
        reason = (
            f"a {comparator_title} predicts patients' benefits better out of fold ({shown}): "
            "the served model misses structure in the data"
        )
    else:
        reason = f"a {comparator_title} does not predict benefits clearly better ({shown})"
    return Check(COMPARATOR, title, mean, lo, hi, p, fired, reason)


__all__ = [
    "BENEFIT_SLOPE",
    "COMPARATOR",
    "Check",
    "ModelChecks",
    "benefit_slope_check",
    "comparator_check",
]
