"""The decision rule: recommendations need evidence, and never go against a stated
preference on the average effect alone."""

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


def test_average_effect_alone_never_overrules_a_stated_preference() -> None:
    rec, why = rule(evidence=True, heterogeneity=False).decide(BENEFIT, LOWER, UPPER, PREFERENCE)
    # preferring MBT, no preference, missing preference: MBT; preferring CBT: either
    assert list(rec) == ["MBT", EITHER, "MBT", "MBT"]
    assert why[1].startswith(NO_DIFFERENCE)
    assert "average effect favours MBT" in why[1] and "stated preference: CBT" in why[1]


def test_the_same_holds_for_the_control_arm() -> None:
    rec, _ = rule(evidence=True).decide(-BENEFIT, -UPPER, -LOWER, PREFERENCE)
    assert list(rec) == [EITHER, "CBT", "CBT", "CBT"]


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
