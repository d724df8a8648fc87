"""Synthetic two-arm trials with known potential outcomes (docs/simulator.md).

Everything here is SYNTHETIC. The cohorts are shaped after published trial summaries so
that the pipelines, learners and reports can be exercised end to end, and every patient's
true per-arm quantities are known, so a learner can be checked against the truth.

Scenarios (``SCENARIOS``)
-------------------------
``stamp``
    Mindfulness-based therapy (``MBT``) vs cognitive behavioural therapy (``CBT``) for
    opioid-treated chronic low back pain, calibrated to STAMP (Zgierska et al., JAMA Netw
    Open 2025): N = 770, 1:1, 3 sites, follow-up at 3, 6, 9 and 12 months. The individual
    effect is driven by four documented moderators (preference match, opioid dose, PHQ-8
    depression, FFMQ non-judging); see ``docs/simulator.md``.
``stamp-null``
    The same cohort generator (same covariates, allocation and dropout for the same seed),
    but both arms have identical potential outcomes for every patient: nothing to
    personalize.
``stamp-<family>``
    The STAMP cohort with another shape of truth from the scenario library
    (``personalize.data.families``; e.g. ``stamp-threshold``, ``stamp-u-shape``): the same
    covariates, allocation and dropout for the same seed, another moderation, prognosis or
    noise. ``stamp`` is the ``linear`` family and ``stamp-null`` the ``null`` one.
``optimum``
    Mindfulness group medical visit (``group_visit``) vs ``usual_care``, shaped after OPTIMUM
    (Morone et al., JAMA Intern Med 2026): N = 451, PEG outcome, low adherence, different
    columns and labels. Modest heterogeneity (PHQ-9, pain self-efficacy, opioid use).

Outcome model (the same shape for every scenario and visit)
-----------------------------------------------------------
For a patient with covariates x, baseline score b and arm a::

    followup = clip(b + mu_a(x) + sigma * eps, lo, hi),  eps ~ Normal(0, 1)

``mu_a(x)`` is the arm's mean change on the unclipped scale, ``(lo, hi)`` the instrument's
range. One ``eps`` per patient and visit is shared by both arms' potential outcomes (only
each arm's marginal distribution matters for the truth). Visits are linked by an AR(1)
correlation of ``eps`` (0.6 between consecutive visits), which leaves every visit's marginal
unchanged.

Truth frame (``SimulatedTrial.truth``)
--------------------------------------
One row per patient, columns, in this order::

    <id column>, p_response_<treatment>, p_response_<control>,
    expected_change_<treatment>, expected_change_<control>

e.g. ``participant_id, p_response_MBT, p_response_CBT, expected_change_MBT,
expected_change_CBT`` for ``stamp`` and ``stamp-null`` and ``patient_id,
p_response_group_visit, p_response_usual_care, expected_change_group_visit,
expected_change_usual_care`` for ``optimum``.

* ``p_response_<arm>`` is the exact probability that the patient is a responder under that
  arm, as defined by the scenario's shipped pipeline file: ``stamp``/``stamp-null``:
  ``bpi_severity_m6 <= 0.7 * bpi_severity`` (>= 30% reduction at 6 months); ``optimum``:
  ``peg_m6 <= peg - 1`` (>= 1 point at 6 months). With a threshold ``t`` in ``[lo, hi)``
  this is ``Phi((t - b - mu_a(x)) / sigma)`` (clipping at ``lo`` counts as response, at
  ``hi`` as non-response, both consistent with the unclipped event).
* ``expected_change_<arm>`` is ``E[followup - baseline]`` of the same follow-up column
  (negative = improvement), from the censored-normal mean of the clipped outcome.

The truth is computed from the baseline value as stored in the cohort (rounded to the
instrument's precision); follow-up values are left unrounded so the truth stays exact.

Missing outcomes are missing at random given baseline covariates and arm (never the
outcome itself), so inverse-probability-of-censoring weights fitted on baseline + arm are
valid. Dropout is monotone: a patient missing at one visit is missing at every later one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import expit, ndtr, ndtri

from personalize.data.families import FAMILIES, HIDDEN, NORMAL, Family, Noise

__all__ = [
    "SCENARIOS",
    "Scenario",
    "SimulatedTrial",
    "clipped_normal_cdf",
    "clipped_normal_mean",
    "get_scenario",
    "potential_outcomes",
    "simulate",
    "simulate_full",
    "truth_for",
]

# the library's other families on the STAMP cohort, by scenario name
LIBRARY: dict[str, str] = {
    f"stamp-{name}": name for name in FAMILIES if name not in ("linear", "null")
}
SCENARIOS: tuple[str, ...] = ("stamp", "stamp-null", "optimum", *LIBRARY)


FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

AR_RHO = 0.6  # correlation of the outcome noise between consecutive visits


@dataclass(frozen=True)
class SimulatedTrial:
    """A synthetic trial: what the trial records, and what only the simulator knows."""

    cohort: pd.DataFrame  # one row per patient, what a trial would record
    truth: pd.DataFrame  # per patient id, the true potential-outcome quantities
    scenario: str


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _phi(z: FloatArray) -> FloatArray:
    return np.asarray(np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi), dtype=np.float64)


def _truncated_normal(z: FloatArray, mean: float, sd: float, lo: float, hi: float) -> FloatArray:
    """Map standard-normal latents to Normal(mean, sd) truncated to [lo, hi], by quantile.

    Monotone in ``z``, so correlations between latents carry over.
    """
    a = float(ndtr((lo - mean) / sd))
    b = float(ndtr((hi - mean) / sd))
    u = np.clip(a + (b - a) * ndtr(z), 1e-15, 1.0 - 1e-15)
    return np.clip(mean + sd * ndtri(u), lo, hi)


def _round_to(x: FloatArray, step: float) -> FloatArray:
    return np.asarray(np.round(x / step) * step, dtype=np.float64)


def _latents(
    rng: np.random.Generator, n: int, loadings: dict[str, tuple[float, ...]], n_factors: int
) -> dict[str, FloatArray]:
    """Unit-variance latents ``z = L @ F + sqrt(1 - |L|^2) * u`` (a factor model: always PD)."""
    factors = rng.standard_normal((n_factors, n))
    out: dict[str, FloatArray] = {}
    for name, load in loadings.items():
        vec = np.asarray(load, dtype=np.float64)
        unique = math.sqrt(1.0 - float(vec @ vec))
        out[name] = vec @ factors + unique * rng.standard_normal(n)
    return out


def _ar_noise(rng: np.random.Generator, n: int, visits: int) -> FloatArray:
    """Standard-normal noise per visit (rows), AR(1)-correlated across visits."""
    eps = np.empty((visits, n))
    eps[0] = rng.standard_normal(n)
    scale = math.sqrt(1.0 - AR_RHO**2)
    for v in range(1, visits):
        eps[v] = AR_RHO * eps[v - 1] + scale * rng.standard_normal(n)
    return eps


def _allocate(
    rng: np.random.Generator, n: int, treatment: str, control: str
) -> npt.NDArray[np.str_]:
    """Exactly balanced 1:1 allocation (the extra patient of an odd n goes to treatment)."""
    labels = np.array([treatment] * ((n + 1) // 2) + [control] * (n // 2))
    return np.asarray(rng.permutation(labels))


def _ids(prefix: str, n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _choice(rng: np.random.Generator, probs: FloatArray, labels: list[str]) -> list[str]:
    """One categorical draw per row of ``probs`` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))
    idx = np.minimum((u[:, None] > cum).sum(axis=1), len(labels) - 1)
    return [labels[i] for i in idx]


