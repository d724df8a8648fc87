"""Statistical evidence about treatment-effect heterogeneity, scored honestly.

Any flexible learner finds "heterogeneity" in noise. This module answers, from
out-of-fold (cross-fitted) quantities only, whether the predicted benefit carries real
signal, and scores candidate models and policies without looking at in-sample fit:

- :func:`dr_scores`: AIPW doubly-robust pseudo-outcomes with inverse probability of
  censoring weights (IPCW) for missing outcomes;
- :func:`blp_test`: the best-linear-predictor calibration test of grf's
  ``test_calibration`` plus the AIPW average effect;
- :func:`cauchy_combination`: one heterogeneity p-value from several candidate learners'
  correlated tests;
- :func:`rate`: the rank-weighted average treatment effect (AUTOC / Qini) with a
  bootstrap interval and the TOC curve for plotting;
- :func:`benefit_calibration_by_group`: predicted vs doubly-robust observed benefit by
  quantile group ("calibration for benefit");
- :func:`policy_value`: doubly-robust value of a treatment policy, for model selection and
  the recovery study;
- :func:`r_loss`: the weighted R-loss of Nie & Wager, an alternative selection criterion.

Conventions shared by every function: arrays are 1-D and aligned by patient; ``treated`` is 1
for the treatment arm and 0 for control; ``e`` is the known allocation probability of the
treatment arm (scalar or per patient); ``weight`` holds the IPCW weights, 0 for a patient
whose outcome is unobserved and ``observed / P(observed | baseline, arm)`` otherwise, and
``y`` may be NaN exactly where ``weight`` is 0. Benefit is treatment minus control, so a
positive value favours the treatment arm.

Pure numpy/scipy; no learners, no tracking. Results are frozen dataclasses with
``to_dict()`` (JSON-ready) and ``metrics()`` (flat scalar floats for experiment logging).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "BLPResult",
    "Coefficient",
    "GroupCalibration",
    "GroupRow",
    "PolicyValueResult",
    "RATEResult",
    "benefit_calibration_by_group",
    "blp_test",
    "cauchy_combination",
    "dr_scores",
    "policy_value",
    "r_loss",
    "rate",
]

FloatArray = NDArray[np.float64]

# Bootstrap replicates are processed in blocks of at most this many (replicate x patient)
# cells so memory stays bounded for large cohorts.
_BOOT_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------- validation


def _vector(
    name: str, x: ArrayLike, n: int | None = None, *, allow_nan: bool = False
) -> FloatArray:
    """A 1-D float copy of ``x``; errors name the argument so callers can find the bug."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be numeric ({exc})") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be 1-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: length {arr.shape[0]} does not match the {n} patients")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        what = "infinite" if allow_nan else "non-finite"
        raise ValueError(f"{name}: {int(bad.sum())} {what} value(s)")
    return arr.copy()


def _check_lengths(**arrays: ArrayLike) -> None:
    """All patient-aligned inputs have one length; name the odd ones out if not.

    The reference length is the most common one (first argument on a tie), so a single
    wrong array is the one named, whichever position it has.
    """
    lengths: dict[str, int] = {}
    for name, x in arrays.items():
        shape = np.shape(x)
        if len(shape) == 1:
            lengths[name] = shape[0]
    if len(set(lengths.values())) <= 1:
        return
    values = list(lengths.values())
    reference = max(values, key=lambda v: (values.count(v), -values.index(v)))
    odd = [f"{k} has {v}" for k, v in lengths.items() if v != reference]
    raise ValueError(
        f"{', '.join(k for k, v in lengths.items() if v != reference)}: length mismatch "
        f"({'; '.join(odd)}; expected {reference} like the other inputs)"
    )


def _arm(treated: ArrayLike, n: int | None = None) -> FloatArray:
    arr = _vector("treated", treated, n)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError("treated: treatment indicator must be 0 (control) or 1 (treatment)")
    return arr


