"""Peers: published effect estimators fitted on the same cohorts as ours.

A peer is one subclass of `Peer`: a `name`, the optional `package` it needs, and
`fit` / `benefit` / (optionally) `interval`. Every subclass of `Peer` is a peer; the
default study runs them in the order they are defined here.

How the peers see the data, so the comparison is of the causal method and nothing else:

- Missing outcomes: fitted on the observed rows with the same IPCW weights as ours as
  `sample_weight` (EconML); CausalML's meta-learners accept no sample weights, so the
  X-learner is fitted on complete cases unweighted (the conditional effect is identified
  without weights under missing-at-random given baseline and arm; the weights only change
  where the fit puts its emphasis).
- Propensity is the known allocation ratio everywhere (`DummyClassifier(strategy="prior")`
  for EconML, `p=` for CausalML).
- Base learners are the same trial-sized LightGBM as ours (`learners.boosting.booster`), so
  the comparison is not of the booster's tuning.
- Features are encoded once (numeric standardized and mean-imputed, categorical one-hot), as
  for our linear learners.
- Recommendations: the same rule as ours without the evidence gate: the sign of the benefit
  when the peer's interval excludes zero and `|benefit| >= decision.margin`, else `either`.

EconML and CausalML are the optional `bench` extra, so each adapter imports its library
inside `fit`: the study runs without them when peers are off. stochtree is a dependency of
the product itself (the `bcf` learner); the BCF peer runs it as a researcher would, with the
reference settings and no weights.
"""

from __future__ import annotations

import importlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.special import ndtr
from sklearn.dummy import DummyClassifier

from personalize.config import Pipeline
from personalize.data.validate import Cohort
from personalize.learners.boosting import booster
from personalize.learners.linear import LinearDesign
from personalize.stats.missingness import ipcw_weights
from personalize.study.truth import Prediction, sign_bet

CF_TREES = 500


@dataclass
class PeerData:
    """A training cohort encoded for the peers, with our IPCW weights."""

    Z: np.ndarray  # all training patients
    Z_test: np.ndarray
    treated: np.ndarray
    y: np.ndarray
    observed: np.ndarray
    weight: np.ndarray
    allocation: float
    binary: bool


def peer_data(pipeline: Pipeline, cohort: Cohort, X_test: pd.DataFrame) -> PeerData:
    cfg = pipeline.training
    obs = cohort.observed
    ipcw = ipcw_weights(cohort.X, cohort.treated, obs, pipeline.outcome.missing, cfg.ipcw_clip)
    design = LinearDesign().fit(cohort.X, np.ones(len(cohort)))
    return PeerData(
        Z=design.transform(cohort.X),
        Z_test=design.transform(X_test),
        treated=cohort.treated.astype(int),
        y=cohort.y,
        observed=obs,
        weight=ipcw.weights,
        allocation=float(cohort.treated.mean()),
        binary=pipeline.outcome.kind == "binary",
    )


