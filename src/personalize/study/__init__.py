"""The recovery study: does the training pipeline find the truth, and stay quiet on noise?

For a simulator scenario and its pipeline, `replications` fresh training cohorts (different
seeds) are each run through the whole training pipeline (`training.fit`) and scored against
the simulator's truth on ONE independent simulated test set. Peers (EconML's
`CausalForestDML` and `DRLearner`, CausalML's X-learner over LightGBM) are fitted on the
same cohorts and scored on the same test set.

Definitions (every number in the tables):

- **true benefit**: binary outcomes `p_response_T - p_response_C` (probability scale);
  continuous paired outcomes (improvement = baseline - follow-up) `-(expected_change_T -
  expected_change_C)`. The arms' true expected outcomes (higher is better) score policies.
- **PEHE**: root mean squared error of the predicted benefit over the test patients. The
  reference is `sd(true benefit)`, the PEHE of the best constant predictor (the true
  average effect for everyone): a method with PEHE above it has learned nothing usable.
- **policy value** of a method's recommendations: the mean true expected outcome when every
  test patient gets the arm the method recommends. `either` is resolved as the product
  says it should be ("follow patient preference"): the patient's stated preferred arm, and
  for patients without a preference the better arm by the method's own average-effect
  estimate (ours: the AIPW average effect; peers: the mean predicted benefit on their
  training cohort). `regret` = oracle value (every patient on their truly better arm) minus
  policy value; `gain` = policy value minus treating everyone with the truly better single
  arm. Also reported: `regret_avgarm` (`either` -> the method's better average arm for
  everyone) and `regret_plugin` (treat whenever the point benefit is > 0, no abstention).
- **accuracy**: among patients with a non-`either` recommendation, the share whose
  recommended arm is truly better (a true benefit of exactly 0, as everywhere on
  `stamp-null`, counts as wrong: the recommendation had no basis).
- **coverage**: share of test patients whose true benefit lies inside their interval
  (target: the pipeline's `training.interval_level`). `group_coverage`: coverage of the
  model's *projected* benefit target, the mean true benefit of the test patients in the
  same twentile of predicted benefit (what a calibrated model can promise at best).
- **heterogeneity rejection**: `heterogeneity_p < decision.alpha` (ours only; power on
  `stamp`, type I error on `stamp-null`). Candidate learners' unadjusted BLP p-values and
  an ACAT (Cauchy) combination of them are kept for diagnosis.
- **peer recommendations**: the same rule as ours without the evidence gate: the sign of the
  benefit when the peer's interval excludes zero and `|benefit| >= decision.margin`,
  else `either`.

Peers' handling of missing outcomes: fitted on the observed rows with the same IPCW weights
as ours as `sample_weight` (EconML); CausalML's meta-learners accept no sample weights, so
the X-learner is fitted on complete cases unweighted (the conditional effect is identified
without weights under missing-at-random given baseline and arm; the weights only change
where the fit puts its emphasis). Propensity is the known allocation ratio everywhere
(`DummyClassifier(strategy="prior")` for EconML, `p=` for CausalML). Base learners are the
same trial-sized LightGBM as ours (`learners.boosting.TRIAL_PARAMS`), so the comparison is
of the causal method, not of the booster's tuning. Features are encoded once (numeric
standardized and mean-imputed, categorical one-hot), as for our linear learners.

Seeds: `numpy.random.SeedSequence(seed).generate_state(1 + R)`: word 0 simulates the test
set, word r the r-th training cohort; the words are prefix-stable, so replication r is the
same cohort whatever R is, and `stamp` and `stamp-null` replications share covariates,
noise and dropout. The same seed gives the same numbers.

Heavy libraries are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from personalize.learners import learner_class

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from personalize.config import Pipeline
    from personalize.data.validate import Cohort
    from personalize.training import TrainResult

OURS = "ours"
PEERS: tuple[str, ...] = ("causal_forest", "econml_dr", "causalml_x")
PEER_LABELS = {
    OURS: "personalize (chosen learner)",
    "causal_forest": "EconML CausalForestDML",
    "econml_dr": "EconML DRLearner",
    "causalml_x": "CausalML X-learner (LightGBM)",
}
DEFAULT_PIPELINES = {
    "stamp": "pipelines/stamp.yaml",
    "stamp-null": "pipelines/stamp-null.yaml",
    "optimum": "pipelines/optimum.yaml",
}
SAMPLE_SIZES: tuple[int, ...] = (400, 770, 1500, 3000)
EXPERIMENT = "recovery-study"
TEST_N = 5000
GROUPS = 20  # twentiles of predicted benefit for the projected-benefit coverage
CF_TREES = 500
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class Truth:
    """Each test patient's true expected outcome (higher is better) under each arm."""

    control: np.ndarray
    treatment: np.ndarray

    @property
    def benefit(self) -> np.ndarray:
        return self.treatment - self.control

    @property
    def oracle_value(self) -> float:
        import numpy as np

        return float(np.maximum(self.treatment, self.control).mean())

    @property
    def best_arm_value(self) -> float:
        return float(max(self.treatment.mean(), self.control.mean()))

    def value(self, treat: np.ndarray) -> float:
        import numpy as np

        return float(np.where(treat, self.treatment, self.control).mean())


def truth_of(truth: pd.DataFrame, pipeline: Pipeline, scenario: str) -> Truth:
    """The simulator's truth on the pipeline's outcome scale.

    The truth file describes the scenario's shipped outcome (its follow-up column and
    responder definition); a pipeline asking for another outcome cannot be scored."""
    from personalize.config import load_pipeline

    shipped = load_pipeline(DEFAULT_PIPELINES[_base_scenario(scenario)]).outcome
    out = pipeline.outcome
    if (out.baseline, out.followup) != (shipped.baseline, shipped.followup):
        raise ValueError(
            f"the simulator's truth for {scenario!r} is about {shipped.baseline} -> "
            f"{shipped.followup}; the pipeline's outcome ({out.baseline} -> {out.followup}) "
            "cannot be scored against it"
        )
    arm = pipeline.cohort.arm
    if out.kind == "binary":
        if out.responder != shipped.responder:
            raise ValueError(
                f"the truth's responder definition is {shipped.responder}; the pipeline's "
                f"({out.responder}) cannot be scored against it"
            )
        return Truth(
            truth[f"p_response_{arm.control}"].to_numpy(dtype=float),
            truth[f"p_response_{arm.treatment}"].to_numpy(dtype=float),
        )
    # improvement = baseline - follow-up, so E[improvement] = -E[follow-up - baseline]
    return Truth(
        -truth[f"expected_change_{arm.control}"].to_numpy(dtype=float),
        -truth[f"expected_change_{arm.treatment}"].to_numpy(dtype=float),
    )