def _propensity(e: ArrayLike, n: int) -> FloatArray:
    arr = np.asarray(e, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    arr = _vector("e", arr, n)
    if ((arr <= 0.0) | (arr >= 1.0)).any():
        raise ValueError("e: propensity must lie strictly between 0 and 1")
    return arr


def _weights(weight: ArrayLike, n: int) -> FloatArray:
    arr = _vector("weight", weight, n)
    if (arr < 0.0).any():
        raise ValueError("weight: IPCW weights must be >= 0 (0 marks an unobserved outcome)")
    if not (arr > 0.0).any():
        raise ValueError("weight: no observed outcome (all weights are 0)")
    return arr


def _outcome(y: ArrayLike, weight: FloatArray) -> FloatArray:
    arr = _vector("y", y, weight.shape[0], allow_nan=True)
    missing = np.isnan(arr) & (weight > 0.0)
    if missing.any():
        raise ValueError(
            f"y: {int(missing.sum())} NaN outcome(s) with weight > 0; "
            "unobserved outcomes must carry weight 0"
        )
    return arr


def _level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie strictly between 0 and 1, got {level}")
    return float(level)


def _n_boot(n_boot: int) -> int:
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot: need an integer >= 2, got {n_boot}")
    return int(n_boot)


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


def _boot_counts(rng: np.random.Generator, n: int, n_boot: int) -> list[FloatArray]:
    """Patient multiplicities of ``n_boot`` nonparametric bootstrap resamples, in blocks.

    A resample is represented by how many times each patient is drawn, so statistics can
    be recomputed as weighted sums without materializing resampled arrays.
    """
    per_block = max(1, _BOOT_BLOCK_CELLS // max(n, 1))
    blocks: list[FloatArray] = []
    done = 0
    p = np.full(n, 1.0 / n)
    while done < n_boot:
        size = min(per_block, n_boot - done)
        blocks.append(rng.multinomial(n, p, size=size).astype(np.float64))
        done += size
    return blocks


def _clean(value: Any) -> Any:
    """Make a value JSON-ready: numpy scalars/arrays to Python, tuples to lists."""
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


# --------------------------------------------------------------------------- DR scores


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
    _check_lengths(y=y, treated=treated, e=e, mu0=mu0, mu1=mu1, weight=weight)
    treated_ = _arm(treated)
    n = treated_.shape[0]
    weight_ = _weights(weight, n)
    y_ = _outcome(y, weight_)
    e_ = _propensity(e, n)
    mu0_ = _vector("mu0", mu0, n)
    mu1_ = _vector("mu1", mu1, n)
    return _dr(y_, treated_, e_, mu0_, mu1_, weight_)


def _dr(
    y: FloatArray,
    treated: FloatArray,
    e: FloatArray,
    mu0: FloatArray,
    mu1: FloatArray,
    weight: FloatArray,
) -> FloatArray:
    observed = weight > 0.0
    res1 = np.where(observed, y - mu1, 0.0)
    res0 = np.where(observed, y - mu0, 0.0)
    correction = treated * res1 / e - (1.0 - treated) * res0 / (1.0 - e)
    return np.asarray(mu1 - mu0 + weight * correction, dtype=np.float64)


# --------------------------------------------------------------------------- BLP test


@dataclass(frozen=True)
class Coefficient:
    """One regression coefficient with its robust SE, t statistic and one-sided p-value."""

    estimate: float
    se: float
    t: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "se": self.se, "t": self.t, "p_value": self.p_value}


_NAN_COEF = Coefficient(float("nan"), float("nan"), float("nan"), float("nan"))


@dataclass(frozen=True)
class BLPResult:
    """Best-linear-predictor calibration test plus the doubly-robust average effect.

    ``mean_forest_prediction`` ~ 1 says the average predicted benefit is right;
    ``differential_forest_prediction`` ~ 1 says the spread of predicted benefit is right,
    and its one-sided p-value (H0: coefficient <= 0) tests whether there is heterogeneity
    the predictions capture at all. p-values are one-sided as in grf. A coefficient that
    cannot be estimated (e.g. constant predicted benefit) is NaN throughout, and NaN
    never counts as detected.
    """

    mean_forest_prediction: Coefficient
    differential_forest_prediction: Coefficient
    ate: float
    ate_se: float
    ate_ci_low: float
    ate_ci_high: float
    ate_p_value: float
    level: float
    n: int
    n_observed: int
    df_residual: int
    heterogeneity: Coefficient = field(default_factory=lambda: _NAN_COEF)
    vcov_type: str = "HC3"

    def heterogeneity_detected(self, alpha: float = 0.05) -> bool:
        """The heterogeneity test rejects: the differential coefficient is significantly
        positive (one-sided p < alpha) with the cross-fitting variance bound."""
        return bool(self.heterogeneity.p_value < alpha)

    def ate_detected(self, alpha: float = 0.05) -> bool:
        """Average effect reliably non-zero (two-sided p < alpha)."""
        return bool(self.ate_p_value < alpha)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_forest_prediction": self.mean_forest_prediction.to_dict(),
            "differential_forest_prediction": self.differential_forest_prediction.to_dict(),
            "ate": self.ate,
            "ate_se": self.ate_se,
            "ate_ci_low": self.ate_ci_low,
            "ate_ci_high": self.ate_ci_high,
            "ate_p_value": self.ate_p_value,
            "level": self.level,
            "n": self.n,
            "n_observed": self.n_observed,
            "df_residual": self.df_residual,
            "heterogeneity": self.heterogeneity.to_dict(),
            "vcov_type": self.vcov_type,
        }

    def metrics(self, prefix: str = "blp_") -> dict[str, float]:
        """Flat scalar metrics for experiment tracking."""
        out: dict[str, float] = {}
        for name, coef in (
            ("mean", self.mean_forest_prediction),
            ("differential", self.differential_forest_prediction),
            ("heterogeneity", self.heterogeneity),
        ):
            for key, value in coef.to_dict().items():
                out[f"{prefix}{name}_{key}"] = value
        for key in ("ate", "ate_se", "ate_ci_low", "ate_ci_high", "ate_p_value"):
            out[f"{prefix}{key}"] = float(getattr(self, key))
        out[f"{prefix}n_observed"] = float(self.n_observed)
        return out


