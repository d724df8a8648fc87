"""Candidate effect learners, all behind `EffectLearner`. Adding one is adding one file
and one line below."""

from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner, Kind
from personalize.learners.dr_learner import DRLearner
from personalize.learners.effect_linear import EffectLinearLearner
from personalize.learners.risk_linear import RiskLinearLearner
from personalize.learners.s_learner import SLearner
from personalize.learners.t_learner import TLearner
from personalize.learners.x_learner import XLearner

LEARNERS: dict[str, type[EffectLearner]] = {
    cls.name: cls
    for cls in (TLearner, SLearner, XLearner, DRLearner, EffectLinearLearner, RiskLinearLearner)
}


def make_learner(name: str, kind: Kind, seed: int) -> EffectLearner:
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose from {sorted(LEARNERS)}")
    return LEARNERS[name](kind=kind, seed=seed)


__all__ = ["ARM_DRIVER", "LEARNERS", "ArmContributions", "EffectLearner", "make_learner"]