def _base_scenario(scenario: str) -> str:
    if scenario not in DEFAULT_PIPELINES:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {sorted(DEFAULT_PIPELINES)}")
    return scenario


def study_seeds(seed: int, replications: int) -> tuple[int, list[int]]:
    """(test-set seed, training-cohort seeds); prefix-stable in `replications`."""
    import numpy as np

    words = np.random.SeedSequence(seed).generate_state(1 + replications)
    return int(words[0]), [int(w) for w in words[1:]]


# --------------------------------------------------------------------------- scoring


@dataclass
class Prediction:
    """One method's answer for the test patients, and how it resolves `either`."""

    benefit: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    recommend: np.ndarray  # +1 treatment, -1 control, 0 either
    ate: float  # the method's own average-effect estimate (resolves `either` w/o preference)
    extra: dict[str, Any] = field(default_factory=dict)


def peer_recommendations(
    benefit: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None, margin: float
) -> np.ndarray:
    """Sign of the benefit when the interval excludes zero and |benefit| >= margin."""
    import numpy as np

    lo = benefit if lower is None else lower
    hi = benefit if upper is None else upper
    rec = np.zeros(len(benefit), dtype=int)
    rec[(lo > 0) & (benefit >= margin)] = 1
    rec[(hi < 0) & (benefit <= -margin)] = -1
    return rec


def projected_target(benefit: np.ndarray, tau: np.ndarray, groups: int = GROUPS) -> np.ndarray:
    """Mean true benefit of the patients in the same quantile group of predicted benefit
    (patients with identical predictions always share a group)."""
    import numpy as np

    edges = np.unique(np.quantile(benefit, np.linspace(0, 1, groups + 1)))
    idx = np.searchsorted(edges[1:-1], benefit, side="right")
    sums = np.bincount(idx, weights=tau, minlength=len(edges))
    counts = np.bincount(idx, minlength=len(edges))
    return np.asarray((sums / np.maximum(counts, 1))[idx], dtype=float)


def score(
    pred: Prediction, truth: Truth, preference: np.ndarray, treatment: str, control: str
) -> dict[str, float]:
    """Every per-replication metric of one method against the truth (module docstring)."""
    import numpy as np

    tau = truth.benefit
    b = pred.benefit
    m: dict[str, float] = {
        "pehe": float(np.sqrt(np.mean((b - tau) ** 2))),
        "sd_true": float(tau.std()),
        "bias": float(b.mean() - tau.mean()),
        "sd_pred": float(b.std()),
        # a flat prediction (slope clipped to 0) varies only by rounding: no correlation
        "corr": float(np.corrcoef(b, tau)[0, 1])
        if b.std() > 1e-9 and tau.std() > 1e-9
        else math.nan,
    }
    if pred.lower is not None and pred.upper is not None:
        inside = (pred.lower <= tau) & (tau <= pred.upper)
        target = projected_target(b, tau)
        m["coverage"] = float(inside.mean())
        m["group_coverage"] = float(((pred.lower <= target) & (target <= pred.upper)).mean())
        m["width"] = float(np.median(pred.upper - pred.lower))
    else:
        m["coverage"] = m["group_coverage"] = m["width"] = math.nan
    rec = pred.recommend
    active = rec != 0
    m["share_either"] = float(1 - active.mean())
    m["accuracy"] = float((rec[active] * tau[active] > 0).mean()) if active.any() else math.nan
    avg_arm = pred.ate > 0
    stated = np.where(
        preference == treatment, True, np.where(preference == control, False, avg_arm)
    )
    oracle = truth.oracle_value
    best = truth.best_arm_value
    value = truth.value(np.where(active, rec > 0, stated))
    m["value"] = value
    m["regret"] = oracle - value
    m["gain"] = value - best
    m["regret_avgarm"] = oracle - truth.value(np.where(active, rec > 0, avg_arm))
    m["regret_plugin"] = oracle - truth.value(b > 0)
    m["value_oracle"] = oracle
    m["value_best_arm"] = best
    m["regret_best_arm"] = oracle - best
    m["regret_preference"] = oracle - truth.value(
        np.where(
            preference == treatment,
            True,
            np.where(preference == control, False, truth.treatment.mean() > truth.control.mean()),
        )
    )
    return m


# --------------------------------------------------------------------------- ours


def acat(p_values: Sequence[float]) -> float:
    """Cauchy combination (Liu & Xie 2020) of p-values: valid under arbitrary dependence
    (asymptotically), so it suits correlated candidate learners better than Bonferroni."""
    import numpy as np

    p = np.clip(np.asarray([v for v in p_values if np.isfinite(v)], dtype=float), 1e-15, 1.0)
    if len(p) == 0:
        return math.nan
    p = np.minimum(p, 1 - 1e-15)
    t = float(np.mean(np.tan((0.5 - p) * np.pi)))
    return float(0.5 - np.arctan(t) / np.pi)