# Under no heterogeneity a cross-fitted benefit is a sum of other folds' outcome noise, so
# the differential coefficient's numerator is a quadratic form over pairs of patients in
# different folds: each pair enters twice (i's outcome in j's prediction and j's in i's).
# Its variance is at most twice what HC3 estimates, which treats the predictions as fixed
# (Cauchy-Schwarz on the two cross terms). Over 200 simulated null trials the t statistic
# of the PATH effect model had SD 1.41 = sqrt(2): the bound is reached, not loose.
CROSS_FIT_VARIANCE_BOUND = 2.0


def blp_test(
    y: ArrayLike,
    treated: ArrayLike,
    e: ArrayLike,
    mu0: ArrayLike,
    mu1: ArrayLike,
    tau: ArrayLike,
    weight: ArrayLike,
    *,
    level: float = 0.95,
    cross_fitted: bool = True,
) -> BLPResult:
    """grf's ``test_calibration`` (Chernozhukov et al.'s best linear predictor) with IPCW.

    On observed patients, regress ``y - m(x)`` with ``m(x) = e mu1 + (1 - e) mu0`` on
    ``(treated - e) * tau_bar`` and ``(treated - e) * (tau - tau_bar)`` without intercept, by
    weighted least squares with the IPCW weights. ``tau_bar`` is the weight-averaged predicted
    benefit over the regression sample, as grf does with its observation weights.
    Standard errors are HC3 sandwich errors computed as grf does
    (``sandwich::vcovCL(type = "HC3")`` with one cluster per patient, including the
    ``G / (G - 1)`` cluster adjustment); p-values use a t distribution with the residual
    degrees of freedom and are one-sided (upper tail, H0: coefficient <= 0).

    ``differential_forest_prediction`` is grf's figure. ``heterogeneity`` is the same
    coefficient tested as training tests it: when ``tau`` is cross-fitted, its standard
    error is widened by the square root of :data:`CROSS_FIT_VARIANCE_BOUND`, because every
    fold's predictions are fitted on the other folds' outcomes and HC3 misses that
    dependence. Uncorrected, a single flexible learner's test rejected in 10% of 200
    simulated null trials at alpha = 0.05 (t statistic SD 1.41; the known downward shift,
    grf issue #396, mean -0.22, does not make up for it); corrected, in 4% of 50
    (``benchmarks/results/recovery.md``). With ``cross_fitted=False`` (a fixed ``tau``,
    not learned from these outcomes) the two are the same.

    Also reports the AIPW average effect: the plain mean over all patients of
    :func:`dr_scores` (the IPCW weighting already sits inside each score), with standard
    error ``sd / sqrt(n)``, a normal ``level`` interval and a two-sided p-value. This is
    what the decision rule's "or the average effect alone is reliably non-zero" reads.
    """
    _check_lengths(y=y, treated=treated, e=e, mu0=mu0, mu1=mu1, tau=tau, weight=weight)
    treated_ = _arm(treated)
    n = treated_.shape[0]
    weight_ = _weights(weight, n)
    y_ = _outcome(y, weight_)
    e_ = _propensity(e, n)
    mu0_ = _vector("mu0", mu0, n)
    mu1_ = _vector("mu1", mu1, n)
    tau_ = _vector("tau", tau, n)
    level = _level(level)

    obs = weight_ > 0.0
    n_obs = int(obs.sum())
    if n_obs < 3:
        raise ValueError(f"weight: need at least 3 observed outcomes, got {n_obs}")
    sw = weight_[obs]
    tau_o = tau_[obs]
    tau_bar = float(np.sum(sw * tau_o) / np.sum(sw))
    resid_w = (treated_ - e_)[obs]
    m = e_[obs] * mu1_[obs] + (1.0 - e_[obs]) * mu0_[obs]
    target = y_[obs] - m
    design = np.column_stack([resid_w * tau_bar, resid_w * (tau_o - tau_bar)])
    coefs, df_resid = _wls_hc3(design, target, sw)
    inflation = np.sqrt(CROSS_FIT_VARIANCE_BOUND) if cross_fitted else 1.0

    # Average effect from the doubly-robust scores.
    gamma = _dr(y_, treated_, e_, mu0_, mu1_, weight_)
    ate = float(gamma.mean())
    ate_se = float(gamma.std(ddof=1) / np.sqrt(n))
    z = _z(level)
    ate_p = float(2.0 * stats.norm.sf(abs(ate) / ate_se)) if ate_se > 0.0 else float("nan")
    return BLPResult(
        mean_forest_prediction=coefs[0],
        differential_forest_prediction=coefs[1],
        ate=ate,
        ate_se=ate_se,
        ate_ci_low=ate - z * ate_se,
        ate_ci_high=ate + z * ate_se,
        ate_p_value=ate_p,
        level=level,
        n=n,
        n_observed=n_obs,
        df_residual=df_resid,
        heterogeneity=_widened(coefs[1], inflation, df_resid),
    )