class Peer(ABC):
    """One peer method: fit on a training cohort, then a benefit (and interval) per patient."""

    name: ClassVar[str]
    title: ClassVar[str]
    package: ClassVar[str]  # the import name of the optional library it needs

    def __init__(self, level: float, seed: int, bootstrap: int) -> None:
        self.level = level  # the interval's nominal level (the pipeline's interval_level)
        self.seed = seed
        self.bootstrap = bootstrap  # resamples, for peers whose interval is a bootstrap

    @abstractmethod
    def fit(self, data: PeerData) -> None:
        """Fit on the training cohort `data.Z` (outcomes observed where `data.observed`)."""

    @abstractmethod
    def benefit(self, Z: np.ndarray) -> np.ndarray:
        """Predicted benefit (treatment minus control) of encoded patients `Z`."""

    def interval(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper) of the benefit at `level`; None for a peer without intervals."""
        return None


class CausalForest(Peer):
    name = "causal_forest"
    title = "EconML CausalForestDML"
    package = "econml"

    def fit(self, data: PeerData) -> None:
        from econml.dml import CausalForestDML  # optional extra (module docstring)

        o = data.observed
        self.model = CausalForestDML(
            model_y=booster(data.binary, self.seed),
            model_t=DummyClassifier(strategy="prior"),
            discrete_treatment=True,
            discrete_outcome=data.binary,
            cv=5,
            n_estimators=CF_TREES,
            n_jobs=1,
            random_state=self.seed,
        )
        self.model.fit(data.y[o], data.treated[o], X=data.Z[o], sample_weight=data.weight[o])

    def benefit(self, Z: np.ndarray) -> np.ndarray:
        return np.ravel(self.model.effect(Z))

    def interval(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.model.effect_interval(Z, alpha=1 - self.level)
        return np.ravel(lo), np.ravel(hi)


class EconMLDR(Peer):
    name = "econml_dr"
    title = "EconML DRLearner"
    package = "econml"

    def fit(self, data: PeerData) -> None:
        from econml.dr import DRLearner  # optional extra (module docstring)

        o = data.observed
        self.model = DRLearner(
            model_propensity=DummyClassifier(strategy="prior"),
            model_regression=booster(data.binary, self.seed),
            discrete_outcome=data.binary,
            cv=5,
            random_state=self.seed,
        )
        self.model.fit(data.y[o], data.treated[o], X=data.Z[o], sample_weight=data.weight[o])

    def benefit(self, Z: np.ndarray) -> np.ndarray:
        return np.ravel(self.model.effect(Z))

    def interval(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.model.effect_interval(Z, alpha=1 - self.level)
        return np.ravel(lo), np.ravel(hi)


class CausalMLX(Peer):
    """CausalML's X-learner on complete cases (its fit takes no weights); interval from
    `bootstrap` refits on arm-stratified resamples (percentile), as CausalML's own
    `fit_predict(return_ci=True)` does for the training rows."""

    name = "causalml_x"
    title = "CausalML X-learner (LightGBM)"
    package = "causalml"

    def fit(self, data: PeerData) -> None:
        self.allocation = data.allocation
        o = np.flatnonzero(data.observed)
        self.model = self._fit(data, o, self.seed)
        rng = np.random.default_rng(self.seed)
        arms = [o[data.treated[o] == a] for a in (0, 1)]
        self.resampled = []
        for k in range(self.bootstrap):
            rows = np.concatenate([rng.choice(idx, len(idx), replace=True) for idx in arms])
            self.resampled.append(self._fit(data, rows, self.seed + 7919 * (k + 1)))

    @staticmethod
    def _fit(data: PeerData, rows: np.ndarray, seed: int) -> Any:
        # optional extra (module docstring)
        from causalml.inference.meta import BaseXClassifier, BaseXRegressor

        if data.binary:
            model: Any = BaseXClassifier(
                outcome_learner=booster(True, seed), effect_learner=booster(False, seed)
            )
        else:
            model = BaseXRegressor(learner=booster(False, seed))
        model.fit(
            data.Z[rows], data.treated[rows], data.y[rows], p=np.full(len(rows), data.allocation)
        )
        return model

    def _predict(self, model: Any, Z: np.ndarray) -> np.ndarray:
        return np.ravel(model.predict(Z, p=np.full(len(Z), self.allocation), verbose=False))

    def benefit(self, Z: np.ndarray) -> np.ndarray:
        return self._predict(self.model, Z)

    def interval(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        draws = np.column_stack([self._predict(m, Z) for m in self.resampled])
        tail = 50 * (1 - self.level)
        lo, hi = np.percentile(draws, [tail, 100 - tail], axis=1)
        return lo, hi


class BayesianCausalForest(Peer):
    """Bayesian Causal Forests (Hahn, Murray & Carvalho 2020) from `stochtree`, as a
    researcher would run them: fitted on the observed patients (no weights), the known
    propensity, a probit link for a binary outcome, 10 warm-start + 500 burn-in + 1000
    posterior draws, defaults otherwise. Benefit is the posterior mean of
    Phi(control + effect) - Phi(control) (the effect itself for a continuous outcome);
    the interval is its equal-tailed posterior interval."""

    name = "bcf"
    title = "Bayesian Causal Forests (stochtree)"
    package = "stochtree"
    GFR, BURNIN, DRAWS = 10, 500, 1000

    def fit(self, data: PeerData) -> None:
        from stochtree import BCFModel, OutcomeModel  # optional extra (module docstring)

        o = data.observed
        self.binary = data.binary
        self.allocation = data.allocation
        outcome = (
            OutcomeModel(outcome="binary", link="probit")
            if data.binary
            else OutcomeModel(outcome="continuous", link="identity")
        )
        self.model = BCFModel()
        self.model.sample(
            X_train=data.Z[o],
            Z_train=data.treated[o].astype(float),
            y_train=data.y[o].astype(float),
            propensity_train=np.full(int(o.sum()), data.allocation),
            num_gfr=self.GFR,
            num_burnin=self.BURNIN,
            num_mcmc=self.DRAWS,
            general_params={
                "outcome_model": outcome,
                "random_seed": self.seed,
                "num_threads": 1,
            },
        )

    def draws(self, Z: np.ndarray) -> np.ndarray:
        """Posterior draws of each patient's benefit (patients x draws)."""
        n = len(Z)
        out = self.model.predict(
            X=Z,
            Z=np.zeros(n),
            propensity=np.full(n, self.allocation),
            terms=["mu", "tau"],
            type="posterior",
        )
        control, effect = np.atleast_2d(out["mu_hat"]), np.atleast_2d(out["tau_hat"])
        if not self.binary:
            return effect
        return ndtr(control + effect) - ndtr(control)

    def benefit(self, Z: np.ndarray) -> np.ndarray:
        return self.draws(Z).mean(axis=1)

    def interval(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tail = (1 - self.level) / 2
        lo, hi = np.quantile(self.draws(Z), [tail, 1 - tail], axis=1)
        return lo, hi


def peers() -> dict[str, type[Peer]]:
    """Every peer by name, in definition order."""
    return {cls.name: cls for cls in Peer.__subclasses__()}


PEERS: tuple[str, ...] = tuple(peers())


def peer_class(name: str) -> type[Peer]:
    known = peers()
    if name not in known:
        raise ValueError(f"unknown peer {name!r}; choose from {tuple(known)}")
    return known[name]


def require_packages(names: Sequence[str]) -> None:
    """Import the libraries the named peers need, so a missing optional extra fails at once
    (ImportError) rather than after the first replication's training."""
    for package in sorted({peer_class(name).package for name in names}):
        importlib.import_module(package)


def peer_recommendations(
    benefit: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None, margin: float
) -> np.ndarray:
    """Sign of the benefit when the interval excludes zero and |benefit| >= margin."""
    lo = benefit if lower is None else lower
    hi = benefit if upper is None else upper
    rec = np.zeros(len(benefit), dtype=int)
    rec[(lo > 0) & (benefit >= margin)] = 1
    rec[(hi < 0) & (benefit <= -margin)] = -1
    return rec


def run_peer(name: str, pipeline: Pipeline, data: PeerData, seed: int) -> Prediction:
    """One peer fitted on one training cohort; its answer for the test patients. Its
    average effect (which resolves `either` without a preference) is its mean predicted
    benefit on the training cohort."""
    cfg = pipeline.training
    peer = peer_class(name)(cfg.interval_level, seed, cfg.bootstrap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries' deprecation and convergence noise
        peer.fit(data)
        b = peer.benefit(data.Z_test)
        bounds = peer.interval(data.Z_test)
        ate = float(np.mean(peer.benefit(data.Z)))
    lo, hi = bounds if bounds is not None else (None, None)
    rec = peer_recommendations(b, lo, hi, pipeline.decision.margin)
    return Prediction(b, lo, hi, rec, ate, bet=sign_bet(b))  # a peer's bet: its estimate's side
