"""The evidence functions of personalize.stats (doubly-robust scores, BLP, RATE, calibration
by group, policy value, R-loss) against simulated trials whose truth is known."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from personalize.stats.blp import blp_test, cauchy_combination
from personalize.stats.dr_scores import dr_scores
from personalize.stats.group_calibration import benefit_calibration_by_group
from personalize.stats.policy import policy_value
from personalize.stats.r_loss import r_loss
from personalize.stats.rate import rate

E = 0.5  # 1:1 allocation


# --------------------------------------------------------------------------- simulation


@dataclass
class Trial:
    x: np.ndarray
    treated: np.ndarray
    y: np.ndarray  # NaN where unobserved
    tau: np.ndarray  # true benefit
    mu0: np.ndarray  # true E[Y | x, control]
    mu1: np.ndarray  # true E[Y | x, treatment]
    p_obs: np.ndarray  # true P(observed | x, arm)
    observed: np.ndarray

    @property
    def ipcw(self) -> np.ndarray:
        """Correct IPCW weights: observed / P(observed | baseline, arm)."""
        return np.where(self.observed, 1.0 / self.p_obs, 0.0)


def simulate(
    rng: np.random.Generator,
    n: int,
    *,
    het: float = 0.2,
    ate: float = 0.0,
    kind: str = "continuous",
    noise: float = 1.0,
    mar: bool = False,
) -> Trial:
    """Two-arm 1:1 trial with benefit tau(x) = ate + het * x, optional MAR missingness.

    Under ``mar`` the chance of observing the outcome rises with x in the treatment arm and
    falls with x in the control arm, so complete cases are not representative.
    """
    x = rng.normal(size=n)
    w = rng.binomial(1, E, size=n).astype(float)
    if kind == "continuous":
        mu0 = 0.5 * x
        mu1 = mu0 + ate + het * x
        y = np.where(w == 1, mu1, mu0) + noise * rng.normal(size=n)
    else:
        mu0 = np.clip(0.4 + 0.05 * x, 0.02, 0.98)
        mu1 = np.clip(mu0 + ate + het * x, 0.02, 0.98)
        y = rng.binomial(1, np.where(w == 1, mu1, mu0)).astype(float)
    if mar:
        lin = 0.8 + 0.8 * x * np.where(w == 1, 1.0, -1.0)
        p_obs = 1.0 / (1.0 + np.exp(-lin))
    else:
        p_obs = np.ones(n)
    observed = rng.random(n) < p_obs
    y = np.where(observed, y, np.nan)
    return Trial(x, w, y, mu1 - mu0, mu0, mu1, p_obs, observed)


def crossfit_linear(t: Trial, weight: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold per-arm weighted linear fits (a tiny T-learner), as the caller would do."""
    n = t.x.shape[0]
    folds = np.arange(n) % k
    mu0 = np.empty(n)
    mu1 = np.empty(n)
    design = np.column_stack([np.ones(n), t.x])
    for f in range(k):
        test = folds == f
        for arm, out in ((0.0, mu0), (1.0, mu1)):
            fit = (~test) & (t.treated == arm) & (weight > 0)
            sw = np.sqrt(weight[fit])
            beta, *_ = np.linalg.lstsq(design[fit] * sw[:, None], t.y[fit] * sw, rcond=None)
            out[test] = design[test] @ beta
    return mu0, mu1


# --------------------------------------------------------------------------- DR scores