def clipped_normal_mean(m: FloatArray, sigma: float, lo: float, hi: float) -> FloatArray:
    """E[clip(Y, lo, hi)] for Y ~ Normal(m, sigma^2) (censored-normal mean)."""
    alpha = (lo - m) / sigma
    beta = (hi - m) / sigma
    pa, pb = ndtr(alpha), ndtr(beta)
    return np.asarray(
        lo * pa + hi * (1.0 - pb) + m * (pb - pa) + sigma * (_phi(alpha) - _phi(beta)),
        dtype=np.float64,
    )


def clipped_normal_cdf(
    m: FloatArray, sigma: float, threshold: FloatArray, lo: float, hi: float
) -> FloatArray:
    """P(clip(Y, lo, hi) <= t) for Y ~ Normal(m, sigma^2)."""
    p = ndtr((threshold - m) / sigma)
    p = np.where(threshold < lo, 0.0, p)
    return np.asarray(np.where(threshold >= hi, 1.0, p), dtype=np.float64)


# --------------------------------------------------------------------------------------
# Scenario description
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """How one scenario generates its cohort, outcomes and dropout, and what its shipped
    pipeline calls the outcome (the truth is defined for that outcome)."""

    name: str
    id_column: str
    arm_column: str
    treatment: str
    control: str
    default_n: int
    outcome_baseline: str  # baseline column of the shipped pipeline's outcome
    primary_visit: str  # visit suffix of the shipped pipeline's follow-up
    sigma: float  # outcome noise SD on the change scale
    lo: float  # instrument range
    hi: float
    visits: tuple[str, ...]
    threshold: Callable[[FloatArray], FloatArray]  # responder iff followup <= threshold(b)
    baseline: Callable[[np.random.Generator, int], pd.DataFrame]
    mean_change: Callable[[pd.DataFrame, str, str], FloatArray]  # (frame, arm, visit)
    outcomes: Callable[
        [pd.DataFrame, np.random.Generator], tuple[dict[str, pd.DataFrame], pd.DataFrame]
    ]
    missing: Callable[[pd.DataFrame, np.random.Generator], dict[str, BoolArray]]
    visit_columns: Callable[[str], list[str]]  # all outcome columns of one visit
    noise: Noise = NORMAL  # the outcome noise's distribution (SD 1 before `sigma`)
    spread: Callable[[pd.DataFrame], FloatArray] | None = None  # per-patient SD multiplier
    hidden: bool = False  # a modifier the trial does not record (column `HIDDEN`)

    def noise_sd(self, frame: pd.DataFrame) -> FloatArray:
        sd = np.full(len(frame), self.sigma)
        return sd if self.spread is None else sd * self.spread(frame)

    @property
    def arms(self) -> tuple[str, str]:
        return (self.treatment, self.control)

    @property
    def followup(self) -> str:
        return f"{self.outcome_baseline}_{self.primary_visit}"


