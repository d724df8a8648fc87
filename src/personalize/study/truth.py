"""Scores against the simulator's truth: every per-replication number of the study.

Definitions (every number in the tables):

- **true benefit**: binary outcomes `p_response_T - p_response_C` (probability scale);
  continuous paired outcomes (improvement = baseline - follow-up) `-(expected_change_T -
  expected_change_C)`. The arms' true expected outcomes (higher is better) score policies.
- **PEHE**: root mean squared error of the predicted benefit over the test patients. The
  reference is `sd(true benefit)`, the PEHE of the best constant predictor (the true
  average effect for everyone): a method with PEHE above it has learned nothing usable.
- **policy value** of a method's recommendations: the mean true expected outcome when every
  test patient gets the arm the method recommends. `either` is resolved as the product
  says it should be ("follow patient preference"): the patient's stated preferred arm, and
  for patients without a preference the better arm by the method's own average-effect
  estimate (ours: the AIPW average effect; peers: the mean predicted benefit on their
  training cohort). `regret` = oracle value (every patient on their truly better arm) minus
  policy value; `gain` = policy value minus treating everyone with the truly better single
  arm. Also reported: `regret_avgarm` (`either` -> the method's better average arm for
  everyone) and `regret_plugin` (treat whenever the point benefit is > 0, no abstention).
- **gain capture**: (value - best single arm) / (oracle - best single arm), with `either`
  resolved as a clinic would: the stated preference, and either arm at random (the mean of
  the two arms' true outcomes) for a patient without one. `share_against_preference` and
  `accuracy_against_preference`: recommendations that contradict a stated preference, and
  how often they name the truly better arm. `gain_capture_bet`: the same with a patient
  without a preference given the method's *better bet* where it offers one (ours: the
  product's `better_bet`, offered only when the model passed its checks and the favoured
  arm is better with at least `decision.bet_level` probability; peers: the arm their
  benefit estimate favours), at random elsewhere; `share_bet`: the share of test patients
  given a bet. `gain_capture_sign`: the same with every such patient given the arm the
  point estimate favours (a zero estimate stays at random).
- **accuracy**: among patients with a non-`either` recommendation, the share whose
  recommended arm is truly better (a true benefit of exactly 0, as everywhere on
  `stamp-null`, counts as wrong: the recommendation had no basis).
- **coverage**: share of test patients whose true benefit lies inside their interval
  (target: the pipeline's `training.interval_level`). `group_coverage`: coverage of the
  model's *projected* benefit target, the mean true benefit of the test patients in the
  same twentile of predicted benefit (what a calibrated model can promise at best).
- **width at nominal coverage** (`width_at_level`): the median width the method's intervals
  would have if each were scaled about its midpoint by the one factor that makes them cover
  the nominal share of test patients (a recalibration only the truth allows). Two methods'
  widths compare their sharpness only at equal coverage: a narrower interval that covers
  fewer patients is not the sharper one.
- **heterogeneity rejection**: `heterogeneity_p < decision.alpha` (ours only; power on
  `stamp`, type I error on `stamp-null`). Candidate learners' unadjusted BLP p-values and
  an ACAT (Cauchy) combination of them are kept for diagnosis (`study.run`).
- **peer recommendations**: the same rule as ours without the evidence gate
  (`study.peers.peer_recommendations`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import LIBRARY

# The simulator's scenarios and the pipeline each ships with: the truth file describes
# that pipeline's outcome, and a scenario alone runs its shipped pipeline.
DEFAULT_PIPELINES = {
    "stamp": "pipelines/stamp.yaml",
    "stamp-null": "pipelines/stamp-null.yaml",
    "optimum": "pipelines/optimum.yaml",
    # the scenario library's families share the STAMP cohort and its outcome columns
    **{name: "pipelines/stamp.yaml" for name in LIBRARY},
}
GROUPS = 20  # twentiles of predicted benefit for the projected-benefit coverage


@dataclass(frozen=True)
class Truth:
    """Each test patient's true expected outcome (higher is better) under each arm."""

    control: np.ndarray
    treatment: np.ndarray

    @property
    def benefit(self) -> np.ndarray:
        return self.treatment - self.control

    @property
    def oracle_value(self) -> float:
        return float(np.maximum(self.treatment, self.control).mean())

    @property
    def best_arm_value(self) -> float:
        return float(max(self.treatment.mean(), self.control.mean()))

    def value(self, treat: np.ndarray) -> float:
        return float(np.where(treat, self.treatment, self.control).mean())