def test_dr_scores_match_the_aipw_ipcw_formula() -> None:
    y = np.array([1.0, 0.0, np.nan, 2.0])
    w = np.array([1, 0, 1, 0])
    mu0 = np.array([0.2, 0.1, 0.3, 1.0])
    mu1 = np.array([0.5, 0.4, 0.6, 1.5])
    weight = np.array([2.0, 1.5, 0.0, 1.0])
    e = 0.4
    expected = np.array(
        [
            0.5 - 0.2 + 2.0 * (1.0 - 0.5) / 0.4,
            0.4 - 0.1 - 1.5 * (0.0 - 0.1) / 0.6,
            0.6 - 0.3,  # unobserved: plug-in only
            1.5 - 1.0 - 1.0 * (2.0 - 1.0) / 0.6,
        ]
    )
    np.testing.assert_allclose(dr_scores(y, w, e, mu0, mu1, weight), expected)
    # array propensity equals the scalar one
    np.testing.assert_allclose(dr_scores(y, w, np.full(4, e), mu0, mu1, weight), expected)


def test_nan_outcome_with_zero_weight_does_not_propagate() -> None:
    t = simulate(np.random.default_rng(1), 600, mar=True)
    assert np.isnan(t.y).any()
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
    assert np.isfinite(gamma).all()
    res = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
    assert np.isfinite(res.ate)
    assert np.isfinite(res.differential_forest_prediction.estimate)
    assert res.n == 600 and res.n_observed == int(t.observed.sum())
    loss = r_loss(t.y, t.treated, E, E * mu1 + (1 - E) * mu0, mu1 - mu0, t.ipcw)
    assert np.isfinite(loss)


def test_nan_outcome_with_positive_weight_is_rejected() -> None:
    y = np.array([1.0, np.nan, 0.0, 1.0])
    w = np.array([1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"^y:"):
        dr_scores(y, w, E, np.zeros(4), np.zeros(4), np.ones(4))


def test_dr_mean_recovers_ate_with_ipcw_and_is_biased_without() -> None:
    """Outcome models misspecified (arm means of complete cases): only IPCW saves the day."""
    t = simulate(np.random.default_rng(2), 40_000, ate=0.3, het=0.5, mar=True)
    true_ate = float(t.tau.mean())
    obs = t.observed
    cc0 = float(np.nanmean(t.y[(t.treated == 0) & obs]))
    cc1 = float(np.nanmean(t.y[(t.treated == 1) & obs]))
    mu0 = np.full(t.x.shape, cc0)
    mu1 = np.full(t.x.shape, cc1)

    good = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw).mean()
    # "Without IPCW": weights ignore the baseline, i.e. a complete-case analysis per arm.
    p_arm = np.where(t.treated == 1, obs[t.treated == 1].mean(), obs[t.treated == 0].mean())
    naive_w = np.where(obs, 1.0 / p_arm, 0.0)
    naive = dr_scores(t.y, t.treated, E, mu0, mu1, naive_w).mean()

    assert abs(good - true_ate) < 0.05  # sd of this estimate is ~0.015
    assert naive - true_ate > 0.2  # complete cases overstate the benefit (by ~0.35)
    # Double robustness: correct outcome models rescue the naive weights.
    dr_naive_w = dr_scores(t.y, t.treated, E, t.mu0, t.mu1, naive_w).mean()
    assert abs(dr_naive_w - true_ate) < 0.05


# --------------------------------------------------------------------------- BLP test


def test_blp_detects_real_heterogeneity_with_informative_tau() -> None:
    t = simulate(np.random.default_rng(3), 2000, het=0.4, mar=True)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    res = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
    # power of this design is ~0.99 at the 1% level (checked over 100 seeds)
    assert res.differential_forest_prediction.p_value < 0.01
    assert res.heterogeneity_detected(0.05)
    assert 0.5 < res.differential_forest_prediction.estimate < 1.5


def test_blp_detects_heterogeneity_on_binary_outcome() -> None:
    t = simulate(np.random.default_rng(4), 2000, het=0.2, kind="binary")
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    res = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
    assert res.heterogeneity_detected(0.05)