def _paired_outcome(
    sc: Scenario, frame: pd.DataFrame, eps: FloatArray
) -> dict[str, dict[str, FloatArray]]:
    """Per arm and visit: the unclipped change and the clipped follow-up of the main score."""
    b = frame[sc.outcome_baseline].to_numpy(dtype=np.float64)
    sd = sc.noise_sd(frame)
    noise = [sc.noise.from_normal(e) for e in eps]
    out: dict[str, dict[str, FloatArray]] = {}
    for arm in sc.arms:
        per: dict[str, FloatArray] = {}
        for i, visit in enumerate(sc.visits):
            change = sc.mean_change(frame, arm, visit) + sd * noise[i]
            per[f"change_{visit}"] = change
            per[visit] = np.clip(b + change, sc.lo, sc.hi)
        out[arm] = per
    return out


QUADRATURE = 2000  # midpoint quantiles of the noise for a non-normal truth's expectation


def _arm_truth(sc: Scenario, frame: pd.DataFrame, arm: str) -> tuple[FloatArray, FloatArray]:
    """(P(responder), E[follow-up - baseline]) under one arm; exact for normal noise, and
    for other noise the probability exact and the clipped mean by quadrature (error below
    1e-4 points)."""
    b = frame[sc.outcome_baseline].to_numpy(dtype=np.float64)
    thr = sc.threshold(b)
    m = b + sc.mean_change(frame, arm, sc.primary_visit)
    if sc.noise.dist is None and sc.spread is None:
        p = clipped_normal_cdf(m, sc.sigma, thr, sc.lo, sc.hi)
        return p, clipped_normal_mean(m, sc.sigma, sc.lo, sc.hi) - b
    sd = sc.noise_sd(frame)
    p = sc.noise.cdf((thr - m) / sd)
    p = np.where(thr >= sc.hi, 1.0, np.where(thr < sc.lo, 0.0, p))
    q = sc.noise.quantiles(QUADRATURE)
    mean = np.empty(len(m))
    for start in range(0, len(m), 2048):  # bounded memory: rows x quantiles per block
        part = slice(start, start + 2048)
        values = m[part, None] + sd[part, None] * q[None, :]
        mean[part] = np.clip(values, sc.lo, sc.hi).mean(axis=1)
    return np.asarray(p, dtype=np.float64), mean - b


def _truth(sc: Scenario, frame: pd.DataFrame) -> pd.DataFrame:
    """Each patient's true quantities; with an unmeasured modifier, their expectation over
    it given what the trial records (the best any model of recorded covariates can do)."""
    cols: dict[str, object] = {sc.id_column: frame[sc.id_column].to_numpy()}
    frames = [frame.assign(**{HIDDEN: v}) for v in (0.0, 1.0)] if sc.hidden else [frame]
    per = {arm: [_arm_truth(sc, f, arm) for f in frames] for arm in sc.arms}
    for arm in sc.arms:
        cols[f"p_response_{arm}"] = np.mean([p for p, _ in per[arm]], axis=0)
    for arm in sc.arms:
        cols[f"expected_change_{arm}"] = np.mean([c for _, c in per[arm]], axis=0)
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------------------
# STAMP: MBT vs CBT in opioid-treated chronic low back pain
# --------------------------------------------------------------------------------------

_STAMP_VISITS = ("m3", "m6", "m9", "m12")
_STAMP_SITES = ["S1", "S2", "S3"]
_STAMP_SITE_P = (0.40, 0.33, 0.27)

# Marginals (latent Normal parameters chosen so that the truncated, rounded variables hit the
# published mean and SD; see docs/simulator.md).
_AGE = (57.85, 11.47, 21.0, 90.0)
_BPI = (6.094, 1.735, 2.25, 10.0)  # -> mean 6.1, SD 1.6
_ODI = (45.5, 15.6, 20.0, 100.0)  # -> mean 47.2, SD 14.0
_MME_LOG = (math.log(54.0), 0.85)  # lognormal truncated to [15, 1000]: ~30% >= 90 MME

