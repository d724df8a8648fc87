"""Every learner honours the one interface: arms, benefit, exact additive contributions."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest

from personalize import fast_trees
from personalize.learners import ARM_DRIVER, learner_names, make_learner
from personalize.learners.base import EffectLearner, rescale
from personalize.learners.bcf import Chain

N = 1500

# a forest sampler (`bcf`, and the average that holds one) takes seconds per fit: its cases
# run with the slow tests
LEARNERS = [
    pytest.param(name, marks=pytest.mark.slow) if name in ("bcf", "bayes_average") else name
    for name in learner_names()
]


def trial(
    kind: str, seed: int = 0, null: bool = False
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """A randomized trial whose benefit grows with `mod` and with category 'b'."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "mod": rng.normal(size=N),
            "prog": rng.normal(size=N),
            "noise": rng.normal(size=N),
            "cat": pd.Categorical(rng.choice(["a", "b", "c"], N), categories=["a", "b", "c"]),
        }
    )
    X.loc[rng.random(N) < 0.1, "noise"] = np.nan
    treated = (rng.random(N) < 0.5).astype(np.int8)
    tau = 0.0 if null else 0.8 * X["mod"].to_numpy() + 0.6 * (X["cat"] == "b").to_numpy()
    lin = -0.5 + 0.7 * X["prog"].to_numpy() + treated * tau
    if kind == "binary":
        y = (rng.random(N) < 1 / (1 + np.exp(-lin))).astype(float)
    else:
        y = lin + rng.normal(size=N)
    return X, treated, y, np.ones(N)


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("name", LEARNERS)
def test_contributions_are_exact_and_benefit_is_difference(name: str, kind: str) -> None:
    X, t, y, w = trial(kind)
    learner = make_learner(name, kind, seed=0).fit(X, t, y, w)
    test = X.iloc[:300]
    mu0, mu1 = learner.predict_arms(test)
    c = learner.contributions(test)
    assert c.names == [*X.columns, ARM_DRIVER]
    np.testing.assert_allclose(c.base0 + c.phi0.sum(axis=1), mu0, atol=1e-9)
    np.testing.assert_allclose(c.base1 + c.phi1.sum(axis=1), mu1, atol=1e-9)
    np.testing.assert_allclose(learner.benefit(test), mu1 - mu0)
    np.testing.assert_allclose(c.benefit_base + c.benefit_phi.sum(axis=1), mu1 - mu0, atol=1e-9)
    if kind == "binary":
        assert ((mu0 >= 0) & (mu0 <= 1)).all()


def quick(learner: EffectLearner) -> EffectLearner:
    """A posterior learner with one short chain: it never has bootstrap members in the
    product, so only the interface is checked here, not its sampler's schedule."""
    if learner.posterior:
        learner.chain = Chain(gfr=5, chains=1, burnin=10, draws=10, every=1)  # type: ignore[attr-defined]
    return learner


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("name", LEARNERS)
def test_an_ensembles_arms_at_once_are_each_members_bits(name: str, kind: str) -> None:
    """`arms_of` (the interval's bootstrap members in one call) changes no number, with
    the compiled trees batched (as predict does) or not, for a few rows or many."""
    X, t, y, w = trial(kind)
    members = [quick(make_learner(name, kind, seed=s)).fit(X, t, y, w) for s in range(3)]
    for rows in (X.iloc[:1], X.iloc[:5], X):
        one_by_one = [m.predict_arms(rows) for m in members]
        for batched in (False, True):
            with (
                fast_trees.batch([b for m in members for b in m.boosters()])
                if batched
                else nullcontext()
            ):
                mu0, mu1 = type(members[0]).arms_of(members, rows)
            assert mu0.shape == mu1.shape == (len(rows), len(members))
            for j, (m0, m1) in enumerate(one_by_one):
                assert np.array_equal(mu0[:, j], m0) and np.array_equal(mu1[:, j], m1)


@pytest.mark.parametrize("name", ["t", "x", "dr", "effect_linear", "bayes_linear"])
def test_effect_learners_rank_the_true_benefit(name: str) -> None:
    X, t, y, w = trial("binary")
    learner = make_learner(name, "binary", seed=0).fit(X, t, y, w)
    test, *_ = trial("binary", seed=1)
    true = 0.8 * test["mod"] + 0.6 * (test["cat"] == "b")
    assert np.corrcoef(learner.benefit(test), true)[0, 1] > 0.6
    # the moderator, not the prognostic or noise feature, drives the benefit
    phi = np.abs(learner.contributions(test).benefit_phi).mean(axis=0)
    assert phi[0] > phi[1] and phi[0] > phi[2]


def test_risk_model_has_a_constant_relative_effect() -> None:
    X, t, y, w = trial("binary")
    learner = make_learner("risk_linear", "binary", seed=0).fit(X, t, y, w)
    mu0, mu1 = learner.predict_arms(X)
    log_or = np.log(mu1 / (1 - mu1)) - np.log(mu0 / (1 - mu0))
    np.testing.assert_allclose(log_or, log_or[0], atol=1e-9)


@pytest.mark.parametrize("name", LEARNERS)
def test_same_seed_same_answer_and_clone_is_unfitted(name: str) -> None:
    X, t, y, w = trial("binary", seed=2)
    a = make_learner(name, "binary", seed=3).fit(X, t, y, w).benefit(X)
    b = make_learner(name, "binary", seed=3).fit(X, t, y, w).benefit(X)
    np.testing.assert_array_equal(a, b)
    clone = make_learner(name, "binary", seed=3).fit(X, t, y, w).clone(seed=9)
    assert clone.seed == 9 and not any(k.endswith("_") for k in vars(clone))


def test_weights_matter() -> None:
    """IPCW weights are used: up-weighting treated responders raises the treated arm."""
    X, t, y, w = trial("binary", seed=4)
    plain = make_learner("t", "binary", 0).fit(X, t, y, w).predict_arms(X)[1].mean()
    heavy = np.where((t == 1) & (y == 1), 5.0, 1.0)
    tilted = make_learner("t", "binary", 0).fit(X, t, y, heavy).predict_arms(X)[1].mean()
    assert tilted > plain + 0.1


def test_unknown_learner_is_named() -> None:
    with pytest.raises(ValueError, match="unknown learner 'forest'"):
        make_learner("forest", "binary", 0)


def test_rescale_keeps_shares_and_sums_exactly() -> None:
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(50, 4))
    phi[0] = [0.5, -0.5, 0.0, 0.0]  # sums to zero: the fallback path
    phi[1] = 0.0
    target = rng.normal(size=50)
    out = rescale(phi, target)
    np.testing.assert_allclose(out.sum(axis=1), target, atol=1e-12)
    ratio = out[2:] / phi[2:]
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 4)))


def test_platt_transform_is_the_fitted_logistic_map() -> None:
    from personalize.stats.calibration import ArmCalibrator, logit

    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.9, 500)
    y = (rng.random(500) < p).astype(float)
    cal = ArmCalibrator("platt").fit(p, y, np.ones(500))
    expected = cal.model_.predict_proba(logit(p)[:, None])[:, 1]
    np.testing.assert_allclose(cal.transform(p), expected, rtol=0, atol=1e-15)
