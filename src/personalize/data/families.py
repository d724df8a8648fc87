"""The scenario library: families of true effect on the STAMP-shaped cohort (SYNTHETIC).

A learner checked only against a truth of its own shape proves nothing about real trials.
Each family keeps the STAMP cohort (covariates, allocation, dropout, instrument ranges) and
replaces one part of how the outcome is made: the shape of the effect modification (the
moderation), the prognosis shared by both arms, the noise's distribution or spread, or a
modifier that the trial does not record. Every family gives a binary responder truth and a
continuous change truth, so the same library serves both outcome kinds.

Which families may be tuned on (development) and which are only evaluated (held-out) is
fixed in docs/scenarios.md, before any evaluation on them.

Moderation is on the BPI-change scale, treatment (MBT) minus control (CBT), negative
favouring MBT, applied half to each arm, like the linear family's. Each family's continuous
moderation has a standard deviation of about 0.5-0.7 BPI points on the simulated population
(the linear family's: 0.64), so families differ in shape, not in how much there is to find.
The preference match (+-0.36 per arm) is kept in every family with an effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

FloatArray = npt.NDArray[np.float64]
Shape = Callable[[pd.DataFrame], FloatArray]

HIDDEN = "_unmeasured"  # a column the simulator draws and the trial never records


def _num(frame: pd.DataFrame, column: str) -> FloatArray:
    return frame[column].to_numpy(dtype=np.float64)


def _z(frame: pd.DataFrame, column: str, mean: float, sd: float) -> FloatArray:
    return (_num(frame, column) - mean) / sd


# ---------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class Noise:
    """The outcome noise's distribution, standardized to mean 0 and SD 1."""

    name: str
    dist: stats.rv_continuous | None  # None: the standard normal (closed-form truth)
    scale: float = 1.0  # the distribution's scale giving SD 1

    def cdf(self, z: FloatArray) -> FloatArray:
        if self.dist is None:
            return np.asarray(stats.norm.cdf(z))
        return np.asarray(self.dist.cdf(z / self.scale))

    def from_normal(self, eps: FloatArray) -> FloatArray:
        """Standard-normal draws mapped to this distribution by quantile (keeps their
        ranks, so the visits' correlation carries over)."""
        if self.dist is None:
            return eps
        u = np.clip(stats.norm.cdf(eps), 1e-12, 1 - 1e-12)
        return np.asarray(self.dist.ppf(u) * self.scale)

    def quantiles(self, k: int) -> FloatArray:
        """k midpoint quantiles of the standardized noise (for expectations by quadrature)."""
        u = (np.arange(k) + 0.5) / k
        return np.asarray(stats.norm.ppf(u) if self.dist is None else self.dist.ppf(u) * self.scale)


NORMAL = Noise("normal", None)
LOGISTIC = Noise("logistic", stats.logistic, math.sqrt(3) / math.pi)
T3 = Noise("t3", stats.t(3), 1 / math.sqrt(3))


# ---------------------------------------------------------------------------- shapes


def linear_moderation(frame: pd.DataFrame) -> FloatArray:
    """The STAMP scenario's moderation: linear in log dose, depression and non-judging."""
    return (
        -0.42 * np.log2(_num(frame, "mme") / 60.0)
        - 0.05 * (_num(frame, "phq8") - 10.5)
        - 0.10 * (_num(frame, "ffmq_nonjudging") - 9.5)
    )


def _threshold(frame: pd.DataFrame) -> FloatArray:
    """Steps: MBT better from 90 MME/day, CBT better from moderately severe depression."""
    high_dose = _num(frame, "mme") >= 90.0
    depressed = _num(frame, "phq8") >= 15.0
    return -1.1 * (high_dose - 0.30) + 0.9 * (depressed - 0.22)


def _saturating(frame: pd.DataFrame) -> FloatArray:
    """The linear moderation, flattening out at its extremes."""
    return 0.75 * np.tanh(linear_moderation(frame) / 0.45)


def _interaction(frame: pd.DataFrame) -> FloatArray:
    """Only the combination matters: high depression with low non-judging favours MBT,
    either alone nothing."""
    return 0.65 * _z(frame, "phq8", 10.5, 5.8) * _z(frame, "ffmq_nonjudging", 9.5, 2.8)


def _u_shape(frame: pd.DataFrame) -> FloatArray:
    """MBT better at both ends of age, CBT in the middle."""
    z = _z(frame, "age", 57.8, 11.3)
    return -0.45 * (z * z - 1.0)


def _bands(frame: pd.DataFrame) -> FloatArray:
    """Non-monotone bands of an ordinal score (PHQ-8 severity bands 0-4, 5-9, 10-14,
    15-19, 20-24) with alternating effects."""
    phq = _num(frame, "phq8")
    band = np.minimum(np.floor(phq / 5.0), 4).astype(int)
    effect = np.array([0.6, -0.6, 0.5, -0.7, 0.6])
    return np.asarray(effect[band])