def test_blp_coefficients_near_one_when_tau_is_correct() -> None:
    t = simulate(np.random.default_rng(5), 2000, ate=0.3, het=0.2, noise=0.5)
    res = blp_test(t.y, t.treated, E, t.mu0, t.mu1, t.tau, t.ipcw)
    for coef in (res.mean_forest_prediction, res.differential_forest_prediction):
        assert coef.se < 0.2
        assert abs(coef.estimate - 1.0) < 3 * coef.se
    # the average effect: close to the truth, interval covers it, reliably non-zero
    assert res.ate_ci_low < t.tau.mean() < res.ate_ci_high
    assert res.ate_detected(0.05) and res.ate_p_value < 1e-6


def test_blp_null_rejection_rate_is_near_nominal() -> None:
    rng = np.random.default_rng(6)
    reps, rejections, ate_rejections = 200, 0, 0
    for _ in range(reps):
        t = simulate(rng, 300, het=0.0)
        mu0, mu1 = crossfit_linear(t, t.ipcw, k=5)
        res = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
        rejections += res.heterogeneity_detected(0.05)
        ate_rejections += res.ate_detected(0.05)
    assert rejections / reps <= 0.05
    assert ate_rejections / reps <= 0.09


def crossfit_knn_benefit(t: Trial, neighbours: int = 15, k: int = 5) -> np.ndarray:
    """Cross-fitted nearest-neighbour average of the IPW pseudo-outcome: a benefit that is a
    smoother of the other folds' outcomes, as a forest's is."""
    from sklearn.neighbors import KNeighborsRegressor

    n = t.x.shape[0]
    folds = np.arange(n) % k
    pseudo = np.where(t.observed, (t.treated - E) * np.nan_to_num(t.y) / (E * (1 - E)), 0.0)
    tau = np.empty(n)
    for f in range(k):
        test = folds == f
        fit = ~test & t.observed
        knn = KNeighborsRegressor(neighbours).fit(t.x[fit, None], pseudo[fit])
        tau[test] = knn.predict(t.x[test, None])
    return tau


def test_cross_fitting_bound_makes_the_heterogeneity_test_valid_for_a_smoother() -> None:
    """On null trials a cross-fitted smoother's benefit makes grf's HC3 t statistic spread
    wider than N(0, 1) (each pair of patients in different folds enters it twice); the
    test training runs widens the standard error by sqrt(2) and rejects at most nominally."""
    rng = np.random.default_rng(12)
    raw, bound = [], []
    for _ in range(400):
        t = simulate(rng, 400, het=0.0, ate=0.3)
        res = blp_test(t.y, t.treated, E, t.mu0, t.mu1, crossfit_knn_benefit(t), t.ipcw)
        raw.append(res.differential_forest_prediction.t)
        bound.append(res.heterogeneity.t)
    assert 1.2 < np.std(raw) < 1.6  # HC3 misses the cross-fold dependence
    assert np.std(bound) < 1.15
    assert np.mean(np.array(bound) > 1.645) <= 0.05


def test_heterogeneity_test_widens_only_a_cross_fitted_benefit() -> None:
    t = simulate(np.random.default_rng(13), 2000, het=0.4, mar=True)
    mu0, mu1 = crossfit_linear(t, t.ipcw, k=5)
    cross = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
    fixed = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw, cross_fitted=False)
    grf, test = cross.differential_forest_prediction, cross.heterogeneity
    assert test.estimate == grf.estimate
    assert test.se == pytest.approx(np.sqrt(2.0) * grf.se)
    assert test.t == pytest.approx(grf.t / np.sqrt(2.0))
    assert grf.p_value < test.p_value < 0.05  # still detected, at a price
    assert fixed.heterogeneity == fixed.differential_forest_prediction
    assert cross.to_dict()["heterogeneity"]["p_value"] == test.p_value