def _widened(coef: Coefficient, factor: float, df_resid: int) -> Coefficient:
    """`coef` with its standard error multiplied by `factor` (t and p follow)."""
    if not np.isfinite(coef.se) or coef.se <= 0.0:
        return coef
    se = coef.se * factor
    t = coef.estimate / se
    return Coefficient(coef.estimate, se, t, float(stats.t.sf(t, df_resid)))


def _wls_hc3(x: FloatArray, y: FloatArray, weight: FloatArray) -> tuple[list[Coefficient], int]:
    """No-intercept WLS with HC3 (cluster-adjusted) SEs and one-sided t p-values.

    Columns that are identically zero (e.g. constant predicted benefit) cannot be
    estimated; they are dropped and reported as NaN, like R's ``lm`` reports NA.
    """
    n, k = x.shape
    sqrt_w = np.sqrt(weight)
    xs = x * sqrt_w[:, None]
    ys = y * sqrt_w
    scale = np.sqrt(np.sum(xs**2, axis=0))
    keep = scale > 1e-12 * max(1.0, float(np.max(scale)) if scale.size else 1.0)
    results = [_NAN_COEF] * k
    p = int(keep.sum())
    df_resid = n - p
    if p == 0 or df_resid <= 0:
        return results, max(df_resid, 0)
    xk = xs[:, keep]
    bread = np.linalg.pinv(xk.T @ xk)
    beta = bread @ (xk.T @ ys)
    resid = ys - xk @ beta
    hat = np.einsum("ij,jk,ik->i", xk, bread, xk)
    adj = resid / np.clip(1.0 - hat, 1e-12, None)
    meat = (xk * adj[:, None]).T @ (xk * adj[:, None])
    vcov = bread @ meat @ bread * (n / (n - 1.0))
    se = np.sqrt(np.clip(np.diag(vcov), 0.0, None))
    for j, col in enumerate(np.flatnonzero(keep)):
        est = float(beta[j])
        s = float(se[j])
        t = est / s if s > 0.0 else float("nan")
        pval = float(stats.t.sf(t, df_resid)) if s > 0.0 else float("nan")
        results[int(col)] = Coefficient(est, s, t, pval)
    return results, df_resid