# Intercepts of the BPI mean change per arm and visit (tuned on 400,000 simulated patients so
# the population-average expected change, clipping included, matches the targets below).
_STAMP_TARGET = {
    "MBT": {"m3": -0.30, "m6": -0.35, "m9": -0.40, "m12": -0.45},
    "CBT": {"m3": -0.45, "m6": -0.57, "m9": -0.58, "m12": -0.59},
    "null": {"m3": -0.375, "m6": -0.46, "m9": -0.49, "m12": -0.52},
}
_STAMP_INTERCEPT = {
    "MBT": {"m3": -0.2650, "m6": -0.3093, "m9": -0.3607, "m12": -0.4155},
    "CBT": {"m3": -0.4707, "m6": -0.5998, "m9": -0.6101, "m12": -0.6173},
    "null": {"m3": -0.3689, "m6": -0.4560, "m9": -0.4868, "m12": -0.5175},
}
_STAMP_EFFECT_SCALE = {"m3": 0.8, "m6": 1.0, "m9": 1.0, "m12": 0.9}
_STAMP_SIGMA = 1.7
_STAMP_MISSING_ALPHA = {"m3": -1.4553, "m6": -1.0026, "m9": -0.8510, "m12": -0.7535}

# Moderators (on the change scale; negative favours MBT), applied half to each arm: the
# preference match here, the family's continuous moderation (the linear family's:
# `families.linear_moderation`) in `_stamp_mean_change`.
_PREF_MATCH = 0.36  # each arm: -0.36 if it is the preferred arm, +0.36 if the other one is


def _stamp_baseline(rng: np.random.Generator, n: int) -> pd.DataFrame:
    # latent factors: 0 = pain/disability, 1 = psychological distress, 2 = age
    z = _latents(
        rng,
        n,
        {
            "age": (0.0, 0.0, 1.0),
            "bpi": (0.55, 0.15, 0.0),
            "interference": (0.55, 0.45, 0.0),
            "odi": (0.60, 0.30, 0.0),
            "mme": (0.20, 0.10, 0.0),
            "duration": (0.10, 0.0, 0.35),
            "phq8": (0.15, 0.75, -0.10),
            "gad7": (0.05, 0.70, -0.15),
            "pcs": (0.35, 0.60, 0.0),
            "nonjudging": (0.0, -0.55, 0.05),
            "expectancy": (0.0, -0.10, 0.0),
            "mcs": (0.0, -0.75, 0.10),
            "pcs12": (-0.65, -0.10, -0.15),
        },
        n_factors=2 + 1,
    )
    age = np.round(_truncated_normal(z["age"], *_AGE))
    female = rng.random(n) < 0.564
    bpi = _round_to(_truncated_normal(z["bpi"], *_BPI), 0.25)
    interference = _round_to(np.clip(6.3 + 2.1 * z["interference"], 0.0, 10.0), 0.1)
    odi = np.clip(_round_to(_truncated_normal(z["odi"], *_ODI), 2.0), 20.0, 100.0)
    log_mme = _truncated_normal(
        z["mme"], _MME_LOG[0], _MME_LOG[1], math.log(15.0), math.log(1000.0)
    )
    mme = np.maximum(_round_to(np.exp(log_mme), 0.1), 15.0)
    duration = np.exp(math.log(11.0) + 0.75 * z["duration"])
    duration = _round_to(np.clip(duration, 0.3, np.maximum(age - 15.0, 0.3)), 0.1)
    phq8 = np.round(np.clip(10.5 + 5.8 * z["phq8"], 0.0, 24.0))
    gad7 = np.round(np.clip(8.0 + 5.4 * z["gad7"], 0.0, 21.0))
    pcs = np.round(np.clip(24.0 + 12.0 * z["pcs"], 0.0, 52.0))
    nonjudging = np.round(np.clip(9.5 + 2.8 * z["nonjudging"], 3.0, 15.0))
    expectancy = np.round(np.clip(6.5 + 2.0 * z["expectancy"], 0.0, 10.0))
    mcs = _round_to(np.clip(42.0 + 11.0 * z["mcs"], 5.0, 75.0), 0.1)
    pcs12 = _round_to(np.clip(30.0 + 8.0 * z["pcs12"], 5.0, 65.0), 0.1)
    # stated preference: mindful (non-judging) and hopeful patients lean to MBT
    lin_mbt = -0.45 + 0.20 * (nonjudging - 9.5) + 0.12 * (expectancy - 6.5)
    lin_cbt = -0.75 - 0.12 * (nonjudging - 9.5)
    expo = np.exp(np.stack([lin_mbt, lin_cbt, np.zeros(n)], axis=1))
    preference = _choice(rng, expo / expo.sum(axis=1, keepdims=True), ["MBT", "CBT", "none"])
    site = _choice(rng, np.tile(np.array(_STAMP_SITE_P), (n, 1)), _STAMP_SITES)
    # enrolled before March 2020: in person; after: remote
    delivery = np.where(rng.random(n) < 0.55, "in_person", "remote")
    arm = _allocate(rng, n, "MBT", "CBT")
    return pd.DataFrame(
        {
            "participant_id": _ids("P", n),
            "site": site,
            "arm": arm,
            "delivery": delivery,
            "age": age.astype(np.int64),
            "sex": np.where(female, "female", "male"),
            "bpi_severity": bpi,
            "bpi_interference": interference,
            "odi": odi.astype(np.int64),
            "mme": mme,
            "pain_duration_years": duration,
            "phq8": phq8.astype(np.int64),
            "gad7": gad7.astype(np.int64),
            "pcs": pcs.astype(np.int64),
            "ffmq_nonjudging": nonjudging.astype(np.int64),
            "expectancy": expectancy.astype(np.int64),
            "treatment_preference": preference,
            "sf12_mcs": mcs,
            "sf12_pcs": pcs12,
        }
    )