def test_cauchy_combination_of_agreeing_and_of_lone_p_values() -> None:
    # agreeing tests keep their p-value: no Bonferroni factor for correlated candidates
    assert cauchy_combination([0.01, 0.01, 0.01]) == pytest.approx(0.01, rel=1e-6)
    # one small p among unrelated large ones pays about the number of tests
    assert cauchy_combination([0.001, 0.6, 0.7, 0.8]) == pytest.approx(0.004, rel=0.05)
    assert cauchy_combination([0.3]) == pytest.approx(0.3)
    assert cauchy_combination([0.2, float("nan")]) == pytest.approx(0.2)
    assert np.isnan(cauchy_combination([float("nan")]))
    assert 0.99 < cauchy_combination([1.0, 1.0]) <= 1.0
    # valid under the null: independent uniform p-values reject at about alpha
    u = np.random.default_rng(14).random((4000, 6))
    rate = np.mean([cauchy_combination(row) < 0.05 for row in u])
    assert 0.035 < rate < 0.065


def test_blp_standard_errors_are_hc3_by_leave_one_out_identity() -> None:
    """HC3 = sum over i of (beta_(-i) - beta)^2 for (weighted) least squares, exactly.

    Checked by brute-force refits, independent of the implementation; the test also
    rebuilds grf's design from its definition.
    """
    rng = np.random.default_rng(7)
    n = 60
    y = rng.normal(size=n)
    w = rng.binomial(1, 0.5, size=n).astype(float)
    mu0 = rng.normal(size=n) * 0.3
    mu1 = mu0 + rng.normal(size=n) * 0.5
    tau = mu1 - mu0 + rng.normal(size=n) * 0.1
    weight = rng.uniform(0.5, 3.0, size=n)
    res = blp_test(y, w, E, mu0, mu1, tau, weight)

    tau_bar = np.sum(weight * tau) / np.sum(weight)
    x = np.column_stack([(w - E) * tau_bar, (w - E) * (tau - tau_bar)])
    target = y - (E * mu1 + (1 - E) * mu0)

    def fit(idx: np.ndarray) -> np.ndarray:
        sw = np.sqrt(weight[idx])
        beta, *_ = np.linalg.lstsq(x[idx] * sw[:, None], target[idx] * sw, rcond=None)
        return beta

    beta = fit(np.arange(n))
    loo = np.array([fit(np.delete(np.arange(n), i)) for i in range(n)])
    hc3_var = np.sum((loo - beta) ** 2, axis=0) * n / (n - 1)  # grf's cluster adjustment
    got = [res.mean_forest_prediction, res.differential_forest_prediction]
    np.testing.assert_allclose([c.estimate for c in got], beta, rtol=1e-10)
    np.testing.assert_allclose([c.se**2 for c in got], hc3_var, rtol=1e-8)
    from scipy import stats

    for c in got:
        assert c.p_value == pytest.approx(stats.t.sf(c.estimate / c.se, n - 2))


def test_blp_constant_tau_reports_nan_differential_and_no_detection() -> None:
    t = simulate(np.random.default_rng(8), 400, ate=0.3)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    tau = np.full(400, 0.25)
    res = blp_test(t.y, t.treated, E, mu0, mu1, tau, t.ipcw)
    assert np.isnan(res.differential_forest_prediction.p_value)
    assert not res.heterogeneity_detected(0.05)
    assert np.isfinite(res.mean_forest_prediction.estimate)


# --------------------------------------------------------------------------- RATE


def test_rate_hand_computed_autoc_and_qini() -> None:
    tau = np.array([0.1, 0.9, 0.5, 0.3])
    scores = np.array([1.0, 4.0, 2.0, 0.0])
    # order by tau desc: scores 4, 2, 0, 1; ATE = 7/4
    toc = np.array([4.0, 3.0, 2.0, 7 / 4]) - 7 / 4
    q = np.arange(1, 5) / 4
    autoc = rate(tau, scores, "AUTOC", n_boot=20, n_points=4)
    qini = rate(tau, scores, "QINI", n_boot=20, n_points=4)
    assert autoc.estimate == pytest.approx(toc.mean())
    assert qini.estimate == pytest.approx(np.mean(q * toc))
    np.testing.assert_allclose(autoc.toc_estimate, toc)
    np.testing.assert_allclose(autoc.toc_q, q)


