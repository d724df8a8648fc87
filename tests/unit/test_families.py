"""The scenario library: every family is a STAMP trial of another shape, with an exact truth
(quadrature where the noise is not normal), and a modifier the trial does not record stays
unrecorded while the truth averages over it."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.data.families import DEVELOPMENT, FAMILIES, HEADLINE, HELD_OUT, HIDDEN, scenario_of
from personalize.data.simulate import LIBRARY, SCENARIOS, get_scenario, potential_outcomes, simulate

SPLIT = "docs/scenarios.md"


def test_every_family_is_a_scenario_and_is_split_in_the_docs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / SPLIT).read_text()
    assert sorted(DEVELOPMENT + HELD_OUT) == sorted(FAMILIES)
    assert HEADLINE in HELD_OUT
    for name in FAMILIES:
        assert scenario_of(name) in SCENARIOS
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        split = "development" if name in DEVELOPMENT else "held-out"
        assert row.rstrip(" |").endswith(split)
    assert len(FAMILIES) >= 10


@pytest.mark.parametrize("scenario", sorted(LIBRARY))
def test_a_family_keeps_the_stamp_cohort(scenario: str) -> None:
    """Same seed: same recorded covariates, allocation and dropout as `stamp`."""
    base = simulate("stamp", n=300, seed=4).cohort
    other = simulate(scenario, n=300, seed=4).cohort
    assert list(other.columns) == list(base.columns)
    covariates = [c for c in base.columns if not c.endswith(("_m3", "_m6", "_m9", "_m12"))]
    assert other[covariates].equals(base[covariates])
    assert other["bpi_severity_m6"].isna().equals(base["bpi_severity_m6"].isna())


@pytest.mark.parametrize(
    "scenario", ["stamp-logit", "stamp-heavy-tails", "stamp-heteroscedastic", "stamp-unmeasured"]
)
def test_the_truth_matches_many_draws_of_the_outcome(scenario: str) -> None:
    """The responder probability and the expected change of the primary follow-up, per arm,
    agree with the mean over 400 draws of each patient's potential outcomes."""
    trial = simulate(scenario, n=200, seed=2)
    sc = get_scenario(scenario)
    frame = trial.cohort
    rng = np.random.default_rng(0)
    b = frame["bpi_severity"].to_numpy()
    hits = {arm: np.zeros(len(frame)) for arm in sc.arms}
    change = {arm: np.zeros(len(frame)) for arm in sc.arms}
    draws = 400
    for _ in range(draws):
        hidden = rng.random(len(frame)) < 0.5  # the unrecorded trait, drawn afresh
        per_arm = potential_outcomes(scenario, frame.assign(**{HIDDEN: hidden * 1.0}), rng)
        for arm in sc.arms:
            follow = per_arm[arm]["bpi_severity_m6"].to_numpy()
            hits[arm] += follow <= 0.7 * b
            change[arm] += follow - b
    for arm in sc.arms:
        p_mc, c_mc = hits[arm] / draws, change[arm] / draws
        p, c = trial.truth[f"p_response_{arm}"].to_numpy(), trial.truth[f"expected_change_{arm}"]
        # 400 draws: the SE of a probability is at most 0.025, of a mean change about 0.1
        assert np.abs(p_mc - p).mean() < 0.025
        assert abs(float(np.mean(c_mc - c))) < 0.03
        assert np.corrcoef(c_mc, c)[0, 1] > 0.9


def test_the_unmeasured_modifier_is_not_recorded_and_moves_the_outcome() -> None:
    trial = simulate("stamp-unmeasured", n=4000, seed=3)
    assert HIDDEN not in trial.cohort.columns
    frame = trial.cohort
    rng = np.random.default_rng(1)
    with_trait = potential_outcomes("stamp-unmeasured", frame.assign(**{HIDDEN: 1.0}), rng)
    without = potential_outcomes("stamp-unmeasured", frame.assign(**{HIDDEN: 0.0}), rng)
    # the trait favours MBT by one BPI point on average (MBT minus CBT change)
    effect = lambda po: (po["MBT"]["bpi_severity_m6"] - po["CBT"]["bpi_severity_m6"]).mean()  # noqa: E731
    assert effect(with_trait) - effect(without) == pytest.approx(-1.0, abs=0.15)


@pytest.mark.parametrize("family", ["null", "null-curved"])
def test_a_null_family_has_no_benefit_for_anyone(family: str) -> None:
    scenario = "stamp-null" if family == "null" else f"stamp-{family}"
    truth = simulate(scenario, n=500, seed=1).truth
    assert np.array_equal(truth["p_response_MBT"], truth["p_response_CBT"])
    assert np.array_equal(truth["expected_change_MBT"], truth["expected_change_CBT"])