def _num(frame: pd.DataFrame, column: str) -> FloatArray:
    return frame[column].to_numpy(dtype=np.float64)


def _stamp_prognostic(frame: pd.DataFrame) -> FloatArray:
    """Shifts the BPI change equally under both arms (prognostic, not a moderator)."""
    return (
        -0.30 * (_num(frame, "bpi_severity") - 6.1)
        - 0.10 * (_num(frame, "expectancy") - 6.5)
        + 0.04 * (_num(frame, "gad7") - 8.0)
        + 0.015 * (_num(frame, "pcs") - 24.0)
        + 0.15 * np.log(_num(frame, "pain_duration_years") / 11.0)
    )


def _stamp_mean_change(family: Family) -> Callable[[pd.DataFrame, str, str], FloatArray]:
    """The arm's mean BPI change: the STAMP prognosis (plus the family's), and the family's
    moderation (the linear family: tau(x) from the continuous moderators, negative favours
    MBT) with the preference match, applied half to each arm."""
    moderation = family.moderation

    def mean_change(frame: pd.DataFrame, arm: str, visit: str) -> FloatArray:
        base = _stamp_prognostic(frame)
        if family.prognosis is not None:
            base = base + family.prognosis(frame)
        if moderation is None:
            return _STAMP_INTERCEPT["null"][visit] + base
        pref = frame["treatment_preference"].to_numpy(dtype=object)
        other = "CBT" if arm == "MBT" else "MBT"
        match = np.where(pref == arm, -_PREF_MATCH, np.where(pref == other, _PREF_MATCH, 0.0))
        half = 0.5 if arm == "MBT" else -0.5
        scale = _STAMP_EFFECT_SCALE[visit]
        return _STAMP_INTERCEPT[arm][visit] + base + scale * (match + half * moderation(frame))

    return mean_change


