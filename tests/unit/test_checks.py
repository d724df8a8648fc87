"""Model checks: a linear model of a benefit it cannot represent is caught out of fold, a
linear model of a linear benefit is not; the checks' own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from personalize import training
from personalize.stats.blp import Coefficient
from personalize.stats.checks import (
    BENEFIT_SLOPE,
    COMPARATOR,
    benefit_slope_check,
    comparator_check,
)
from support.trials import toy_pipeline, toy_trial


def coef(estimate: float, se: float) -> Coefficient:
    return Coefficient(estimate, se, estimate / se, float("nan"))


def test_the_benefit_slope_fires_only_when_its_interval_excludes_one() -> None:
    assert not benefit_slope_check(coef(0.9, 0.2)).fired
    low = benefit_slope_check(coef(0.3, 0.2))  # 90% CI 0.0 to 0.6
    assert low.fired and "larger than observed" in low.reason
    high = benefit_slope_check(coef(1.8, 0.3))
    assert high.fired and "smaller than observed" in high.reason
    # the slope the model applies before serving: a raw 1.8 served at 2 is 0.9
    assert not benefit_slope_check(coef(1.8, 0.3), applied_slope=2.0).fired


def test_a_benefit_that_does_not_vary_has_no_slope_to_check() -> None:
    flat = benefit_slope_check(coef(float("nan"), float("nan")))
    assert not flat.fired and "same for every patient" in flat.reason
    assert not benefit_slope_check(coef(0.2, 0.1), applied_slope=0.0).fired


def test_the_comparator_fires_when_it_is_clearly_closer_to_the_dr_scores() -> None:
    rng = np.random.default_rng(0)
    tau = rng.normal(0, 1, 2000)
    scores = tau + rng.normal(0, 2, 2000)
    flat = np.zeros(2000)
    better = comparator_check(scores, flat, tau, "T-learner")
    assert better.fired and better.statistic > 0 and better.p_value < 0.05
    worse = comparator_check(scores, tau, flat, "T-learner")
    assert not worse.fired and worse.statistic < 0
    same = comparator_check(scores, tau, tau, "T-learner")
    assert not same.fired


@pytest.fixture(scope="module")
def u_shaped() -> training.TrainResult:
    return training.fit(toy_pipeline(), toy_trial("u", 800, seed=1))


def test_a_linear_model_of_a_u_shaped_benefit_fails_its_checks(
    u_shaped: training.TrainResult,
) -> None:
    checks = u_shaped.checks
    assert u_shaped.chosen == "bayes_linear"
    assert not checks.passed and u_shaped.model.checks is checks
    comparator = checks.get(COMPARATOR)
    assert comparator is not None and comparator.fired
    assert comparator.p_value < 0.001 and "misses structure" in comparator.reason
    warning = checks.warning()
    assert warning is not None and "flexible comparator" in warning
    assert u_shaped.metrics()["check/comparator/fired"] == 1.0


def test_a_linear_model_of_a_linear_benefit_passes_its_checks() -> None:
    result = training.fit(toy_pipeline(), toy_trial("linear", 800, seed=1))
    checks = result.checks
    assert checks.passed and checks.warning() is None
    slope = checks.get(BENEFIT_SLOPE)
    assert slope is not None and slope.ci_low < 1 < slope.ci_high
    assert result.metrics()["check/passed"] == 1.0