def run_ours(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    test: pd.DataFrame,
    diagnose: bool = True,
    adjust: int | None = None,
) -> tuple[Prediction, TrainResult]:
    """The whole training pipeline on one cohort; its model's answer for the test set.

    `adjust` (experiment): re-derive the heterogeneity p-value as the chosen learner's BLP
    p-value times `adjust` instead of times the number of candidates, and the decision
    rule's evidence from it (e.g. a single pre-specified learner that still pays for the
    six-learner search: `training.learners=[effect_linear]`, `adjust=6`)."""
    import dataclasses

    import numpy as np

    from personalize import training

    result = training.fit(pipeline, frame)
    model = result.model
    if adjust is not None:
        p = min(1.0, result.blp.differential_forest_prediction.p_value * adjust)
        result.heterogeneity_p = p
        evidence = p < model.rule.alpha or result.blp.ate_detected(model.rule.alpha)
        model = dataclasses.replace(model, rule=dataclasses.replace(model.rule, evidence=evidence))
    out = model.predict(test, explain=0)
    arm = pipeline.cohort.arm
    labels = out["recommendation"].to_numpy(dtype=object)
    rec = np.where(labels == arm.treatment, 1, np.where(labels == arm.control, -1, 0))
    rule = model.rule
    cand_p = {
        name: c.blp.differential_forest_prediction.p_value for name, c in result.candidates.items()
    }
    extra: dict[str, Any] = {
        "chosen": result.chosen,
        "heterogeneity_p": result.heterogeneity_p,
        "het_reject": float(result.heterogeneity_p < rule.alpha),
        "evidence": float(rule.evidence),
        "ate_hat": result.blp.ate,
        "ate_p": result.blp.ate_p_value,
        "ate_reject": float(result.blp.ate_p_value < rule.alpha),
        "autoc_excludes_zero": float(result.autoc.ci_low > 0),
        "benefit_slope": model.benefit_calibration.slope,
        "benefit_slope_raw": model.benefit_calibration.raw_slope,
        "benefit_slope_se": model.benefit_calibration.slope_se,
        "acat_p": acat(list(cand_p.values())),
        **{f"cand_{k}_p": v for k, v in cand_p.items()},
        **{f"cand_{k}_dr_loss": c.dr_loss for k, c in result.candidates.items()},
        **{f"cand_{k}_r_loss": c.r_loss for k, c in result.candidates.items()},
        **{
            f"cand_{k}_slope": c.benefit_calibration.raw_slope for k, c in result.candidates.items()
        },
    }
    pred = Prediction(
        out["benefit"].to_numpy(dtype=float),
        out["benefit_lower"].to_numpy(dtype=float),
        out["benefit_upper"].to_numpy(dtype=float),
        rec,
        float(result.blp.ate),
        extra,
    )
    if diagnose:
        X = model.features(test)
        draws = np.column_stack([model._raw_benefit(m, X) for m in model.ensemble])
        raw = model._raw_benefit(model.learner, X)
        pred.extra["_var_boot"] = draws.var(axis=1, ddof=1)
        pred.extra["_coef_var"] = model.benefit_calibration.coefficient_var(raw)
        pred.extra["_oof_raw_var"] = float(result.candidates[result.chosen].tau_raw.var())
        pred.extra["_candidates"] = candidate_benefits(result, pipeline, X)
        pred.extra["sel_one_se"] = one_se_choice(result)
    return pred, result


def one_se_choice(result: TrainResult) -> str:
    """Experiment (not product behaviour): the one-standard-error rule on the out-of-fold
    DR-loss. The simplest candidate whose loss exceeds the best one's by less than one
    standard error of the paired per-patient loss difference; the gaps between candidates
    at trial size are usually smaller than that noise, and then the pre-specified simpler
    model should win."""
    import numpy as np

    losses = {k: (result.scores - c.tau) ** 2 for k, c in result.candidates.items()}
    best = min(losses, key=lambda k: float(losses[k].mean()))
    order = sorted(losses, key=lambda k: learner_class(k).complexity)
    for name in order:
        diff = losses[name] - losses[best]
        if diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff)):
            return name
    return best


