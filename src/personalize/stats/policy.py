"""The doubly-robust value of a treatment policy, for model selection and the recovery
study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from personalize.stats.trial_arrays import (
    bootstrap_count,
    bootstrap_counts,
    check_lengths,
    interval_level,
    normal_quantile,
    vector,
)


@dataclass(frozen=True)
class PolicyValueResult:
    """Doubly-robust value of a policy, relative to treating everyone with control.

    ``value`` = mean over patients of ``Γ_i * π_i``; treating everyone with control is 0
    on this scale and treating everyone with the treatment is ``treat_all``.
    ``gain_over_best_arm`` = ``value - max(0, treat_all)``: what personalizing adds over
    simply giving everyone the arm that is better on average.
    """

    value: float
    value_se: float
    treat_all: float
    treat_all_se: float
    treat_none: float
    best_single_arm: Literal["treatment", "control"]
    gain_over_best_arm: float
    gain_se: float
    gain_ci_low: float
    gain_ci_high: float
    fraction_treated: float
    level: float
    n: int
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "value_se": self.value_se,
            "treat_all": self.treat_all,
            "treat_all_se": self.treat_all_se,
            "treat_none": self.treat_none,
            "best_single_arm": self.best_single_arm,
            "gain_over_best_arm": self.gain_over_best_arm,
            "gain_se": self.gain_se,
            "gain_ci_low": self.gain_ci_low,
            "gain_ci_high": self.gain_ci_high,
            "fraction_treated": self.fraction_treated,
            "level": self.level,
            "n": self.n,
            "n_boot": self.n_boot,
        }

    def metrics(self, prefix: str = "policy_") -> dict[str, float]:
        """Flat scalar metrics for experiment tracking."""
        return {
            f"{prefix}value": self.value,
            f"{prefix}value_se": self.value_se,
            f"{prefix}treat_all": self.treat_all,
            f"{prefix}gain_over_best_arm": self.gain_over_best_arm,
            f"{prefix}gain_se": self.gain_se,
            f"{prefix}fraction_treated": self.fraction_treated,
        }


def policy_value(
    scores: ArrayLike,
    recommend: ArrayLike,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> PolicyValueResult:
    """Value of a treatment policy on the benefit scale, with bootstrap uncertainty.

    ``scores`` are the out-of-fold DR scores (:func:`dr_scores`) for an honest estimate,
    or the true individual benefits in a simulation (the recovery study), in which case
    the bootstrap reflects only which patients happen to be in the cohort.
    ``recommend`` is the policy: 1/True = give the treatment arm, 0/False = control; a
    value in between is a randomized policy (e.g. 0.5 for "either" with no preference
    known). The value of a policy is ``mean(Γ * π)``, the expected gain over treating
    everyone with control, because the control arm's own outcome cancels out.

    Standard errors and the gain interval come from a nonparametric bootstrap of patients
    (``n_boot`` resamples, ``seed``); the better single arm is re-chosen in every resample
    so the gain's uncertainty includes that choice.
    """
    check_lengths(scores=scores, recommend=recommend)
    scores_ = vector("scores", scores)
    n = scores_.shape[0]
    pi = vector("recommend", np.asarray(recommend, dtype=np.float64), n)
    if ((pi < 0.0) | (pi > 1.0)).any():
        raise ValueError("recommend: must be 0/1 (or a treatment probability in [0, 1])")
    if n < 2:
        raise ValueError(f"scores: need at least 2 patients, got {n}")
    n_boot = bootstrap_count(n_boot)
    level = interval_level(level)

    contrib = scores_ * pi
    value = float(contrib.mean())
    treat_all = float(scores_.mean())
    gain = value - max(0.0, treat_all)
    rng = np.random.default_rng(seed)
    b_value, b_all = [], []
    for counts in bootstrap_counts(rng, n, n_boot):
        b_value.append(counts @ contrib / n)
        b_all.append(counts @ scores_ / n)
    bv = np.concatenate(b_value)
    ba = np.concatenate(b_all)
    bg = bv - np.maximum(0.0, ba)
    gain_se = float(bg.std(ddof=1))
    z = normal_quantile(level)
    return PolicyValueResult(
        value=value,
        value_se=float(bv.std(ddof=1)),
        treat_all=treat_all,
        treat_all_se=float(ba.std(ddof=1)),
        treat_none=0.0,
        best_single_arm="treatment" if treat_all > 0.0 else "control",
        gain_over_best_arm=gain,
        gain_se=gain_se,
        gain_ci_low=gain - z * gain_se,
        gain_ci_high=gain + z * gain_se,
        fraction_treated=float(pi.mean()),
        level=level,
        n=n,
        n_boot=n_boot,
    )
