"""PATH effect modeling: penalized regression with treatment-by-covariate interactions."""

from personalize.learners.linear import LinearLearner


class EffectLinearLearner(LinearLearner):
    name = "effect_linear"
    interactions = True