def known_scenario(scenario: str) -> str:
    """The scenario itself, if the simulator has it (else a ValueError naming the choices)."""
    if scenario not in DEFAULT_PIPELINES:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {sorted(DEFAULT_PIPELINES)}")
    return scenario


def truth_of(truth: pd.DataFrame, pipeline: Pipeline, scenario: str) -> Truth:
    """The simulator's truth on the pipeline's outcome scale.

    The truth file describes the scenario's shipped outcome (its follow-up column and
    responder definition); a pipeline asking for another outcome cannot be scored."""
    shipped = load_pipeline(DEFAULT_PIPELINES[known_scenario(scenario)]).outcome
    out = pipeline.outcome
    if (out.baseline, out.followup) != (shipped.baseline, shipped.followup):
        raise ValueError(
            f"the simulator's truth for {scenario!r} is about {shipped.baseline} -> "
            f"{shipped.followup}; the pipeline's outcome ({out.baseline} -> {out.followup}) "
            "cannot be scored against it"
        )
    arm = pipeline.cohort.arm
    if out.kind == "binary":
        if out.responder != shipped.responder:
            raise ValueError(
                f"the truth's responder definition is {shipped.responder}; the pipeline's "
                f"({out.responder}) cannot be scored against it"
            )
        return Truth(
            truth[f"p_response_{arm.control}"].to_numpy(dtype=float),
            truth[f"p_response_{arm.treatment}"].to_numpy(dtype=float),
        )
    # improvement = baseline - follow-up, so E[improvement] = -E[follow-up - baseline]
    return Truth(
        -truth[f"expected_change_{arm.control}"].to_numpy(dtype=float),
        -truth[f"expected_change_{arm.treatment}"].to_numpy(dtype=float),
    )


@dataclass
class Prediction:
    """One method's answer for the test patients, and how it resolves `either`."""

    benefit: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    recommend: np.ndarray  # +1 treatment, -1 control, 0 either
    ate: float  # the method's own average-effect estimate (resolves `either` w/o preference)
    # the better bet for a patient without a preference: +1 treatment, -1 control, 0 none
    # (ours: the model's own `better_bet`, offered only where its rule offers it; peers:
    # the sign of their benefit, `sign_bet`); None: the sign of the benefit
    bet: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def sign_bet(benefit: np.ndarray) -> np.ndarray:
    """The bet of a method without a bet rule of its own: the arm its point estimate
    favours (0 where the estimate is exactly 0)."""
    return np.sign(benefit).astype(int)


def pehe(benefit: np.ndarray, truth: Truth) -> float:
    """Root mean squared error of a predicted benefit against the true benefit."""
    return float(np.sqrt(np.mean((benefit - truth.benefit) ** 2)))


def projected_target(benefit: np.ndarray, tau: np.ndarray, groups: int = GROUPS) -> np.ndarray:
    """Mean true benefit of the patients in the same quantile group of predicted benefit
    (patients with identical predictions always share a group)."""
    edges = np.unique(np.quantile(benefit, np.linspace(0, 1, groups + 1)))
    idx = np.searchsorted(edges[1:-1], benefit, side="right")
    sums = np.bincount(idx, weights=tau, minlength=len(edges))
    counts = np.bincount(idx, minlength=len(edges))
    return np.asarray((sums / np.maximum(counts, 1))[idx], dtype=float)


def width_at_level(lower: np.ndarray, upper: np.ndarray, tau: np.ndarray, level: float) -> float:
    """Median width of the intervals scaled about their midpoints by the one factor that
    makes them cover `level` of `tau` (module docstring)."""
    half = (upper - lower) / 2
    miss = np.abs(tau - (upper + lower) / 2)
    # the factor each patient needs to be covered (a zero-width interval: only if exact)
    need = np.divide(miss, half, out=np.where(miss > 0, np.inf, 0.0), where=half > 0)
    factor = float(np.quantile(need, level, method="higher"))
    return float(np.median(upper - lower)) * factor if np.isfinite(factor) else math.inf


