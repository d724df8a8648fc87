"""The Bayesian Causal Forest learner: the forests copied out of stochtree give stochtree's
own posterior, the merged posterior-mean forest explains it exactly, and the posterior
interval covers the true benefit of simulated patients."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from personalize.learners.bcf import BCFLearner, TreeArrays

pytestmark = pytest.mark.slow  # samples a posterior (seconds per fit)


def trial(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Binary outcome; the benefit grows with `mod` and is larger in category 'b'; `mod`
    has missing values. Returns X, treated, y and the true benefit."""
    rng = np.random.default_rng(seed)
    mod = rng.normal(size=n)
    X = pd.DataFrame(
        {
            "mod": np.where(rng.random(n) < 0.1, np.nan, mod),
            "noise": rng.normal(size=n),
            "group": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"]),
        }
    )
    treated = rng.binomial(1, 0.5, n).astype(float)
    base = -0.2 + 0.4 * X["noise"].to_numpy()
    effect = 0.5 * mod + 0.4 * (X["group"] == "b").to_numpy()
    p0, p1 = ndtr(base), ndtr(base + effect)
    y = rng.binomial(1, np.where(treated == 1, p1, p0)).astype(float)
    return X, treated, y, p1 - p0


@pytest.fixture(scope="module")
def fitted() -> tuple[BCFLearner, pd.DataFrame]:
    X, t, y, _ = trial(600, 1)
    return BCFLearner("binary", seed=3).fit(X, t, y, np.ones(len(y))), X


def test_copied_forests_reproduce_stochtree(fitted) -> None:
    """The flattened arrays evaluate every kept draw's forests exactly as stochtree's
    `predict` does, for rows with missing values and categorical levels."""
    from stochtree import BCFModel

    learner, X = fitted
    X_new = trial(200, 2)[0]
    Z = learner._matrix(X_new)
    refit = BCFModel()
    chain = learner.chain
    refit.sample(  # the same call as fit, kept to compare against stochtree directly
        X_train=learner._matrix(X)[:, :-1],
        Z_train=trial(600, 1)[1],
        y_train=trial(600, 1)[2],
        propensity_train=np.full(len(X), learner.allocation_),
        num_gfr=chain.gfr,
        num_burnin=chain.burnin,
        num_mcmc=chain.draws,
        general_params={
            "num_chains": chain.chains,
            "keep_every": chain.every,
            "outcome_model": _probit(),
            "adaptive_coding": False,
            "random_seed": 3,
            "num_threads": 1,
        },
    )
    out = refit.predict(
        X=Z[:, :-1], Z=np.zeros(len(Z)), propensity=Z[:, -1], terms=["mu", "tau"], type="posterior"
    )
    control, effect = learner.latent_draws(X_new)
    assert control.shape[1] == chain.chains * chain.draws  # every chain's draws, all kept
    np.testing.assert_allclose(control, out["mu_hat"], atol=1e-10)
    np.testing.assert_allclose(effect, out["tau_hat"], atol=1e-10)
    p0, p1 = learner.arm_draws(X_new)
    np.testing.assert_allclose(p1 - p0, ndtr(control + effect) - ndtr(control), atol=1e-12)


def _probit():
    from stochtree import OutcomeModel

    return OutcomeModel(outcome="binary", link="probit")


def test_the_merged_mean_forest_is_the_posterior_mean(fitted) -> None:
    learner = fitted[0]
    Z = learner._matrix(trial(300, 4)[0])
    for forest, merged in ((learner.mu_, learner.mu_mean_), (learner.tau_, learner.tau_mean_)):
        assert merged.trees < forest.trees * forest.draws  # shapes shared across draws
        phi, base = merged.attributions(Z, 1.0 / forest.draws)
        np.testing.assert_allclose(base + phi.sum(axis=1), forest.sums(Z).mean(axis=1), atol=1e-10)
        assert np.abs(phi[:, 1]).max() > 0  # the noise column drives the prognosis or not, but
        assert np.all(phi[:, -1] == 0)  # the constant propensity column never splits


def test_contributions_explain_the_arms_exactly(fitted) -> None:
    learner, _ = fitted
    X_new = trial(300, 5)[0]
    c = learner.contributions(X_new)
    mu0, mu1 = learner.predict_arms(X_new)
    np.testing.assert_allclose(c.base0 + c.phi0.sum(axis=1), mu0, atol=1e-12)
    np.testing.assert_allclose(c.base1 + c.phi1.sum(axis=1), mu1, atol=1e-12)
    benefit_phi = pd.DataFrame(np.abs(c.benefit_phi), columns=c.names).mean()
    assert benefit_phi["mod"] > benefit_phi["noise"]  # the true moderator drives the benefit


def test_posterior_intervals_cover_the_true_benefit() -> None:
    X, t, y, _ = trial(1500, 6)
    learner = BCFLearner("binary", seed=1).fit(X, t, y, np.ones(len(y)))
    X_new, _, _, truth = trial(2000, 7)
    p0, p1 = learner.arm_draws(X_new)
    lo, hi = np.quantile(p1 - p0, [0.05, 0.95], axis=1)
    coverage = np.mean((truth >= lo) & (truth <= hi))
    # most patients, not all (the recovery study measures the share at trial size)
    assert 0.6 <= coverage <= 0.99
    pehe = np.sqrt(np.mean(((p1 - p0).mean(axis=1) - truth) ** 2))
    assert pehe < 0.5 * truth.std() + 0.05


def test_the_trees_survive_a_round_trip_through_json() -> None:
    tree = {
        "node_type": [1, 0, 1, 0, 0],
        "split_index": [0, -1, 1, -1, -1],
        "threshold": [0.5, 0.0, 1.5, 0.0, 0.0],
        "left": [1, -1, 3, -1, -1],
        "right": [2, -1, 4, -1, -1],
        "leaf_value": [0.0, 1.0, 0.0, 2.0, 3.0],
    }
    container = {"num_trees": 1, "forest_0": {"tree_0": tree}}
    X = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    arrays = TreeArrays.from_json(json.loads(json.dumps(container)), np.array([0]), X)
    np.testing.assert_array_equal(arrays.sums(X)[:, 0], [1.0, 2.0, 3.0])
    phi, base = arrays.merged().attributions(X, 1.0)
    assert base == pytest.approx(2.0)  # the training rows' mean leaf
    np.testing.assert_allclose(base + phi.sum(axis=1), [1.0, 2.0, 3.0])
