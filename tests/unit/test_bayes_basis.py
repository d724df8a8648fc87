"""The spline-and-interaction model bends where the benefit bends, and stays close to the
linear model where it does not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from personalize.learners import make_learner

N = 900


def trial(seed: int, shape: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """A continuous outcome whose benefit is a U in `age`, or linear in it; noise covariates."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {"age": rng.normal(size=N), **{f"noise{j}": rng.normal(size=N) for j in range(4)}}
    )
    z = X["age"].to_numpy()
    tau = 1.2 * (z * z - 1.0) if shape == "u" else 0.8 * z
    treated = (rng.random(N) < 0.5).astype(np.int8)
    y = 0.5 * X["noise0"].to_numpy() + treated * tau + rng.normal(size=N)
    return X, treated, y, tau


def scores(name: str, shape: str, seed: int) -> tuple[float, float]:
    X, t, y, tau = trial(seed, shape)
    model = make_learner(name, "continuous", seed).fit(X, t, y, np.ones(N))
    d0, d1 = model.arm_draws(X)
    benefit = d1 - d0
    lower, upper = np.quantile(benefit, [0.05, 0.95], axis=1)
    pehe = float(np.sqrt(np.mean((benefit.mean(axis=1) - tau) ** 2)))
    return pehe, float(np.mean((lower <= tau) & (tau <= upper)))


def test_a_u_shaped_benefit_is_found_and_covered() -> None:
    basis, covered = scores("bayes_basis", "u", 1)
    linear, linear_covered = scores("bayes_linear", "u", 1)
    assert basis < 0.5 * linear  # the linear model cannot bend: its error is the U itself
    assert covered >= 0.8 > linear_covered


def test_a_linear_benefit_costs_little() -> None:
    basis, covered = scores("bayes_basis", "linear", 2)
    linear, _ = scores("bayes_linear", "linear", 2)
    assert basis <= 1.3 * linear and covered >= 0.8