def candidate_benefits(
    result: TrainResult, pipeline: Pipeline, X: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Every candidate learner's test-set benefit as if it had been chosen: refit on all
    observed rows, its own per-arm calibrators and calibration for benefit (the model's
    benefit path, without the prognosis split). Diagnoses the selection step."""
    from personalize.learners import make_learner

    cohort = result.cohort
    obs = cohort.observed
    w = result.ipcw.weights
    out = {}
    for name, cand in result.candidates.items():
        if name == result.chosen:
            learner = result.model.learner
        else:
            learner = make_learner(name, pipeline.outcome.kind, pipeline.training.seed)
            learner.fit(cohort.X[obs], cohort.treated[obs], cohort.y[obs], w[obs])
        mu0, mu1 = learner.predict_arms(X)
        if cand.arms.calibrators is not None:
            c0, c1 = cand.arms.calibrators
            mu0, mu1 = c0.transform(mu0), c1.transform(mu1)
        out[name] = cand.benefit_calibration.apply(mu1 - mu0)
    return out


# --------------------------------------------------------------------------- peers


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
    import numpy as np

    from personalize.learners.linear import LinearDesign
    from personalize.stats.missingness import ipcw_weights

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


def _lgbm(classify: bool, seed: int) -> Any:
    from personalize.learners.boosting import booster

    return booster(classify, seed)


def fit_peer(
    name: str, d: PeerData, level: float, seed: int, bootstrap: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """(test benefit, lower, upper, average effect on the training cohort) of one peer."""
    import numpy as np

    o = d.observed
    Zo, To, yo, wo = d.Z[o], d.treated[o], d.y[o], d.weight[o]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "causal_forest":
            from econml.dml import CausalForestDML
            from sklearn.dummy import DummyClassifier

            cf = CausalForestDML(
                model_y=_lgbm(d.binary, seed),
                model_t=DummyClassifier(strategy="prior"),
                discrete_treatment=True,
                discrete_outcome=d.binary,
                cv=5,
                n_estimators=CF_TREES,
                n_jobs=1,
                random_state=seed,
            )
            cf.fit(yo, To, X=Zo, sample_weight=wo)
            b = np.ravel(cf.effect(d.Z_test))
            lo, hi = cf.effect_interval(d.Z_test, alpha=1 - level)
            return b, np.ravel(lo), np.ravel(hi), float(np.mean(cf.effect(d.Z)))
        if name == "econml_dr":
            from econml.dr import DRLearner
            from sklearn.dummy import DummyClassifier

            dr = DRLearner(
                model_propensity=DummyClassifier(strategy="prior"),
                model_regression=_lgbm(d.binary, seed),
                discrete_outcome=d.binary,
                cv=5,
                random_state=seed,
            )
            dr.fit(yo, To, X=Zo, sample_weight=wo)
            b = np.ravel(dr.effect(d.Z_test))
            lo, hi = dr.effect_interval(d.Z_test, alpha=1 - level)
            return b, np.ravel(lo), np.ravel(hi), float(np.mean(dr.effect(d.Z)))
        if name == "causalml_x":
            return _causalml_x(d, level, seed, bootstrap)
    raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")


def _causalml_x(
    d: PeerData, level: float, seed: int, bootstrap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CausalML's X-learner on complete cases (its fit takes no weights); interval from
    `bootstrap` refits on arm-stratified resamples (percentile), as CausalML's own
    `fit_predict(return_ci=True)` does for the training rows."""
    import numpy as np
    from causalml.inference.meta import BaseXClassifier, BaseXRegressor

    o = np.flatnonzero(d.observed)

    def fit(rows: np.ndarray, s: int) -> Any:
        if d.binary:
            model: Any = BaseXClassifier(
                outcome_learner=_lgbm(True, s), effect_learner=_lgbm(False, s)
            )
        else:
            model = BaseXRegressor(learner=_lgbm(False, s))
        model.fit(d.Z[rows], d.treated[rows], d.y[rows], p=np.full(len(rows), d.allocation))
        return model

    def predict(model: Any, Z: np.ndarray) -> np.ndarray:
        return np.ravel(model.predict(Z, p=np.full(len(Z), d.allocation), verbose=False))

    main = fit(o, seed)
    b = predict(main, d.Z_test)
    rng = np.random.default_rng(seed)
    arms = [o[d.treated[o] == a] for a in (0, 1)]
    draws = np.empty((len(b), bootstrap))
    for k in range(bootstrap):
        rows = np.concatenate([rng.choice(idx, len(idx), replace=True) for idx in arms])
        draws[:, k] = predict(fit(rows, seed + 7919 * (k + 1)), d.Z_test)
    tail = 50 * (1 - level)
    lo, hi = np.percentile(draws, [tail, 100 - tail], axis=1)
    return b, lo, hi, float(np.mean(predict(main, d.Z)))


def run_peer(name: str, pipeline: Pipeline, data: PeerData, seed: int) -> Prediction:
    cfg = pipeline.training
    b, lo, hi, ate = fit_peer(name, data, cfg.interval_level, seed, cfg.bootstrap)
    return Prediction(b, lo, hi, peer_recommendations(b, lo, hi, pipeline.decision.margin), ate)


# --------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    """Per-replication records, ours' test-set arrays (for diagnosis) and the setup."""

    scenario: str
    pipeline_path: str
    pipeline: Pipeline
    n: int
    replications: int
    test_n: int
    seed: int
    methods: list[str]
    records: pd.DataFrame
    arrays: dict[str, np.ndarray]
    truth: Truth
    seconds: float

    @property
    def level(self) -> float:
        return self.pipeline.training.interval_level

    def summary(self) -> pd.DataFrame:
        return summarize(self.records, self.level)


def resolve(scenario: str | None, pipeline: str | Path | None) -> tuple[str, str]:
    """Scenario and pipeline path from either (the pipeline's `cohort.simulate` names its
    scenario; a scenario names its shipped pipeline)."""
    from personalize.config import load_pipeline

    if pipeline is None:
        if scenario is None:
            raise ValueError("give a scenario or a pipeline")
        return _base_scenario(scenario), DEFAULT_PIPELINES[scenario]
    if scenario is None:
        sim = load_pipeline(pipeline).cohort.simulate
        if sim is None:
            raise ValueError(f"{pipeline}: no cohort.simulate scenario; pass --scenario")
        scenario = sim.scenario
    return _base_scenario(scenario), str(pipeline)


def run_study(
    scenario: str | None = None,
    pipeline: str | Path | None = None,
    replications: int = 20,
    n: int = 770,
    test_n: int = TEST_N,
    peers: Sequence[str] = PEERS,
    seed: int = 0,
    training: dict[str, Any] | None = None,
    diagnose: bool = True,
    adjust: int | None = None,
    progress: Progress | None = None,
    on_replication: Callable[[int], None] | None = None,
) -> StudyResult:
    """Run the study; `training` overrides pipeline.training keys (e.g. bootstrap);
    `adjust` is the experiment described in `run_ours`."""
    import numpy as np
    import pandas as pd

    from personalize.config import load_pipeline
    from personalize.data.simulate import simulate
    from personalize.data.validate import feature_frame, prepare

    scenario, path = resolve(scenario, pipeline)
    spec = load_pipeline(path)
    if training:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update=training)})
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose from {list(PEERS)}")
    say = progress or (lambda _m: None)
    test_seed, seeds = study_seeds(seed, replications)
    test = simulate(scenario, test_n, test_seed)
    truth = truth_of(test.truth, spec, scenario)
    arm = spec.cohort.arm
    pref_col = spec.cohort.preference
    preference = (
        test.cohort[pref_col].astype(object).to_numpy()
        if pref_col and pref_col in test.cohort
        else np.full(test_n, "none", dtype=object)
    )
    X_test = feature_frame(test.cohort, spec)
    methods = [OURS, *peers]
    rows: list[dict[str, Any]] = []
    keep: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    for r, s in enumerate(seeds):
        frame = simulate(scenario, n, s).cohort
        base = {"scenario": scenario, "pipeline": path, "n": n, "replication": r, "seed": s}
        say(f"rep {r + 1}/{replications}: {OURS}")
        t0 = time.perf_counter()
        ours, _ = run_ours(spec, frame, test.cohort, diagnose, adjust)
        secs = time.perf_counter() - t0
        metrics = score(ours, truth, preference, arm.treatment, arm.control)
        public = {k: v for k, v in ours.extra.items() if not k.startswith("_")}
        row = {**base, "method": OURS, "seconds": secs, **metrics, **public}
        if diagnose:
            for name, cb in ours.extra["_candidates"].items():
                row[f"cand_{name}_pehe"] = float(np.sqrt(np.mean((cb - truth.benefit) ** 2)))
            row["oof_raw_sd"] = math.sqrt(ours.extra["_oof_raw_var"])
            row["one_se_pehe"] = row[f"cand_{ours.extra['sel_one_se']}_pehe"]
            mean_benefit = np.mean(list(ours.extra["_candidates"].values()), axis=0)
            row["ensemble_pehe"] = float(np.sqrt(np.mean((mean_benefit - truth.benefit) ** 2)))
            for key in ("_var_boot", "_coef_var"):
                keep.setdefault(key[1:], []).append(ours.extra[key])
        for key, arr in (
            ("benefit", ours.benefit),
            ("lower", ours.lower),
            ("upper", ours.upper),
        ):
            assert arr is not None
            keep.setdefault(key, []).append(arr)
        rows.append(row)
        if peers:
            data = peer_data(spec, prepare(frame, spec), X_test)
            for name in peers:
                say(f"rep {r + 1}/{replications}: {name}")
                t0 = time.perf_counter()
                pred = run_peer(name, spec, data, spec.training.seed + r)
                secs = time.perf_counter() - t0
                metrics = score(pred, truth, preference, arm.treatment, arm.control)
                rows.append({**base, "method": name, "seconds": secs, **metrics})
                keep.setdefault(f"{name}_benefit", []).append(pred.benefit)
        if on_replication is not None:
            on_replication(r)
    arrays = {k: np.vstack(v) for k, v in keep.items()}
    arrays["tau"] = truth.benefit
    return StudyResult(
        scenario=scenario,
        pipeline_path=path,
        pipeline=spec,
        n=n,
        replications=replications,
        test_n=test_n,
        seed=seed,
        methods=methods,
        records=pd.DataFrame(rows),
        arrays=arrays,
        truth=truth,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- summary

SUMMARY_MEDIANS = [
    "pehe",
    "corr",
    "bias",
    "regret",
    "gain",
    "regret_avgarm",
    "regret_plugin",
    "accuracy",
    "share_either",
    "coverage",
    "group_coverage",
    "width",
    "seconds",
]


def summarize(records: pd.DataFrame, level: float) -> pd.DataFrame:
    """One row per (n, method): medians over replications (and IQR of PEHE), rates of the
    tests, chosen-learner counts, and ours-over-best-peer ratios."""
    import numpy as np
    import pandas as pd

    out = []
    for key, g in records.groupby(["n", "method"], sort=False):
        n, method = cast(tuple[int, str], key)
        row: dict[str, Any] = {
            "n": int(n),
            "method": method,
            "replications": len(g),
            "nominal": level,
            "sd_true": float(g["sd_true"].median()),
        }
        for col in SUMMARY_MEDIANS:
            row[col] = float(g[col].median()) if g[col].notna().any() else math.nan
        row["pehe_q25"] = float(g["pehe"].quantile(0.25))
        row["pehe_q75"] = float(g["pehe"].quantile(0.75))
        row["pehe_over_sd"] = float((g["pehe"] / g["sd_true"]).median())
        row["coverage_mean"] = (
            float(g["coverage"].mean()) if g["coverage"].notna().any() else (math.nan)
        )
        if method == OURS:
            row["het_reject_rate"] = float(g["het_reject"].mean())
            row["ate_reject_rate"] = float(g["ate_reject"].mean())
            row["evidence_rate"] = float(g["evidence"].mean())
            row["acat_reject_rate"] = float((g["acat_p"] < 0.05).mean())
            row["autoc_reject_rate"] = float(g["autoc_excludes_zero"].mean())
            row["benefit_slope"] = float(g["benefit_slope"].median())
            counts = g["chosen"].value_counts()
            row["chosen"] = ", ".join(f"{k} {v}" for k, v in counts.items())
            for col in g.columns:
                if col.startswith("cand_") and col.endswith("_pehe"):
                    row[col] = float(g[col].median())
            cand = [c for c in g.columns if c.startswith("cand_") and c.endswith("_pehe")]
            if cand:
                row["oracle_choice_pehe"] = float(g[cand].min(axis=1).median())
            if "one_se_pehe" in g and g["one_se_pehe"].notna().any():
                row["one_se_pehe"] = float(g["one_se_pehe"].median())
                row["ensemble_pehe"] = float(g["ensemble_pehe"].median())
                picks = g["sel_one_se"].value_counts()
                row["one_se_chosen"] = ", ".join(f"{k} {v}" for k, v in picks.items())
        out.append(row)
    summary = pd.DataFrame(out)
    # ours over the best peer (lowest median) in the same run, per n
    for size, g in summary.groupby("n"):
        peers = g[g["method"] != OURS]
        ours = g[g["method"] == OURS]
        if peers.empty or ours.empty:
            continue
        idx = ours.index[0]
        for metric in ("pehe", "regret"):
            best = peers.loc[cast(Any, peers[metric].idxmin())]
            summary.loc[idx, f"{metric}_best_peer"] = best["method"]
            summary.loc[idx, f"{metric}_ratio_to_best_peer"] = (
                ours[metric].iloc[0] / best[metric] if best[metric] > 0 else math.nan
            )
        same_n = records[records["n"] == cast(int, size)]
        wide = same_n.pivot(index="replication", columns="method", values="pehe")
        peer_cols = [c for c in wide.columns if c != OURS]
        summary.loc[idx, "pehe_paired_win_rate"] = float(
            (wide[OURS] <= wide[peer_cols].min(axis=1)).mean()
        )
    return summary.replace({np.inf: math.nan})


def references(result: StudyResult) -> dict[str, float]:
    """Policy references on the test set (method-free)."""
    r = result.records
    return {
        "sd_true_benefit": float(result.truth.benefit.std()),
        "mean_true_benefit": float(result.truth.benefit.mean()),
        "value_oracle": float(r["value_oracle"].iloc[0]),
        "value_best_arm": float(r["value_best_arm"].iloc[0]),
        "regret_best_arm": float(r["regret_best_arm"].iloc[0]),
        "regret_preference": float(r["regret_preference"].iloc[0]),
    }


def diagnose_intervals(result: StudyResult) -> dict[str, float]:
    """Why ours' intervals under-cover: across replications on the SAME test patients,
    split each patient's squared error into squared bias (mean prediction vs truth) and
    sampling variance, and compare the interval's claimed SD with the actual sampling SD.

    Also evaluates prototype intervals built from the same components (experiments, not
    product behaviour): `posterior` uses slope * var_boot (the empirical-Bayes posterior
    variance of a shrunken estimate) instead of slope**2 * var_boot; `unscaled` uses
    var_boot; `residual` adds slope * (1 - slope) * var(out-of-fold raw benefit), the
    variance of the true benefit left unexplained by a shrunken prediction under a
    measurement-error model; `sampling` uses the actual across-replication variance (an
    oracle: the best any variance-only interval can do)."""
    import numpy as np
    from scipy.stats import norm

    a = result.arrays
    b, lo, hi, tau = a["benefit"], a["lower"], a["upper"], a["tau"]
    z = float(norm.ppf(0.5 + result.level / 2))
    claimed_sd = (hi - lo) / (2 * z)
    mean_pred = b.mean(axis=0)
    bias2 = float(np.mean((mean_pred - tau) ** 2))
    var = float(np.mean(b.var(axis=0, ddof=1))) if len(b) > 1 else math.nan
    out = {
        "mse": float(np.mean((b - tau) ** 2)),
        "bias_squared": bias2,
        "sampling_variance": var,
        "bias_share_of_mse": bias2 / (bias2 + var) if len(b) > 1 else math.nan,
        "claimed_sd": float(np.mean(claimed_sd)),
        "sampling_sd": float(np.mean(b.std(axis=0, ddof=1))) if len(b) > 1 else math.nan,
        "coverage": float(np.mean((lo <= tau) & (tau <= hi))),
        "coverage_of_mean_prediction": float(np.mean((lo <= mean_pred) & (mean_pred <= hi))),
    }
    if len(b) > 1:
        sd = b.std(axis=0, ddof=1)
        out["coverage_with_sampling_sd"] = float(np.mean(np.abs(b - tau) <= z * sd))
    if "var_boot" in a and "coef_var" in a:
        slope = result.records.loc[result.records["method"] == OURS, "benefit_slope"].to_numpy()
        vb, cv = a["var_boot"], a["coef_var"]
        s = slope[:, None]
        oof = result.records.loc[result.records["method"] == OURS, "oof_raw_sd"].to_numpy()
        residual = np.clip(slope * (1 - slope), 0, None)[:, None] * (oof**2)[:, None]
        for name, v in {
            "posterior": s * vb + cv,
            "unscaled": vb + cv,
            "residual": s**2 * vb + cv + residual,
        }.items():
            half = z * np.sqrt(v)
            out[f"coverage_{name}"] = float(np.mean(np.abs(b - tau) <= half))
            out[f"width_{name}"] = float(np.median(2 * half))
    return out


# --------------------------------------------------------------------------- output

TABLE_COLUMNS = [
    ("method", "method", "{}"),
    ("pehe", "PEHE", "{:.3f}"),
    ("pehe_over_sd", "PEHE/sd(τ)", "{:.2f}"),
    ("corr", "corr", "{:.2f}"),
    ("regret", "regret", "{:.4f}"),
    ("gain", "gain vs best arm", "{:+.4f}"),
    ("regret_plugin", "regret (plug-in)", "{:.4f}"),
    ("accuracy", "accuracy", "{:.2f}"),
    ("share_either", "either", "{:.2f}"),
    ("coverage", "coverage", "{:.2f}"),
    ("group_coverage", "group cov.", "{:.2f}"),
    ("width", "width", "{:.3f}"),
    ("het_reject_rate", "het. rejects", "{:.2f}"),
    ("seconds", "s/fit", "{:.1f}"),
]


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def summary_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in TABLE_COLUMNS if c[0] in summary.columns or c[0] == "method"]
    multi_n = summary["n"].nunique() > 1
    head = (["N"] if multi_n else []) + [c[1] for c in cols]
    rows = []
    for _, r in summary.iterrows():
        cells = [_fmt(r.get(key), fmt) for key, _, fmt in cols]
        rows.append(([str(int(r["n"]))] if multi_n else []) + cells)
    return head, rows