def test_rate_ties_are_averaged_and_order_invariant() -> None:
    rng = np.random.default_rng(9)
    tau = np.round(rng.normal(size=300), 1)  # many ties
    scores = rng.normal(size=300) + tau
    a = rate(tau, scores, n_boot=50, seed=3)
    perm = rng.permutation(300)
    b = rate(tau[perm], scores[perm], n_boot=50, seed=3)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-12)
    # all tied: nothing is prioritized, so RATE is exactly 0
    flat = rate(np.zeros(300), scores, n_boot=50)
    assert flat.estimate == pytest.approx(0.0, abs=1e-12)
    # with ties: a tied group's scores are averaged before accumulating
    tied = rate(np.array([1.0, 1.0, 0.0]), np.array([3.0, 0.0, 0.0]), n_boot=10, n_points=3)
    np.testing.assert_allclose(tied.toc_estimate, [0.5, 0.5, 0.0], atol=1e-12)


def test_rate_ci_excludes_zero_with_real_heterogeneity() -> None:
    t = simulate(np.random.default_rng(10), 2000, het=0.4, mar=True)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
    for target in ("AUTOC", "QINI"):
        res = rate(mu1 - mu0, gamma, target=target, n_boot=200, seed=0)
        assert res.ci_low > 0.0 and res.excludes_zero()
        assert res.p_value < 0.01


def test_rate_ci_covers_zero_under_null() -> None:
    rng = np.random.default_rng(11)
    reps, covered = 100, 0
    for _ in range(reps):
        t = simulate(rng, 400, het=0.0, ate=0.2)
        mu0, mu1 = crossfit_linear(t, t.ipcw)
        gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
        res = rate(mu1 - mu0, gamma, n_boot=100, seed=1)
        covered += res.ci_low <= 0.0 <= res.ci_high
    assert covered / reps >= 0.85


def test_rate_toc_curve_shape_and_bands() -> None:
    t = simulate(np.random.default_rng(12), 800, het=0.3)
    gamma = dr_scores(t.y, t.treated, E, t.mu0, t.mu1, t.ipcw)
    res = rate(t.tau, gamma, n_boot=100)
    assert res.toc_q.shape == res.toc_estimate.shape == res.toc_se.shape == (100,)
    assert res.toc_q[0] == pytest.approx(0.01) and res.toc_q[-1] == 1.0
    assert res.toc_estimate[-1] == pytest.approx(0.0, abs=1e-12)  # everyone treated
    assert (res.toc_low <= res.toc_estimate).all() and (res.toc_estimate <= res.toc_high).all()
    assert res.toc_estimate[9] > res.toc_estimate[49] > 0  # benefit concentrated at the top


def test_rate_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(13)
    tau, scores = rng.normal(size=200), rng.normal(size=200)
    assert rate(tau, scores, seed=4).se == rate(tau, scores, seed=4).se
    assert rate(tau, scores, seed=4).se != rate(tau, scores, seed=5).se


# --------------------------------------------------------------------------- calibration


def test_group_calibration_monotone_with_real_heterogeneity() -> None:
    t = simulate(np.random.default_rng(14), 4000, het=0.5, noise=0.5, mar=True)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
    cal = benefit_calibration_by_group(mu1 - mu0, gamma, n_groups=5)
    assert cal.n_groups == 5 and sum(g.n for g in cal.groups) == 4000
    observed = [g.mean_observed for g in cal.groups]
    predicted = [g.mean_predicted for g in cal.groups]
    assert np.all(np.diff(observed) > 0) and np.all(np.diff(predicted) > 0)
    assert abs(cal.slope - 1.0) < 3 * cal.slope_se
    for g in cal.groups:
        assert g.ci_low < g.mean_observed < g.ci_high
        assert g.tau_min <= g.mean_predicted <= g.tau_max