def cauchy_combination(p_values: ArrayLike) -> float:
    """Liu & Xie's (2020) Cauchy combination of p-values, NaN ones left out (NaN if none).

    Valid at small levels under arbitrary dependence, and candidate learners' tests on the
    same trial are strongly dependent: when they agree it returns about their common
    p-value, where Bonferroni would multiply it by the number of candidates; one small
    p-value among unrelated large ones costs about that factor, as Bonferroni does.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    p = np.clip(p[np.isfinite(p)], 1e-15, 1.0 - 1e-15)
    if p.size == 0:
        return float("nan")
    t = float(np.mean(np.tan((0.5 - p) * np.pi)))
    return float(stats.cauchy.sf(t))


# --------------------------------------------------------------------------- RATE


@dataclass(frozen=True)
class RATEResult:
    """Rank-weighted average treatment effect with bootstrap uncertainty and TOC curve.

    ``p_value`` is one-sided for ``estimate > 0`` (normal approximation with the bootstrap
    SE); the interval is ``estimate ± z * se``. The TOC curve is evaluated at ``toc_q``
    (fraction of patients treated, highest predicted benefit first) with pointwise
    ``estimate ± z * se`` bands.
    """

    target: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    level: float
    n: int
    n_boot: int
    toc_q: FloatArray
    toc_estimate: FloatArray
    toc_se: FloatArray
    toc_low: FloatArray
    toc_high: FloatArray

    def excludes_zero(self) -> bool:
        """Interval lies entirely above or below zero."""
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "estimate": self.estimate,
            "se": self.se,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "level": self.level,
            "n": self.n,
            "n_boot": self.n_boot,
            "toc": {
                "q": _clean(self.toc_q),
                "estimate": _clean(self.toc_estimate),
                "se": _clean(self.toc_se),
                "low": _clean(self.toc_low),
                "high": _clean(self.toc_high),
            },
        }

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        """Flat scalar metrics for experiment tracking (curve excluded)."""
        pre = f"{self.target.lower()}_" if prefix is None else prefix
        return {
            f"{pre}estimate": self.estimate,
            f"{pre}se": self.se,
            f"{pre}ci_low": self.ci_low,
            f"{pre}ci_high": self.ci_high,
            f"{pre}p_value": self.p_value,
        }


def rate(
    tau: ArrayLike,
    scores: ArrayLike,
    target: Literal["AUTOC", "QINI"] = "AUTOC",
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    n_points: int = 100,
) -> RATEResult:
    """Rank-weighted average treatment effect (Yadlowsky et al.; grf's RATE).

    Patients are prioritized by predicted benefit ``tau`` (highest first). With ``Γ`` the
    doubly-robust ``scores`` and the top-``j`` set under that ordering,
    ``TOC(j/n) = mean(Γ over the top j) - mean(Γ)``. On the grid ``q = 1/n, ..., 1``:

    - ``AUTOC = (1/n) Σ_j TOC(j/n)`` (uniform weight on q),
    - ``QINI  = (1/n) Σ_j (j/n) TOC(j/n)``.

    A prioritization with no relation to the true benefit has RATE 0 in expectation.

    Ties in ``tau`` are handled as grf does: the scores of tied patients are replaced by
    their group average before accumulating, so the result does not depend on the input
    order. Uncertainty is a plain nonparametric bootstrap (``n_boot`` resamples of
    patients, ordering recomputed within each resample, tie groups averaged with the
    resample multiplicities); grf uses half-sampling, which targets the same variance.
    Reproducible for a given ``seed``.

    The TOC curve is reported at ``q = k / n_points`` for ``k = 1..n_points``, using the
    smallest top set that covers a fraction ``q`` of patients (``ceil(q n)`` patients).
    """
    _check_lengths(tau=tau, scores=scores)
    tau_ = _vector("tau", tau)
    n = tau_.shape[0]
    scores_ = _vector("scores", scores, n)
    if target not in ("AUTOC", "QINI"):
        raise ValueError(f"target: must be 'AUTOC' or 'QINI', got {target!r}")
    n_boot = _n_boot(n_boot)
    level = _level(level)
    if n < 2:
        raise ValueError(f"tau: need at least 2 patients, got {n}")
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"n_points: need a positive integer, got {n_points}")

    order = np.argsort(-tau_, kind="stable")
    tau_sorted = tau_[order]
    s_sorted = scores_[order]
    starts = np.flatnonzero(np.r_[True, tau_sorted[1:] != tau_sorted[:-1]])
    group = np.cumsum(np.r_[True, tau_sorted[1:] != tau_sorted[:-1]]) - 1
    q = np.arange(1, n_points + 1, dtype=np.float64) / n_points

    est, toc = _rate_weighted(np.ones((1, n)), s_sorted, starts, group, target, q)
    rng = np.random.default_rng(seed)
    boot_est: list[FloatArray] = []
    boot_toc: list[FloatArray] = []
    for counts in _boot_counts(rng, n, n_boot):
        b_est, b_toc = _rate_weighted(counts[:, order], s_sorted, starts, group, target, q)
        boot_est.append(b_est)
        boot_toc.append(b_toc)
    be = np.concatenate(boot_est)
    bt = np.concatenate(boot_toc, axis=0)

    estimate = float(est[0])
    se = float(be.std(ddof=1))
    z = _z(level)
    p_value = float(stats.norm.sf(estimate / se)) if se > 0.0 else float("nan")
    toc_est = toc[0]
    toc_se = bt.std(axis=0, ddof=1)
    return RATEResult(
        target=target,
        estimate=estimate,
        se=se,
        ci_low=estimate - z * se,
        ci_high=estimate + z * se,
        p_value=p_value,
        level=level,
        n=n,
        n_boot=n_boot,
        toc_q=q,
        toc_estimate=toc_est,
        toc_se=toc_se,
        toc_low=toc_est - z * toc_se,
        toc_high=toc_est + z * toc_se,
    )


def _rate_weighted(
    counts: FloatArray,
    s_sorted: FloatArray,
    starts: NDArray[np.intp],
    group: NDArray[np.intp],
    target: str,
    q: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """RATE and TOC(q) for each row of patient multiplicities (columns in priority order)."""
    grp_w = np.add.reduceat(counts, starts, axis=1)
    grp_ws = np.add.reduceat(counts * s_sorted, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        grp_avg = np.where(grp_w > 0.0, grp_ws / grp_w, 0.0)
    s_adj = grp_avg[:, group]
    cum_w = np.cumsum(counts, axis=1)
    cum_ws = np.cumsum(counts * s_adj, axis=1)
    total = cum_w[:, -1:]
    ate = cum_ws[:, -1:] / total
    with np.errstate(invalid="ignore", divide="ignore"):
        toc = np.where(cum_w > 0.0, cum_ws / cum_w, 0.0) - ate
    toc = np.where(cum_w > 0.0, toc, 0.0)
    frac = cum_w / total
    if target == "AUTOC":
        est = np.sum(counts * toc, axis=1) / total[:, 0]
    else:
        est = np.sum(counts * frac * toc, axis=1) / total[:, 0]
    n = counts.shape[1]
    toc_q = np.empty((counts.shape[0], q.shape[0]))
    for b in range(counts.shape[0]):
        idx = np.searchsorted(frac[b], q - 1e-12, side="left")
        toc_q[b] = toc[b, np.minimum(idx, n - 1)]
    return est, toc_q


# --------------------------------------------------------------------------- calibration


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
    _check_lengths(tau=tau, scores=scores)
    tau_ = _vector("tau", tau)
    n = tau_.shape[0]
    scores_ = _vector("scores", scores, n)
    level = _level(level)
    if int(n_groups) != n_groups or n_groups < 2:
        raise ValueError(f"n_groups: need an integer >= 2, got {n_groups}")
    if n < 2 * n_groups:
        raise ValueError(f"tau: need at least {2 * n_groups} patients for {n_groups} groups")
    z = _z(level)
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


# --------------------------------------------------------------------------- policy value


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
    _check_lengths(scores=scores, recommend=recommend)
    scores_ = _vector("scores", scores)
    n = scores_.shape[0]
    pi = _vector("recommend", np.asarray(recommend, dtype=np.float64), n)
    if ((pi < 0.0) | (pi > 1.0)).any():
        raise ValueError("recommend: must be 0/1 (or a treatment probability in [0, 1])")
    if n < 2:
        raise ValueError(f"scores: need at least 2 patients, got {n}")
    n_boot = _n_boot(n_boot)
    level = _level(level)

    contrib = scores_ * pi
    value = float(contrib.mean())
    treat_all = float(scores_.mean())
    gain = value - max(0.0, treat_all)
    rng = np.random.default_rng(seed)
    b_value, b_all = [], []
    for counts in _boot_counts(rng, n, n_boot):
        b_value.append(counts @ contrib / n)
        b_all.append(counts @ scores_ / n)
    bv = np.concatenate(b_value)
    ba = np.concatenate(b_all)
    bg = bv - np.maximum(0.0, ba)
    gain_se = float(bg.std(ddof=1))
    z = _z(level)
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


# --------------------------------------------------------------------------- R-loss


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
    _check_lengths(y=y, treated=treated, e=e, m=m, tau=tau, weight=weight)
    treated_ = _arm(treated)
    n = treated_.shape[0]
    weight_ = _weights(weight, n)
    y_ = _outcome(y, weight_)
    e_ = _propensity(e, n)
    m_ = _vector("m", m, n)
    tau_ = _vector("tau", tau, n)
    obs = weight_ > 0.0
    resid = (y_[obs] - m_[obs]) - (treated_[obs] - e_[obs]) * tau_[obs]
    return float(np.sum(weight_[obs] * resid**2) / np.sum(weight_[obs]))
