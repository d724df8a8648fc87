"""A Bayesian model average of a smooth effect model and Bayesian Causal Forests: the
posterior of each patient's benefit is the equal mixture of the two posteriors. The smooth
model is `bayes_linear` for a binary outcome and `bayes_basis` (linear plus hinge and
product terms) for a continuous one.

Neither model is right on every trial. `bayes_linear` is sharp when the benefit is close to
linear in the covariates and overconfident when it is not (a step, a U, an interaction:
its posterior cannot see a shape outside its class); `bcf` bends to any shape but pays for
it in variance when the truth is simple. Their mixture's mean averages two errors that are
only partly correlated (more accurate than either on most simulated trial shapes), and its
interval is wide exactly where the two disagree, which is where one of them is wrong: the
mixture covers when one component would not. Equal weights are the prior: at trial size,
out-of-fold stacking weights are mostly noise (docs/training.md, "Choosing a learner").

The components are fitted on the same rows; each keeps the same number of posterior draws
(evenly thinned), so the mixture's draws are their union. Drivers are the average of the
components' drivers, each computed against the component's own posterior means on those
draws: exact, they add up to the mixture's answer.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from personalize.data.columns import shared
from personalize.learners.base import ArmContributions, Kind, PosteriorLearner
from personalize.learners.bayes_basis import BayesBasisLearner
from personalize.learners.bayes_linear import BayesLinearLearner
from personalize.learners.bcf import BCFLearner

DRAWS = 100  # posterior draws kept per component
# The smooth half of the mixture, per outcome kind (chosen on the development families,
# benchmarks/results/development-components/): for a responder the linear model; for a
# continuous change, whose bent truths neither the linear model nor the forests covered,
# the spline-and-interaction model.
SMOOTH: dict[Kind, type[BayesLinearLearner]] = {
    "binary": BayesLinearLearner,
    "continuous": BayesBasisLearner,
}


def _thinned(draws: np.ndarray, k: int) -> np.ndarray:
    return draws[:, np.linspace(0, draws.shape[1] - 1, k).round().astype(int)]


class BayesAverageLearner(PosteriorLearner):
    name = "bayes_average"
    title = "Bayesian model average (smooth model + BCF)"
    description = (
        "Bayesian model average: the equal mixture of a Bayesian smooth effect model "
        "(linear for a responder, splines and interactions for a continuous change; "
        "horseshoe priors) and Bayesian Causal Forests; posterior intervals for each "
        "patient's benefit, wide where the two models disagree"
    )
    complexity = 6  # after both of its components among near-equals
    # The pre-specified learner for both outcome kinds: on the development families of the
    # scenario library the most accurate, with intervals that cover where the linear model
    # alone does not (docs/training.md, "Choosing a learner").
    default_for: tuple[Kind, ...] = ("binary", "continuous")

    def __init__(
        self,
        kind: Kind = "binary",
        seed: int = 0,
        components: tuple[PosteriorLearner, ...] | None = None,
    ) -> None:
        super().__init__(kind, seed)
        self.components = components or (
            SMOOTH[kind](kind, seed),
            BCFLearner(kind, seed),
        )

    def clone(self, seed: int | None = None) -> Self:
        s = self.seed if seed is None else seed
        return type(self)(self.kind, s, tuple(c.clone(s) for c in self.components))

    def out_of_fold(self, seed: int) -> Self:
        """Each component's own (cheaper) out-of-fold copy."""
        return type(self)(self.kind, seed, tuple(c.out_of_fold(seed) for c in self.components))

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        fitted = [c.clone().fit(X, treated, y, weight) for c in self.components]
        # the smooth model samples more draws than the mixture reads: keep those it reads
        self.fitted_ = tuple(
            c.keep_draws(DRAWS) if isinstance(c, BayesLinearLearner) else c for c in fitted
        )
        return self

    def _component_draws(self, X: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each component's arm draws, thinned to the same count; once per input for the
        draws and the drivers (`shared`)."""

        def compute() -> list[tuple[np.ndarray, np.ndarray]]:
            out = []
            for c in self.fitted_:
                d0, d1 = c.arm_draws(X)
                k = min(DRAWS, d0.shape[1])
                out.append((_thinned(d0, k), _thinned(d1, k)))
            return out

        return shared(X, ("bayes-average", id(self)), compute)

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        parts = self._component_draws(X)
        k = min(d0.shape[1] for d0, _ in parts)  # equal weights: as many draws from each
        return (
            np.hstack([_thinned(d0, k) for d0, _ in parts]),
            np.hstack([_thinned(d1, k) for _, d1 in parts]),
        )

    def contributions(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> ArmContributions:
        """The components' drivers averaged; `arms` is accepted for the common interface
        (each component is read against its own means)."""
        parts = self._component_draws(X)
        k = min(d0.shape[1] for d0, _ in parts)
        each = [
            c.contributions(X, arms=(_thinned(d0, k).mean(axis=1), _thinned(d1, k).mean(axis=1)))
            for c, (d0, d1) in zip(self.fitted_, parts, strict=True)
        ]
        names = each[0].names
        if any(e.names != names for e in each):
            raise RuntimeError("the components name the drivers differently")

        def mean(part: str) -> np.ndarray:
            return np.mean([getattr(e, part) for e in each], axis=0)

        return ArmContributions(names, mean("base0"), mean("phi0"), mean("base1"), mean("phi1"))