def test_group_calibration_slope_nan_for_constant_prediction() -> None:
    rng = np.random.default_rng(15)
    cal = benefit_calibration_by_group(np.zeros(100), rng.normal(size=100), n_groups=4)
    assert np.isnan(cal.slope) and cal.n_groups == 4


# --------------------------------------------------------------------------- policy value


def test_policy_value_with_true_benefit() -> None:
    rng = np.random.default_rng(16)
    tau = rng.normal(0.05, 0.2, size=1000)
    oracle = policy_value(tau, tau > 0, n_boot=100)
    assert oracle.value == pytest.approx(np.mean(np.maximum(tau, 0.0)))
    assert oracle.treat_all == pytest.approx(tau.mean())
    assert oracle.treat_none == 0.0
    assert oracle.best_single_arm == "treatment"
    assert oracle.gain_over_best_arm == pytest.approx(oracle.value - tau.mean())
    assert oracle.gain_ci_low > 0.0
    assert oracle.fraction_treated == pytest.approx(np.mean(tau > 0))
    # treating everyone gains nothing over the better arm; a coin flip ("either") is half
    assert policy_value(tau, np.ones(1000), n_boot=20).gain_over_best_arm == pytest.approx(0.0)
    half = policy_value(tau, np.full(1000, 0.5), n_boot=20)
    assert half.value == pytest.approx(tau.mean() / 2)
    # better arm is control when the average benefit is negative
    assert policy_value(tau - 1.0, tau > 1.0, n_boot=20).best_single_arm == "control"


def test_policy_value_out_of_fold_dr_prefers_informative_policy() -> None:
    t = simulate(np.random.default_rng(17), 2000, het=0.4, mar=True)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
    good = policy_value(gamma, (mu1 - mu0) > 0)
    bad = policy_value(gamma, (mu1 - mu0) < 0)
    truth = policy_value(t.tau, (mu1 - mu0) > 0)
    assert good.value > bad.value
    assert abs(good.value - truth.value) < 3 * good.value_se


# --------------------------------------------------------------------------- R-loss


def test_r_loss_hand_computed_and_prefers_true_tau() -> None:
    y = np.array([1.0, 0.0, np.nan])
    w = np.array([1, 0, 1])
    m = np.array([0.5, 0.5, 0.5])
    tau = np.array([0.2, 0.2, 0.2])
    weight = np.array([1.0, 3.0, 0.0])
    r1 = (1.0 - 0.5) - 0.5 * 0.2
    r0 = (0.0 - 0.5) + 0.5 * 0.2
    expected = (1.0 * r1**2 + 3.0 * r0**2) / 4.0
    assert r_loss(y, w, E, m, tau, weight) == pytest.approx(expected)

    t = simulate(np.random.default_rng(18), 3000, het=0.5, mar=True)
    m_true = E * t.mu1 + (1 - E) * t.mu0
    assert r_loss(t.y, t.treated, E, m_true, t.tau, t.ipcw) < r_loss(
        t.y, t.treated, E, m_true, np.zeros(3000), t.ipcw
    )


# --------------------------------------------------------------------------- validation