def markdown_table(summary: pd.DataFrame) -> str:
    head, rows = summary_rows(summary)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(summary: pd.DataFrame, title: str, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
    head, rows = summary_rows(summary)
    table = Table(title=title, show_lines=False)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if h in ("method", "N") and i < 2 else "right")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    for _, r in summary[summary["method"] == OURS].iterrows():
        bits = [f"chosen: {r.get('chosen', '-')}"]
        for metric in ("pehe", "regret"):
            ratio = r.get(f"{metric}_ratio_to_best_peer")
            if isinstance(ratio, float) and not math.isnan(ratio):
                bits.append(f"{metric} ours/best peer ({r[f'{metric}_best_peer']}) = {ratio:.2f}")
        console.print(f"N={int(r['n'])}: " + "; ".join(bits), highlight=False)


def plot_study(records: pd.DataFrame, level: float, path: Path) -> None:
    """Box plots per method: PEHE (with sd of the true benefit), regret, coverage (with the
    nominal level) and share of `either`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(records["method"]))
    with plt.style.context("default"):  # whatever style another module left set globally
        _plot_study(plt, records, methods, level, path)


def _plot_study(
    plt: Any, records: pd.DataFrame, methods: list[str], level: float, path: Path
) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    refs: dict[str, list[tuple[float, str, str]]] = {
        "pehe": [(float(records["sd_true"].median()), "sd(true benefit)", "red")],
        "regret": [
            (float(records["regret_best_arm"].median()), "everyone on the better arm", "red"),
            (float(records["regret_preference"].median()), "follow stated preference", "green"),
        ],
        "coverage": [(level, "nominal", "red")],
        "share_either": [],
    }
    titles = {
        "pehe": "PEHE",
        "regret": "regret vs oracle",
        "coverage": "interval coverage",
        "share_either": "share 'either'",
    }
    for ax, col in zip(axes, titles, strict=True):
        data = [records.loc[records["method"] == m, col].dropna().to_numpy() for m in methods]
        ax.boxplot(data, tick_labels=methods)
        for ref, ref_label, color in refs[col]:
            ax.axhline(ref, color=color, linestyle="--", label=ref_label)
        if refs[col]:
            ax.legend(fontsize=7)
        ax.set_title(titles[col])
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(summary: pd.DataFrame, path: Path) -> None:
    """Median metric against the cohort size, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        _plot_curve(plt, summary, path)


