"""PATH effect modeling: penalized regression with treatment-by-covariate interactions."""

from personalize.learners.linear import LinearLearner


class EffectLinearLearner(LinearLearner):
    name = "effect_linear"
    title = "PATH effect model (linear)"
    description = "PATH effect model: penalized regression with treatment-by-covariate interactions"
    linear = True
    complexity = 10
    interactions = True