def _weak_many(frame: pd.DataFrame) -> FloatArray:
    """Ten modifiers, each small (about 0.2 BPI points per SD), none dominant."""
    terms = [
        (-0.20, "age", 57.8, 11.3),
        (0.18, "bpi_severity", 6.1, 1.6),
        (-0.18, "bpi_interference", 6.3, 2.0),
        (0.20, "odi", 47.2, 14.0),
        (-0.20, "phq8", 10.5, 5.8),
        (0.18, "gad7", 8.0, 5.4),
        (-0.18, "pcs", 24.0, 12.0),
        (0.20, "ffmq_nonjudging", 9.5, 2.8),
        (-0.18, "expectancy", 6.5, 2.0),
        (0.18, "sf12_pcs", 30.0, 8.0),
    ]
    return np.asarray(sum(c * _z(frame, col, m, s) for c, col, m, s in terms))


def _unmeasured(frame: pd.DataFrame) -> FloatArray:
    """Half the linear moderation, plus a modifier the trial does not record (a binary
    trait of half the patients, independent of every recorded covariate)."""
    return 0.5 * linear_moderation(frame) - 1.0 * (_num(frame, HIDDEN) - 0.5)


def _curved_prognosis(frame: pd.DataFrame) -> FloatArray:
    """A prognosis far from linear, the same under both arms: worse outcomes at both ends
    of baseline pain, a step in catastrophizing, a plateau in disability."""
    zb = _z(frame, "bpi_severity", 6.1, 1.6)
    return (
        0.45 * (zb * zb - 1.0)
        + 0.6 * (_num(frame, "pcs") >= 30.0)
        - 0.5 * np.tanh(_z(frame, "odi", 47.2, 14.0))
    )


def _odi_spread(frame: pd.DataFrame) -> FloatArray:
    """Noise SD multiplier growing with disability (mean about 1 on the population)."""
    return np.exp(0.4 * np.clip(_z(frame, "odi", 47.2, 14.0), -2.5, 2.5) - 0.08)


@dataclass(frozen=True)
class Family:
    """One shape of truth: what replaces the STAMP scenario's moderation, prognosis and
    noise. `moderation=None` is a null: both arms share every patient's outcome."""

    name: str
    description: str
    moderation: Shape | None = linear_moderation
    prognosis: Shape | None = None  # added to the STAMP prognosis under both arms
    noise: Noise = NORMAL
    spread: Shape | None = None  # per-patient noise SD multiplier
    hidden: bool = False  # draws the unmeasured modifier `HIDDEN`


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("linear", "linear moderation on the probit scale (the STAMP scenario)"),
        Family("logit", "linear moderation, logistic noise (a logit link)", noise=LOGISTIC),
        Family("threshold", "steps in dose and depression", _threshold),
        Family("saturating", "linear moderation flattening at its extremes", _saturating),
        Family("interaction", "a product of two covariates, neither alone", _interaction),
        Family("u-shape", "a U-shape in age", _u_shape),
        Family("bands", "non-monotone bands of an ordinal score (PHQ-8)", _bands),
        Family("weak-many", "ten weak modifiers", _weak_many),
        Family("unmeasured", "a modifier the trial does not record", _unmeasured, hidden=True),
        Family(
            "curved-prognosis",
            "nonlinear prognosis, linear moderation",
            prognosis=_curved_prognosis,
        ),
        Family("heavy-tails", "linear moderation, t(3) noise", noise=T3),
        Family(
            "heteroscedastic",
            "linear moderation, noise SD growing with disability",
            spread=_odi_spread,
        ),
        Family("null", "no effect modification (both arms identical)", None),
        Family(
            "null-curved",
            "no effect modification; nonlinear prognosis, heavy-tailed heteroscedastic noise",
            None,
            prognosis=_curved_prognosis,
            noise=T3,
            spread=_odi_spread,
        ),
    )
}


# The split, fixed in docs/scenarios.md before any evaluation: development families may be
# tuned on, held-out families are only evaluated. The headline family runs 30 trials.
DEVELOPMENT: tuple[str, ...] = (
    "linear",
    "threshold",
    "interaction",
    "curved-prognosis",
    "heavy-tails",
    "null",
)
HELD_OUT: tuple[str, ...] = (
    "logit",
    "saturating",
    "u-shape",
    "bands",
    "weak-many",
    "unmeasured",
    "heteroscedastic",
    "null-curved",
)
HEADLINE = "u-shape"


def scenario_of(family: str) -> str:
    """The simulator's scenario name of a family (`linear` is `stamp`, `null` `stamp-null`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return {"linear": "stamp", "null": "stamp-null"}.get(family, f"stamp-{family}")