def _plot_curve(plt: Any, summary: pd.DataFrame, path: Path) -> None:
    from matplotlib.ticker import NullFormatter

    panels = [
        ("pehe", "PEHE (median)"),
        ("regret", "regret (median)"),
        ("coverage", "coverage (median)"),
        ("het_reject_rate", "heterogeneity test power"),
        ("share_either", "share 'either' (median)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (col, title) in zip(axes, panels, strict=True):
        for method, g in summary.groupby("method", sort=False):
            if col in g and g[col].notna().any():
                ax.plot(g["n"], g[col], marker="o", label=method)
        if col == "pehe":
            ax.plot(summary["n"], summary["sd_true"], "r--", label="sd(τ)")
        if col == "coverage":
            ax.axhline(float(summary["nominal"].iloc[0]), color="red", linestyle="--")
        ax.set_xscale("log")
        ax.set_xticks(sorted(summary["n"].unique()))
        ax.set_xticklabels([str(v) for v in sorted(summary["n"].unique())])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title)
        ax.set_xlabel("N")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    results: list[StudyResult], out: Path, prefix: str, command: str
) -> dict[str, Path]:
    """CSV of every replication, summary CSV, diagnosis JSON, plots, a markdown report."""
    import numpy as np
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    records = pd.concat([r.records for r in results], ignore_index=True)
    level = results[0].level
    summary = summarize(records, level)
    files = {
        "records": out / f"{prefix}-records.csv",
        "summary": out / f"{prefix}-summary.csv",
        "diagnosis": out / f"{prefix}-diagnosis.json",
        "plot": out / f"{prefix}.png",
        "report": out / f"{prefix}.md",
    }
    records.to_csv(files["records"], index=False, float_format="%.6g")
    summary.to_csv(files["summary"], index=False, float_format="%.6g")
    diagnosis = {str(r.n): diagnose_intervals(r) for r in results}
    refs = {str(r.n): references(r) for r in results}
    files["diagnosis"].write_text(
        json.dumps({"intervals": diagnosis, "references": refs}, indent=2) + "\n"
    )
    plot_study(records, level, files["plot"])
    if len(results) > 1:
        files["curve"] = out / f"{prefix}-curve.png"
        plot_curve(summary, files["curve"])
    first = results[0]
    lines = [
        f"# Recovery study: `{first.scenario}` with `{first.pipeline_path}`",
        "",
        f"Command: `{command}`",
        "",
        f"{first.replications} replications per N, test set of {first.test_n} simulated "
        f"patients (seed {first.seed}); nominal interval level {level:.0%}; "
        f"sd of the true benefit {refs[str(first.n)]['sd_true_benefit']:.3f}; runtime "
        f"{sum(r.seconds for r in results) / 60:.1f} min. Medians over replications "
        "(rates for the tests). SYNTHETIC data.",
        "",
        markdown_table(summary),
        "",
    ]
    for _, r in summary[summary["method"] == OURS].iterrows():
        size = str(int(r["n"]))
        ref = refs[size]
        lines.append(f"- N={size}: chosen learners: {r.get('chosen', '-')}")
        for metric in ("pehe", "regret"):
            ratio = r.get(f"{metric}_ratio_to_best_peer")
            if isinstance(ratio, float) and np.isfinite(ratio):
                lines.append(
                    f"  - {metric}: ours / best peer ({r[f'{metric}_best_peer']}) = {ratio:.2f}"
                )
        lines.append(
            f"  - tests (share of replications rejecting at alpha): heterogeneity (adjusted) "
            f"{r['het_reject_rate']:.2f}, average effect {r['ate_reject_rate']:.2f}, ACAT of "
            f"candidates {r['acat_reject_rate']:.2f}, AUTOC CI excludes 0 "
            f"{r['autoc_reject_rate']:.2f}; decision evidence {r['evidence_rate']:.2f}"
        )
        lines.append(
            f"  - policy references: regret of everyone on the truly better arm "
            f"{ref['regret_best_arm']:.4f}, of following stated preference "
            f"{ref['regret_preference']:.4f}"
        )
        cands = {
            str(k)[5:-5]: v
            for k, v in r.items()
            if str(k).startswith("cand_") and str(k).endswith("_pehe") and pd.notna(v)
        }
        if cands:
            lines.append(
                "  - selection: median PEHE if each candidate were always chosen: "
                + ", ".join(f"{k} {v:.3f}" for k, v in cands.items())
                + f"; best candidate per replication (oracle) {r['oracle_choice_pehe']:.3f}"
            )
        if pd.notna(r.get("one_se_pehe")):
            lines.append(
                f"  - experiment: one-standard-error selection rule PEHE {r['one_se_pehe']:.3f}"
                f" (picks {r['one_se_chosen']}); average of the candidates "
                f"{r['ensemble_pehe']:.3f}"
            )
        d = diagnosis[size]
        lines.append(
            f"  - intervals: bias^2 is {d['bias_share_of_mse']:.0%} of the MSE; claimed SD "
            f"{d['claimed_sd']:.3f} vs sampling SD across replications "
            f"{d['sampling_sd']:.3f}; coverage {d['coverage']:.3f}, with the true sampling SD "
            f"{d.get('coverage_with_sampling_sd', math.nan):.3f}"
        )
    files["report"].write_text("\n".join(lines) + "\n")
    arrays: dict[str, Any] = {
        f"n{r.n}_{k}": v.astype(np.float32) for r in results for k, v in r.arrays.items()
    }
    np.savez_compressed(out / f"{prefix}-arrays.npz", **arrays)
    files["arrays"] = out / f"{prefix}-arrays.npz"
    return files


