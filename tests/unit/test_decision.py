"""The decision rule: recommendations need evidence of heterogeneity; the average effect
alone recommends nobody (and so never goes against a stated preference); a patient left at
`either` without a preference is told the better bet when the model passed its checks and
the favoured arm is better with at least the rule's probability, one with a preference
never is."""

from __future__ import annotations

import numpy as np

from personalize.stats.decision import EITHER, NO_DIFFERENCE, DecisionRule


def rule(
    evidence: bool = True, heterogeneity: bool = False, checks_passed: bool = True
) -> DecisionRule:
    return DecisionRule(
        treatment="MBT",
        control="CBT",
        margin=0.05,
        level=0.9,
        alpha=0.05,
        evidence=evidence,
        evidence_reason="test",
        binary=True,
        heterogeneity=heterogeneity,
        bet_level=0.8,
        checks_passed=checks_passed,
    )


# four patients, each with a clear benefit for MBT (interval above zero, beyond the margin)
BENEFIT = np.full(4, 0.2)
LOWER = np.full(4, 0.1)
UPPER = np.full(4, 0.3)
PREFERENCE = np.array(["MBT", "CBT", "none", np.nan], dtype=object)
SURE = np.full(4, 0.9)  # the probability that MBT is better


def test_the_probability_takes_its_article() -> None:
    from personalize.stats.decision import _article

    assert [_article(p) for p in (0.8, 0.86, 0.9, 0.11, 0.18, 0.5)] == [
        "an",
        "an",
        "a",
        "an",
        "an",
        "a",
    ]


def test_the_average_effect_alone_recommends_nobody_but_names_the_better_bet() -> None:
    """Without detected heterogeneity a false average effect must not send patients to an
    arm (on a null trial it would send everyone without a contrary preference); the
    rationale says which arm the average favours, and for whom that is the better bet."""
    rec, why, bet, bet_p = rule(evidence=True, heterogeneity=False).decide(
        BENEFIT, LOWER, UPPER, PREFERENCE, SURE
    )
    assert list(rec) == [EITHER] * 4
    assert all(w.startswith(NO_DIFFERENCE) and "estimate favours MBT by 20" in w for w in why)
    assert why[0].endswith("stated preference: MBT)") and why[1].endswith("preference: CBT)")
    assert why[2].endswith(
        "without a preference, MBT is the better bet: a 90% probability that its chance of "
        "response is higher, by 20 percentage points)"
    )
    assert why[3] == why[2]  # a missing preference is no preference
    assert list(bet) == [None, None, "MBT", "MBT"]  # never against (or beside) a preference
    assert np.isnan(bet_p[:2]).all() and list(bet_p[2:]) == [0.9, 0.9]


def test_the_same_holds_for_the_control_arm() -> None:
    rec, why, bet, bet_p = rule(evidence=True).decide(
        -BENEFIT, -UPPER, -LOWER, PREFERENCE, 1 - SURE
    )
    assert list(rec) == [EITHER] * 4
    assert "estimate favours CBT" in why[2] and "CBT is the better bet: a 90% probability" in why[2]
    assert list(bet) == [None, None, "CBT", "CBT"] and bet_p[2] == 0.9


def test_detected_heterogeneity_may_go_against_a_preference() -> None:
    rec, why, bet, _ = rule(evidence=True, heterogeneity=True).decide(
        BENEFIT, LOWER, UPPER, PREFERENCE, SURE
    )
    assert list(rec) == ["MBT"] * 4
    assert "higher chance of response" in why[1]
    assert list(bet) == [None] * 4  # a recommendation is not a bet


def test_no_evidence_means_either_for_everyone_with_the_preference_named() -> None:
    rec, why, bet, _ = rule(evidence=False).decide(BENEFIT, LOWER, UPPER, PREFERENCE, SURE)
    assert list(rec) == [EITHER] * 4
    assert why[0].endswith("stated preference: MBT)") and "stated preference" not in why[2]
    assert list(bet) == [None, None, "MBT", "MBT"]


def test_an_interval_including_zero_or_a_small_benefit_gives_either() -> None:
    r = rule(evidence=True, heterogeneity=True)
    rec, why, bet, _ = r.decide(
        np.array([0.2, 0.03]), np.array([-0.01, 0.01]), np.array([0.4, 0.05]), None, SURE[:2]
    )
    assert list(rec) == [EITHER, EITHER]
    assert "includes no difference" in why[0] and "below the 5 percentage points margin" in why[1]
    assert list(bet) == ["MBT", "MBT"]  # no preference given: the favoured side


def test_a_zero_estimate_names_no_better_bet() -> None:
    rec, why, bet, _ = rule(evidence=False).decide(
        np.zeros(1), -np.ones(1), np.ones(1), None, np.full(1, 0.5)
    )
    assert list(rec) == [EITHER] and list(bet) == [None]
    assert why[0] == f"{NO_DIFFERENCE} (the trial data show no reliable difference between arms)"


def test_the_better_bet_follows_each_patients_own_estimate() -> None:
    """Two patients of one model on opposite sides of zero, neither with a preference nor
    with a reliable difference: each is told the arm the model favours for them."""
    r = rule(evidence=True, heterogeneity=True)
    rec, _, bet, bet_p = r.decide(
        np.array([0.04, -0.04]),
        np.array([-0.1, -0.2]),
        np.array([0.2, 0.1]),
        None,
        np.array([0.85, 0.1]),
    )
    assert list(rec) == [EITHER, EITHER] and list(bet) == ["MBT", "CBT"]
    assert list(bet_p) == [0.85, 0.9]


def test_no_better_bet_below_the_rules_probability() -> None:
    """An arm favoured with less than `bet_level` probability is no bet: the rationale says
    so and names no arm."""
    rec, why, bet, bet_p = rule(evidence=True, heterogeneity=True).decide(
        np.array([0.04, -0.04]),
        np.array([-0.1, -0.2]),
        np.array([0.2, 0.1]),
        None,
        np.array([0.79, 0.25]),
    )
    assert list(rec) == [EITHER, EITHER] and list(bet) == [None, None]
    assert np.isnan(bet_p).all()
    for text in why:
        assert text.endswith("; no arm is favoured with at least 80% probability)")
        assert "better bet" not in text


def test_no_better_bet_from_a_model_that_failed_its_checks() -> None:
    _, why, bet, bet_p = rule(evidence=False, checks_passed=False).decide(
        BENEFIT, LOWER, UPPER, PREFERENCE, np.full(4, 0.99)
    )
    assert list(bet) == [None] * 4 and np.isnan(bet_p).all()
    assert why[2].endswith("; no better bet: the model failed its checks)")
    assert why[0].endswith("stated preference: MBT)")


def test_the_bet_never_goes_against_a_stated_preference() -> None:
    """Whatever the probability, a patient with a preference is told no bet."""
    preference = np.array(["CBT", "MBT"], dtype=object)
    _, why, bet, _ = rule(evidence=False).decide(
        np.array([0.2, -0.2]),
        np.array([0.1, -0.3]),
        np.array([0.3, -0.1]),
        preference,
        np.array([0.99, 0.01]),
    )
    assert list(bet) == [None, None]
    assert why[0].endswith("stated preference: CBT)") and why[1].endswith("preference: MBT)")
