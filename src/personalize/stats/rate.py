"""The rank-weighted average treatment effect (AUTOC / Qini) with a bootstrap interval and
the TOC curve for plotting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from personalize.stats.trial_arrays import (
    FloatArray,
    bootstrap_count,
    bootstrap_counts,
    check_lengths,
    interval_level,
    json_ready,
    normal_quantile,
    vector,
)


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
                "q": json_ready(self.toc_q),
                "estimate": json_ready(self.toc_estimate),
                "se": json_ready(self.toc_se),
                "low": json_ready(self.toc_low),
                "high": json_ready(self.toc_high),
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
    check_lengths(tau=tau, scores=scores)
    tau_ = vector("tau", tau)
    n = tau_.shape[0]
    scores_ = vector("scores", scores, n)
    if target not in ("AUTOC", "QINI"):
        raise ValueError(f"target: must be 'AUTOC' or 'QINI', got {target!r}")
    n_boot = bootstrap_count(n_boot)
    level = interval_level(level)
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
    for counts in bootstrap_counts(rng, n, n_boot):
        b_est, b_toc = _rate_weighted(counts[:, order], s_sorted, starts, group, target, q)
        boot_est.append(b_est)
        boot_toc.append(b_toc)
    be = np.concatenate(boot_est)
    bt = np.concatenate(boot_toc, axis=0)

    estimate = float(est[0])
    se = float(be.std(ddof=1))
    z = normal_quantile(level)
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