def log_to_mlflow(
    results: list[StudyResult], files: dict[str, Path], tracking_uri: str | None, command: str
) -> str:
    """One run in experiment `recovery-study`: setup as params, summary medians as metrics,
    the CSVs, plots and report as artifacts. Returns the run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from personalize.registry import _artifact_root, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        root = _artifact_root(uri)
        exp_id = client.create_experiment(
            EXPERIMENT, artifact_location=f"{root}/{EXPERIMENT}" if root else None
        )
    else:
        exp_id = exp.experiment_id
    first = results[0]
    ns = "-".join(str(r.n) for r in results)
    summary = summarize(
        __import__("pandas").concat([r.records for r in results], ignore_index=True), first.level
    )
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{first.scenario}-n{ns}") as run:
        mlflow.log_params(
            {
                "scenario": first.scenario,
                "pipeline": first.pipeline_path,
                "n": ns,
                "replications": first.replications,
                "test_n": first.test_n,
                "seed": first.seed,
                "methods": ",".join(first.methods),
                "interval_level": first.level,
            }
        )
        mlflow.set_tag("command", command)
        mlflow.set_tag("synthetic", "true")
        metrics: dict[str, float] = {}
        for _, r in summary.iterrows():
            for key, value in r.items():
                if (
                    isinstance(value, int | float)
                    and key not in ("n", "replications")
                    and (math.isfinite(float(value)))
                ):
                    metrics[f"n{int(r['n'])}_{r['method']}_{key}"] = float(value)
        mlflow.log_metrics(metrics)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


# --------------------------------------------------------------------------- the command


def study(
    scenario: Annotated[
        str | None, typer.Option(help="simulator scenario: stamp, stamp-null or optimum")
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="pipeline YAML (default: the scenario's shipped pipeline)"),
    ] = None,
    replications: Annotated[
        int, typer.Option(min=1, help="training cohorts (fresh simulations) per N")
    ] = 20,
    n: Annotated[
        list[int] | None,
        typer.Option("--n", help="patients per training cohort (default 770); repeat for a curve"),
    ] = None,
    test_n: Annotated[int, typer.Option("--test-n", min=100, help="test-set patients")] = TEST_N,
    peers: Annotated[
        bool, typer.Option("--peers/--no-peers", help="fit EconML and CausalML peers too")
    ] = True,
    out: Annotated[Path, typer.Option("--out", help="directory for CSVs, plots, report")] = Path(
        "study-results"
    ),
    seed: Annotated[int, typer.Option(help="study seed; same seed, same numbers")] = 0,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: models/mlflow.db)")
    ] = None,
    mlflow_run: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="log a run in experiment recovery-study")
    ] = True,
    bootstrap: Annotated[
        int | None,
        typer.Option(
            help="override training.bootstrap (interval ensemble size; default: the pipeline's)"
        ),
    ] = None,
) -> None:
    """Recovery study: score models trained on SYNTHETIC cohorts against the truth.

    PEHE, regret, interval coverage and heterogeneity-test rejection rates over fresh
    simulated training cohorts, on one independent simulated test set, with EconML and
    CausalML peers on the same cohorts. Writes CSVs, plots and a markdown table to --out
    and logs an MLflow run in experiment `recovery-study`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    err = Console(stderr=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    sizes = n or [770]
    try:
        scen, path = resolve(scenario, pipeline)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    peer_list: tuple[str, ...] = PEERS if peers else ()
    if peer_list:
        try:
            import causalml  # noqa: F401
            import econml  # noqa: F401
        except ImportError as exc:
            err.print(
                f"[bold red]error:[/] peers need the bench extra ({exc}); "
                "`pip install -e '.[bench]'` or pass --no-peers",
                highlight=False,
            )
            raise typer.Exit(2) from None
    command = "personalize study " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])
    overrides: dict[str, Any] = {"bootstrap": bootstrap} if bootstrap else {}
    results: list[StudyResult] = []
    with RichProgress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("starting", total=replications * len(sizes))
        for size in sizes:

            def say(message: str, size: int = size) -> None:
                bar.update(task, description=f"N={size} {message}")

            results.append(
                run_study(
                    scen,
                    path,
                    replications=replications,
                    n=size,
                    test_n=test_n,
                    peers=peer_list,
                    seed=seed,
                    training=overrides,
                    progress=say,
                    on_replication=lambda _r: bar.advance(task),
                )
            )
    stem = Path(path).stem
    prefix = stem if stem.startswith(scen) else f"{scen}-{stem}"
    files = write_outputs(results, out, prefix, command)
    records = __import__("pandas").concat([r.records for r in results], ignore_index=True)
    render(summarize(records, results[0].level), f"recovery study: {scen} ({path})", console)
    console.print(f"wrote {', '.join(str(p) for p in files.values())}", highlight=False)
    if mlflow_run:
        run_id = log_to_mlflow(results, files, tracking_uri, command)
        console.print(f"MLflow run {run_id} in experiment '{EXPERIMENT}'", highlight=False)


__all__ = [
    "OURS",
    "PEERS",
    "SAMPLE_SIZES",
    "Prediction",
    "StudyResult",
    "Truth",
    "run_study",
    "score",
    "study",
    "summarize",
    "truth_of",
]