def _inputs(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(19)
    treated = rng.binomial(1, 0.5, size=n).astype(float)
    treated[:2] = [0.0, 1.0]
    return {
        "y": rng.normal(size=n),
        "treated": treated,
        "mu0": np.zeros(n),
        "mu1": np.zeros(n),
        "tau": np.zeros(n),
        "weight": np.ones(n),
    }


@pytest.mark.parametrize("name", ["y", "treated", "mu0", "mu1", "weight"])
def test_dr_scores_length_mismatch_names_the_argument(name: str) -> None:
    a = _inputs()
    a[name] = a[name][:-1]
    with pytest.raises(ValueError, match=f"^{name}: length mismatch"):
        dr_scores(a["y"], a["treated"], E, a["mu0"], a["mu1"], a["weight"])


@pytest.mark.parametrize("name", ["y", "tau", "weight"])
def test_blp_length_mismatch_names_the_argument(name: str) -> None:
    a = _inputs()
    a[name] = a[name][:-1]
    with pytest.raises(ValueError, match=f"^{name}: length mismatch"):
        blp_test(a["y"], a["treated"], E, a["mu0"], a["mu1"], a["tau"], a["weight"])


def test_other_functions_name_mismatched_arguments() -> None:
    a = _inputs()
    with pytest.raises(ValueError, match="scores"):
        rate(np.zeros(10), np.zeros(9))
    with pytest.raises(ValueError, match="scores"):
        benefit_calibration_by_group(np.zeros(10), np.zeros(11), n_groups=2)
    with pytest.raises(ValueError, match="recommend"):
        policy_value(np.zeros(10), np.zeros(9))
    with pytest.raises(ValueError, match=r"^e: length mismatch"):
        r_loss(a["y"], a["treated"], np.full(9, E), a["mu0"], a["tau"], a["weight"])
    with pytest.raises(ValueError, match=r"^m: length mismatch"):
        r_loss(a["y"], a["treated"], E, a["mu0"][:-1], a["tau"], a["weight"])


def test_invalid_values_are_rejected_with_the_argument_named() -> None:
    a = _inputs()
    args = (a["y"], a["treated"], E, a["mu0"], a["mu1"], a["weight"])
    with pytest.raises(ValueError, match=r"^treated:"):
        dr_scores(a["y"], a["treated"] * 2, E, a["mu0"], a["mu1"], a["weight"])
    with pytest.raises(ValueError, match=r"^e:"):
        dr_scores(a["y"], a["treated"], 1.0, a["mu0"], a["mu1"], a["weight"])
    with pytest.raises(ValueError, match=r"^weight:"):
        dr_scores(a["y"], a["treated"], E, a["mu0"], a["mu1"], -a["weight"])
    with pytest.raises(ValueError, match=r"^mu1:"):
        dr_scores(a["y"], a["treated"], E, a["mu0"], np.full(10, np.nan), a["weight"])
    with pytest.raises(ValueError, match=r"^mu0:"):
        dr_scores(a["y"], a["treated"], E, np.zeros((10, 1)), a["mu1"], a["weight"])
    with pytest.raises(ValueError, match=r"^target:"):
        rate(np.zeros(10), np.zeros(10), target="AUC")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^n_boot:"):
        rate(np.zeros(10), np.zeros(10), n_boot=1)
    with pytest.raises(ValueError, match=r"^level:"):
        blp_test(*args[:5], a["tau"], a["weight"], level=95)
    with pytest.raises(ValueError, match=r"^recommend:"):
        policy_value(np.zeros(10), np.full(10, 2.0))
    with pytest.raises(ValueError, match=r"^n_groups:"):
        benefit_calibration_by_group(np.zeros(10), np.zeros(10), n_groups=1)


# --------------------------------------------------------------------------- logging


def test_results_serialize_for_logging() -> None:
    t = simulate(np.random.default_rng(20), 300, het=0.3)
    mu0, mu1 = crossfit_linear(t, t.ipcw)
    gamma = dr_scores(t.y, t.treated, E, mu0, mu1, t.ipcw)
    blp = blp_test(t.y, t.treated, E, mu0, mu1, mu1 - mu0, t.ipcw)
    results: list[Any] = [
        blp,
        rate(mu1 - mu0, gamma, n_boot=20),
        benefit_calibration_by_group(mu1 - mu0, gamma),
        policy_value(gamma, mu1 > mu0, n_boot=20),
    ]
    for res in results:
        json.dumps(res.to_dict())
        metrics = res.metrics()
        assert metrics and all(isinstance(v, float) for v in metrics.values())
    with pytest.raises(AttributeError):
        blp.ate = 0.0  # type: ignore[misc]
