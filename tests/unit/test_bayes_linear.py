"""The Bayesian linear effect model: its posterior interval covers each patient's own benefit
on a trial it is specified for, its prior keeps noise from looking like heterogeneity, and
skewed positive covariates enter on the log scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from personalize.learners import make_learner
from personalize.learners.bayes_linear import BayesLinearLearner, LogScale

N = 800


def trial(
    kind: str, seed: int, n: int = N, null: bool = False
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """A trial whose benefit is linear in log(dose) and a category, with noise covariates;
    returns the covariates, arm, outcome and each patient's true benefit."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "dose": np.exp(rng.normal(4.0, 0.7, n)),
            "prog": rng.normal(size=n),
            **{f"noise{j}": rng.normal(size=n) for j in range(6)},
            "cat": pd.Categorical(rng.choice(["a", "b"], n), categories=["a", "b"]),
        }
    )
    treated = (rng.random(n) < 0.5).astype(np.int8)
    tau = np.zeros(n)
    if not null:
        tau = 0.5 * (np.log(X["dose"].to_numpy()) - 4.0) + 0.4 * (X["cat"] == "b").to_numpy()
    latent = -0.2 + 0.6 * X["prog"].to_numpy() - 0.5 * tau + treated * tau
    if kind == "binary":
        y = (rng.random(n) < ndtr(latent)).astype(float)
        truth = ndtr(-0.2 + 0.6 * X["prog"].to_numpy() + 0.5 * tau) - ndtr(
            -0.2 + 0.6 * X["prog"].to_numpy() - 0.5 * tau
        )
    else:
        y = latent + rng.normal(size=n)
        truth = tau
    return X, treated, y, truth


def interval(learner: BayesLinearLearner, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    d0, d1 = learner.arm_draws(X)
    lower, upper = np.quantile(d1 - d0, [0.05, 0.95], axis=1)
    return lower, upper


@pytest.mark.parametrize("kind", ["continuous", "binary"])
def test_the_90_percent_interval_covers_the_patients_own_benefit(kind: str) -> None:
    """Over four trials, between 80% and 98% of new patients' true benefits lie in their
    90% posterior intervals (a single trial's coverage varies with its draw of the data)."""
    shares = []
    for seed in range(4):
        X, t, y, _ = trial(kind, seed)
        learner = make_learner("bayes_linear", kind, seed).fit(X, t, y, np.ones(len(y)))
        test, _, _, truth = trial(kind, 100 + seed, n=2000)
        lower, upper = interval(learner, test)
        shares.append(np.mean((lower <= truth) & (truth <= upper)))
        assert np.corrcoef(learner.benefit(test), truth)[0, 1] > 0.7
    assert 0.80 <= np.mean(shares) <= 0.98


def test_without_heterogeneity_every_patient_gets_the_same_interval_around_zero() -> None:
    X, t, y, _ = trial("continuous", 7, null=True)
    learner = make_learner("bayes_linear", "continuous", 0).fit(X, t, y, np.ones(len(y)))
    lower, upper = interval(learner, X)
    assert np.mean((lower <= 0) & (upper >= 0)) > 0.95
    # the horseshoe keeps the modifiers small: the benefit varies by a fraction of its
    # interval's width
    assert learner.benefit(X).std() < 0.2 * (upper - lower).mean()


def test_noise_covariates_do_not_modify_the_effect() -> None:
    X, t, y, _ = trial("continuous", 3)
    learner = make_learner("bayes_linear", "continuous", 0).fit(X, t, y, np.ones(len(y)))
    phi = np.abs(learner.contributions(X).benefit_phi).mean(axis=0)
    names = [*learner.design_.features_, "arm"]
    dose = phi[names.index("dose")]
    noise = np.array([phi[names.index(f"noise{j}")] for j in range(6)])
    assert dose > 2.5 * noise.max() and dose > 5 * noise.mean()


def test_a_skewed_positive_covariate_enters_as_its_log() -> None:
    X, *_ = trial("continuous", 0)
    X = X.assign(zeros=np.where(np.arange(len(X)) % 3 == 0, 0.0, X["dose"]))
    logs = LogScale().fit(X)
    assert set(logs.floor_) == {"dose"}  # not the symmetric ones, not one with zeros
    new = pd.DataFrame({"dose": [0.0, 1e6, np.nan]}).assign(
        **{c: 0.0 for c in X.columns if c != "dose"}
    )
    logged = logs.apply(new)["dose"].to_numpy()
    assert logged[0] == pytest.approx(np.log(X["dose"].min()))  # held at the training minimum
    assert logged[1] == pytest.approx(np.log(1e6)) and np.isnan(logged[2])


def test_the_binary_arms_are_probabilities_and_the_drivers_add_up() -> None:
    X, t, y, _ = trial("binary", 5)
    learner = make_learner("bayes_linear", "binary", 0).fit(X, t, y, np.ones(len(y)))
    d0, d1 = learner.arm_draws(X)
    assert ((d0 > 0) & (d0 < 1) & (d1 > 0) & (d1 < 1)).all()
    mu0, mu1 = learner.predict_arms(X)
    parts = learner.contributions(X)
    np.testing.assert_allclose(parts.base0 + parts.phi0.sum(axis=1), mu0, atol=1e-10)
    np.testing.assert_allclose(parts.base1 + parts.phi1.sum(axis=1), mu1, atol=1e-10)


def test_keeping_fewer_draws_keeps_exactly_those_draws() -> None:
    """A mixture reading 100 of the 200 draws gets the same numbers whether the draws are
    thinned after computing them all or kept at fit time, and the drivers then use the
    posterior means of the kept draws."""
    X, t, y, _ = trial("binary", 5)
    full = BayesLinearLearner("binary", 5).fit(X, t, y, np.ones(len(y)))
    kept = BayesLinearLearner("binary", 5).fit(X, t, y, np.ones(len(y))).keep_draws(100)
    d0, d1 = full.arm_draws(X)
    index = np.linspace(0, d0.shape[1] - 1, 100).round().astype(int)
    k0, k1 = kept.arm_draws(X)
    assert k0.shape == (len(X), 100)
    np.testing.assert_array_equal(k0, d0[:, index])
    np.testing.assert_array_equal(k1, d1[:, index])
    np.testing.assert_allclose(kept.beta_.mean(axis=0), full.beta_[index].mean(axis=0))
    drivers = kept.contributions(X)
    mu0, mu1 = kept.predict_arms(X)
    np.testing.assert_allclose(drivers.base1 + drivers.phi1.sum(axis=1), mu1, atol=1e-12)
    np.testing.assert_allclose(drivers.base0 + drivers.phi0.sum(axis=1), mu0, atol=1e-12)
