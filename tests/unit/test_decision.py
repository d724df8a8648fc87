"""The decision rule: recommendations need evidence of heterogeneity; the average effect
alone recommends nobody (and so never goes against a stated preference)."""

from __future__ import annotations

import numpy as np

from personalize.stats.decision import EITHER, NO_DIFFERENCE, DecisionRule


def rule(evidence: bool = True, heterogeneity: bool = False) -> DecisionRule:
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
    )


# four patients, each with a clear benefit for MBT (interval above zero, beyond the margin)
BENEFIT = np.full(4, 0.2)
LOWER = np.full(4, 0.1)
UPPER = np.full(4, 0.3)
PREFERENCE = np.array(["MBT", "CBT", "none", np.nan], dtype=object)


def test_the_average_effect_alone_recommends_nobody_but_names_the_better_bet() -> None:
    """Without detected heterogeneity a false average effect must not send patients to an
    arm (on a null trial it would send everyone without a contrary preference); the
    rationale says which arm the average favours, and for whom that is the better bet."""
    rec, why = rule(evidence=True, heterogeneity=False).decide(BENEFIT, LOWER, UPPER, PREFERENCE)
    assert list(rec) == [EITHER] * 4
    assert all(w.startswith(NO_DIFFERENCE) and "average effect favours MBT by 20" in w for w in why)
    assert why[0].endswith("stated preference: MBT)") and why[1].endswith("preference: CBT)")
    assert why[2].endswith("without a preference, MBT is the better choice on average)")
    assert why[3] == why[2]  # a missing preference is no preference


def test_the_same_holds_for_the_control_arm() -> None:
    rec, why = rule(evidence=True).decide(-BENEFIT, -UPPER, -LOWER, PREFERENCE)
    assert list(rec) == [EITHER] * 4
    assert "average effect favours CBT" in why[2] and "CBT is the better choice" in why[2]


def test_detected_heterogeneity_may_go_against_a_preference() -> None:
    rec, why = rule(evidence=True, heterogeneity=True).decide(BENEFIT, LOWER, UPPER, PREFERENCE)
    assert list(rec) == ["MBT"] * 4
    assert "higher chance of response" in why[1]


def test_no_evidence_means_either_for_everyone_with_the_preference_named() -> None:
    rec, why = rule(evidence=False).decide(BENEFIT, LOWER, UPPER, PREFERENCE)
    assert list(rec) == [EITHER] * 4
    assert why[0].endswith("stated preference: MBT") and "stated preference" not in why[2]


def test_an_interval_including_zero_or_a_small_benefit_gives_either() -> None:
    r = rule(evidence=True, heterogeneity=True)
    rec, why = r.decide(np.array([0.2, 0.03]), np.array([-0.01, 0.01]), np.array([0.4, 0.05]))
    assert list(rec) == [EITHER, EITHER]
    assert "includes no difference" in why[0] and "below the 5 percentage points margin" in why[1]