def score(
    pred: Prediction,
    truth: Truth,
    preference: np.ndarray,
    treatment: str,
    control: str,
    level: float = 0.9,
) -> dict[str, float]:
    """Every per-replication metric of one method against the truth (module docstring);
    `level` is the intervals' nominal level."""
    tau = truth.benefit
    b = pred.benefit
    m: dict[str, float] = {
        "pehe": pehe(b, truth),
        "sd_true": float(tau.std()),
        "bias": float(b.mean() - tau.mean()),
        "sd_pred": float(b.std()),
        # a flat prediction (slope clipped to 0) varies only by rounding: no correlation
        "corr": float(np.corrcoef(b, tau)[0, 1])
        if b.std() > 1e-9 and tau.std() > 1e-9
        else math.nan,
    }
    if pred.lower is not None and pred.upper is not None:
        inside = (pred.lower <= tau) & (tau <= pred.upper)
        target = projected_target(b, tau)
        m["coverage"] = float(inside.mean())
        m["group_coverage"] = float(((pred.lower <= target) & (target <= pred.upper)).mean())
        m["width"] = float(np.median(pred.upper - pred.lower))
        m["width_at_level"] = width_at_level(pred.lower, pred.upper, tau, level)
    else:
        m["coverage"] = m["group_coverage"] = m["width"] = m["width_at_level"] = math.nan
    rec = pred.recommend
    active = rec != 0
    m["share_either"] = float(1 - active.mean())
    m["accuracy"] = float((rec[active] * tau[active] > 0).mean()) if active.any() else math.nan
    avg_arm = pred.ate > 0
    stated = np.where(
        preference == treatment, True, np.where(preference == control, False, avg_arm)
    )
    oracle = truth.oracle_value
    best = truth.best_arm_value
    value = truth.value(np.where(active, rec > 0, stated))
    m["value"] = value
    m["regret"] = oracle - value
    m["gain"] = value - best
    m["regret_avgarm"] = oracle - truth.value(np.where(active, rec > 0, avg_arm))
    m["regret_plugin"] = oracle - truth.value(b > 0)
    # the decision's value as a clinic would use it: `either` follows the stated preference,
    # and a patient without one gets either arm at random; the share of the oracle's gain
    # over the better single arm that this captures
    tr, ct = truth.treatment, truth.control
    follow = np.where(
        preference == treatment, tr, np.where(preference == control, ct, (tr + ct) / 2)
    )
    decided = np.where(active, np.where(rec > 0, tr, ct), follow)
    stated_arm = np.where(preference == treatment, 1, np.where(preference == control, -1, 0))
    open_choice = ~active & (stated_arm == 0)

    def taking(bet: np.ndarray) -> np.ndarray:
        """`decided`, with the patients without a preference given `bet` (0: at random)."""
        arm = np.where(bet > 0, tr, np.where(bet < 0, ct, (tr + ct) / 2))
        return np.where(open_choice, arm, decided)

    bet = sign_bet(b) if pred.bet is None else pred.bet
    m["share_bet"] = float((open_choice & (bet != 0)).mean())
    for key, outcome in (
        ("gain_capture", decided),
        ("gain_capture_bet", taking(bet)),
        ("gain_capture_sign", taking(sign_bet(b))),
    ):
        m[key] = (
            float((outcome.mean() - best) / (oracle - best)) if oracle - best > 1e-12 else math.nan
        )
    against = active & (stated_arm != 0) & (rec != stated_arm)
    m["share_against_preference"] = float(against.mean())
    m["accuracy_against_preference"] = (
        float((rec[against] * tau[against] > 0).mean()) if against.any() else math.nan
    )
    m["value_oracle"] = oracle
    m["value_best_arm"] = best
    m["regret_best_arm"] = oracle - best
    m["regret_preference"] = oracle - truth.value(
        np.where(
            preference == treatment,
            True,
            np.where(preference == control, False, truth.treatment.mean() > truth.control.mean()),
        )
    )
    return m