def _stamp_outcomes(
    name: str,
) -> Callable[[pd.DataFrame, np.random.Generator], tuple[dict[str, pd.DataFrame], pd.DataFrame]]:
    def outcomes(
        frame: pd.DataFrame, rng: np.random.Generator
    ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
        sc = _SCENARIO_TABLE[name]
        n = len(frame)
        nv = len(_STAMP_VISITS)
        eps = _ar_noise(rng, n, nv)
        nu = _ar_noise(rng, n, nv)
        xi = _ar_noise(rng, n, nv)
        stop = rng.random(n)  # opioid discontinuation (shared by both arms)
        main = _paired_outcome(sc, frame, eps)
        odi = _num(frame, "odi")
        mme = _num(frame, "mme")
        per_arm: dict[str, pd.DataFrame] = {}
        for arm in sc.arms:
            cols: dict[str, FloatArray] = {}
            for visit in _STAMP_VISITS:
                cols[f"bpi_severity_{visit}"] = main[arm][visit]
            for i, visit in enumerate(_STAMP_VISITS):
                # ODI follows the BPI change (3 ODI points per BPI point) plus its own noise
                odi_change = (
                    3.0 * main[arm][f"change_{visit}"] - 2.5 - 0.15 * (odi - 47.2) + 7.0 * nu[i]
                )
                cols[f"odi_{visit}"] = np.clip(odi + odi_change, 0.0, 100.0)
            for i, visit in enumerate(_STAMP_VISITS):
                # MME: slow taper (faster from higher doses), 1.5% per quarter stop altogether;
                # the same under both arms (opioid dose is not an effect of the arm here)
                quarters = i + 1.0
                ratio = np.exp(
                    -0.025 * quarters
                    - 0.01 * quarters * np.log(mme / 60.0)
                    + 0.12 * math.sqrt(quarters) * xi[i]
                )
                off = stop < 0.015 * quarters
                cols[f"mme_{visit}"] = np.where(off, 0.0, mme * ratio)
            per_arm[arm] = pd.DataFrame(cols, index=frame.index)
        return per_arm, pd.DataFrame(index=frame.index)

    return outcomes


def _stamp_dropout_eta(frame: pd.DataFrame) -> FloatArray:
    """Linear predictor of dropout (logit scale, before the visit's intercept)."""
    pref = frame["treatment_preference"].to_numpy(dtype=object)
    arm = frame["arm"].to_numpy(dtype=object)
    mismatch = (pref != "none") & (pref != arm)
    site_effect = frame["site"].map({"S1": 0.0, "S2": 0.25, "S3": -0.15}).to_numpy(dtype=np.float64)
    eta = (
        -0.03 * (_num(frame, "age") - 57.8)
        + 0.06 * (_num(frame, "phq8") - 10.5)
        + 0.40 * np.log(_num(frame, "mme") / 60.0)
        + site_effect
        - 0.30 * (frame["delivery"].to_numpy(dtype=object) == "remote")
        + 0.40 * mismatch
        + 0.10 * (arm == "MBT")
    )
    return np.asarray(eta, dtype=np.float64)


def _stamp_missing(frame: pd.DataFrame, rng: np.random.Generator) -> dict[str, BoolArray]:
    """Monotone dropout, missing at random given baseline covariates and arm."""
    eta = _stamp_dropout_eta(frame)
    u = rng.random(len(frame))
    return {v: u < expit(_STAMP_MISSING_ALPHA[v] + eta) for v in _STAMP_VISITS}


# --------------------------------------------------------------------------------------
# OPTIMUM: mindfulness group medical visit vs usual care (PEG)
# --------------------------------------------------------------------------------------

_OPT_VISITS = ("w8", "m6", "m12")
_OPT_SITES = ["MA", "PA", "NC"]
_OPT_RACE = ["black", "hispanic", "white", "other"]
_OPT_INCOME = ["lt_25k", "25k_50k", "50k_100k", "ge_100k"]
_OPT_AGE = (52.1, 14.7, 18.0, 90.0)
_OPT_PEG = (6.2, 1.7, 3.0, 10.0)
_OPT_SIGMA = 1.9
_OPT_TARGET = {
    "group_visit": {"w8": -1.00, "m6": -1.20, "m12": -1.15},
    "usual_care": {"w8": -0.30, "m6": -0.45, "m12": -0.50},
}
_OPT_INTERCEPT = {
    "group_visit": {"w8": -0.9661, "m6": -1.1700, "m12": -1.1191},
    "usual_care": {"w8": -0.3323, "m6": -0.4876, "m12": -0.5393},
}
_OPT_MISSING_ALPHA = {"w8": -1.6320, "m6": -1.2545, "m12": -0.9859}
# sessions attended (0..8) among group_visit patients: 45% attend >= 6
_OPT_SESSIONS_P = (0.15, 0.08, 0.08, 0.08, 0.08, 0.08, 0.12, 0.15, 0.18)
# moderators of the group-visit effect (change scale; negative favours group_visit)
_OPT_PHQ9_PER_POINT = -0.05
_OPT_PSEQ_PER_POINT = 0.02
_OPT_OPIOID = -0.35


def _optimum_baseline(rng: np.random.Generator, n: int) -> pd.DataFrame:
    # latent factors: 0 = pain, 1 = distress, 2 = age
    z = _latents(
        rng,
        n,
        {
            "age": (0.0, 0.0, 1.0),
            "peg": (0.60, 0.30, 0.0),
            "phq9": (0.20, 0.75, -0.10),
            "pseq": (-0.45, -0.45, 0.0),
            "bmi": (0.15, 0.10, 0.0),
            "duration": (0.10, 0.0, 0.35),
            "opioid": (0.35, 0.10, 0.10),
        },
        n_factors=3,
    )
    age = np.round(_truncated_normal(z["age"], *_OPT_AGE))
    female = rng.random(n) < 0.705
    peg = np.round(_round_to(_truncated_normal(z["peg"], *_OPT_PEG), 1.0 / 3.0), 2)
    phq9 = np.round(np.clip(9.0 + 6.0 * z["phq9"], 0.0, 27.0))
    pseq = np.round(np.clip(33.0 + 13.0 * z["pseq"], 0.0, 60.0))
    bmi = _round_to(np.clip(np.exp(math.log(31.3) + 0.21 * z["bmi"]), 16.0, 70.0), 0.1)
    duration = np.exp(math.log(8.0) + 0.8 * z["duration"])
    duration = _round_to(np.clip(duration, 0.3, np.maximum(age - 12.0, 0.3)), 0.1)
    opioid = z["opioid"] > ndtri(1.0 - 0.22)
    race = _choice(rng, np.tile(np.array([0.33, 0.10, 0.50, 0.07]), (n, 1)), _OPT_RACE)
    income = _choice(rng, np.tile(np.array([0.35, 0.25, 0.25, 0.15]), (n, 1)), _OPT_INCOME)
    site = _choice(rng, np.tile(np.array([0.40, 0.35, 0.25]), (n, 1)), _OPT_SITES)
    group = _allocate(rng, n, "group_visit", "usual_care")
    return pd.DataFrame(
        {
            "patient_id": _ids("OPT", n),
            "site": site,
            "group": group,
            "age": age.astype(np.int64),
            "sex": np.where(female, "female", "male"),
            "race_ethnicity": race,
            "income_band": income,
            "bmi": bmi,
            "phq9": phq9.astype(np.int64),
            "pseq": pseq.astype(np.int64),
            "opioid_use": np.where(opioid, "yes", "no"),
            "pain_duration_years": duration,
            "peg": peg,
        }
    )


def _optimum_mean_change(frame: pd.DataFrame, arm: str, visit: str) -> FloatArray:
    prognostic = (
        -0.30 * (_num(frame, "peg") - 6.2)
        + 0.02 * (_num(frame, "bmi") - 31.5)
        + 0.20 * (frame["income_band"].to_numpy(dtype=object) == "lt_25k")
        + 0.10 * np.log(_num(frame, "pain_duration_years") / 8.0)
    )
    if arm == "usual_care":
        return _OPT_INTERCEPT[arm][visit] + prognostic
    moderation = (
        _OPT_PHQ9_PER_POINT * (_num(frame, "phq9") - 9.0)
        + _OPT_PSEQ_PER_POINT * (_num(frame, "pseq") - 33.0)
        + _OPT_OPIOID * (frame["opioid_use"].to_numpy(dtype=object) == "yes")
    )
    return _OPT_INTERCEPT[arm][visit] + prognostic + moderation


def _optimum_outcomes(
    frame: pd.DataFrame, rng: np.random.Generator
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    sc = _SCENARIO_TABLE["optimum"]
    n = len(frame)
    eps = _ar_noise(rng, n, len(_OPT_VISITS))
    main = _paired_outcome(sc, frame, eps)
    per_arm = {
        arm: pd.DataFrame({f"peg_{v}": main[arm][v] for v in _OPT_VISITS}, index=frame.index)
        for arm in sc.arms
    }
    # Adherence (post-randomization): engaged patients attend more and also improve more
    # (correlated with the outcome noise), so per-protocol contrasts overstate the effect.
    engagement = (
        0.25 * (_num(frame, "age") - 52.1) / 14.7
        - 0.30 * ((frame["income_band"].to_numpy(dtype=object) == "lt_25k") - 0.35)
        - 0.02 * (_num(frame, "phq9") - 9.0)
        - 0.45 * eps[_OPT_VISITS.index("m6")]
        + 0.80 * rng.standard_normal(n)
    )
    engagement = engagement / math.sqrt(
        0.25**2 + 0.30**2 * 0.35 * 0.65 + 0.12**2 + 0.45**2 + 0.80**2
    )
    cuts = ndtri(np.cumsum(_OPT_SESSIONS_P)[:-1])
    sessions = np.searchsorted(cuts, engagement).astype(np.int64)
    treated = frame["group"].to_numpy(dtype=object) == "group_visit"
    extra = pd.DataFrame(
        {"sessions_attended": np.where(treated, sessions, 0).astype(np.int64)}, index=frame.index
    )
    return per_arm, extra


def _optimum_dropout_eta(frame: pd.DataFrame) -> FloatArray:
    """Linear predictor of dropout (logit scale, before the visit's intercept)."""
    eta = (
        -0.025 * (_num(frame, "age") - 52.1)
        + 0.04 * (_num(frame, "phq9") - 9.0)
        + 0.35 * (frame["income_band"].to_numpy(dtype=object) == "lt_25k")
        + 0.20 * (frame["race_ethnicity"].to_numpy(dtype=object) == "hispanic")
        - 0.20 * (frame["group"].to_numpy(dtype=object) == "group_visit")
    )
    return np.asarray(eta, dtype=np.float64)


def _optimum_missing(frame: pd.DataFrame, rng: np.random.Generator) -> dict[str, BoolArray]:
    """Monotone dropout, missing at random given baseline covariates and arm."""
    eta = _optimum_dropout_eta(frame)
    u = rng.random(len(frame))
    return {v: u < expit(_OPT_MISSING_ALPHA[v] + eta) for v in _OPT_VISITS}


# --------------------------------------------------------------------------------------
# Registry and public API
# --------------------------------------------------------------------------------------


def _stamp_visit_columns(visit: str) -> list[str]:
    return [f"bpi_severity_{visit}", f"odi_{visit}", f"mme_{visit}"]


def _optimum_visit_columns(visit: str) -> list[str]:
    return [f"peg_{visit}"]


def _make_stamp(name: str, family: Family) -> Scenario:
    return Scenario(
        name=name,
        id_column="participant_id",
        arm_column="arm",
        treatment="MBT",
        control="CBT",
        default_n=770,
        outcome_baseline="bpi_severity",
        primary_visit="m6",
        sigma=_STAMP_SIGMA,
        lo=0.0,
        hi=10.0,
        visits=_STAMP_VISITS,
        threshold=lambda b: 0.7 * b,
        baseline=_stamp_baseline,
        mean_change=_stamp_mean_change(family),
        outcomes=_stamp_outcomes(name),
        missing=_stamp_missing,
        visit_columns=_stamp_visit_columns,
        noise=family.noise,
        spread=family.spread,
        hidden=family.hidden,
    )


_SCENARIO_TABLE: dict[str, Scenario] = {
    "stamp": _make_stamp("stamp", FAMILIES["linear"]),
    "stamp-null": _make_stamp("stamp-null", FAMILIES["null"]),
    **{name: _make_stamp(name, FAMILIES[family]) for name, family in LIBRARY.items()},
    "optimum": Scenario(
        name="optimum",
        id_column="patient_id",
        arm_column="group",
        treatment="group_visit",
        control="usual_care",
        default_n=451,
        outcome_baseline="peg",
        primary_visit="m6",
        sigma=_OPT_SIGMA,
        lo=0.0,
        hi=10.0,
        visits=_OPT_VISITS,
        threshold=lambda b: b - 1.0,
        baseline=_optimum_baseline,
        mean_change=_optimum_mean_change,
        outcomes=_optimum_outcomes,
        missing=_optimum_missing,
        visit_columns=_optimum_visit_columns,
    ),
}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`; ValueError naming the valid ones otherwise."""
    try:
        return _SCENARIO_TABLE[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}"
        ) from None


def potential_outcomes(
    scenario: str, frame: pd.DataFrame, rng: np.random.Generator
) -> dict[str, pd.DataFrame]:
    """Complete (no dropout) follow-ups under each arm for the patients of ``frame``.

    Only baseline columns of ``frame`` are read. For tests and benchmarks.
    """
    sc = get_scenario(scenario)
    return sc.outcomes(frame.reset_index(drop=True), rng)[0]


def truth_for(scenario: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The truth frame for arbitrary baseline rows (e.g. counterfactually edited ones)."""
    return _truth(get_scenario(scenario), frame.reset_index(drop=True))


def simulate_full(
    scenario: str, n: int | None = None, seed: int = 0
) -> tuple[SimulatedTrial, pd.DataFrame]:
    """The trial as recorded, plus the same cohort with every follow-up observed (before
    dropout), so a test can check what the dropout model removed."""
    sc = get_scenario(scenario)
    if n is None:
        n = sc.default_n
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (both arms need patients), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    base = sc.baseline(rng, int(n))
    if sc.hidden:  # its own stream: the recorded cohort is the same as the other families'
        base[HIDDEN] = (np.random.default_rng([int(seed), 1]).random(int(n)) < 0.5).astype(float)
    per_arm, extra = sc.outcomes(base, rng)
    arm = base[sc.arm_column].to_numpy(dtype=object)
    observed_cols = list(per_arm[sc.treatment].columns)
    followups = pd.DataFrame(
        {
            col: np.where(
                arm == sc.treatment,
                per_arm[sc.treatment][col].to_numpy(),
                per_arm[sc.control][col].to_numpy(),
            )
            for col in observed_cols
        },
        index=base.index,
    )
    complete = pd.concat([base, extra, followups], axis=1).drop(columns=[HIDDEN], errors="ignore")
    missing = sc.missing(base, rng)
    recorded = complete.copy()
    for visit, mask in missing.items():
        for col in sc.visit_columns(visit):
            recorded[col] = recorded[col].where(~mask)
    truth = _truth(sc, base.drop(columns=[HIDDEN], errors="ignore"))
    return SimulatedTrial(cohort=recorded, truth=truth, scenario=sc.name), complete


def simulate(scenario: str, n: int | None = None, seed: int = 0) -> SimulatedTrial:
    """Simulate a SYNTHETIC randomized trial with known potential outcomes.

    ``n=None`` uses the trial's size (770 for stamp/stamp-null, 451 for optimum). The same
    ``(scenario, n, seed)`` always gives the same frames (and, via ``write_table``, the same
    bytes). For the same seed and n, ``stamp`` and ``stamp-null`` share covariates,
    allocation and dropout. Raises ``ValueError`` for an unknown scenario or a bad n/seed.
    """
    return simulate_full(scenario, n, seed)[0]
