"""PATH risk modeling: a baseline-risk model with a constant relative treatment effect.

Benefit on the probability scale still varies with baseline risk; on the log-odds scale
it is one number for everyone."""

from personalize.learners.linear import LinearLearner


class RiskLinearLearner(LinearLearner):
    name = "risk_linear"
    title = "PATH risk model (linear)"
    description = "PATH risk model: baseline-risk regression with a constant relative effect"
    linear = True
    complexity = 20
    interactions = False
