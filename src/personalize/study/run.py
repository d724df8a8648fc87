"""Running the study: replications of simulate, train, predict on one test set, score.

For a simulator scenario and its pipeline, `replications` fresh training cohorts (different
seeds) are each run through the whole training pipeline (`training.fit`) and scored against
the simulator's truth (`study.truth`) on ONE independent simulated test set. The peers
(`study.peers`) are fitted on the same cohorts and scored on the same test set.

Seeds: `numpy.random.SeedSequence(seed).generate_state(1 + R)`: word 0 simulates the test
set, word r the r-th training cohort; the words are prefix-stable, so replication r is the
same cohort whatever R is, and `stamp` and `stamp-null` replications share covariates,
noise and dropout. The same seed gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personalize import training
from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import simulate
from personalize.data.validate import feature_frame, prepare
from personalize.learners import make_learner
from personalize.study.peers import PEERS, peer_data, run_peer
from personalize.study.truth import (
    DEFAULT_PIPELINES,
    Prediction,
    Truth,
    known_scenario,
    pehe,
    score,
    truth_of,
)
from personalize.training import TrainResult, one_se_choice

OURS = "ours"
SAMPLE_SIZES: tuple[int, ...] = (400, 770, 1500, 3000)
TEST_N = 5000
Progress = Callable[[str], None]


def study_seeds(seed: int, replications: int) -> tuple[int, list[int]]:
    """(test-set seed, training-cohort seeds); prefix-stable in `replications`."""
    words = np.random.SeedSequence(seed).generate_state(1 + replications)
    return int(words[0]), [int(w) for w in words[1:]]


def resolve(scenario: str | None, pipeline: str | Path | None) -> tuple[str, str]:
    """Scenario and pipeline path from either (the pipeline's `cohort.simulate` names its
    scenario; a scenario names its shipped pipeline)."""
    if pipeline is None:
        if scenario is None:
            raise ValueError("give a scenario or a pipeline")
        return known_scenario(scenario), DEFAULT_PIPELINES[scenario]
    if scenario is None:
        sim = load_pipeline(pipeline).cohort.simulate
        if sim is None:
            raise ValueError(f"{pipeline}: no cohort.simulate scenario; pass --scenario")
        scenario = sim.scenario
    return known_scenario(scenario), str(pipeline)


# --------------------------------------------------------------------------- ours


def run_ours(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    test: pd.DataFrame,
    diagnose: bool = True,
    adjust: int | None = None,
) -> tuple[Prediction, TrainResult]:
    """The whole training pipeline on one cohort; its model's answer for the test set.

    `adjust` (experiment): re-derive the heterogeneity p-value as the chosen learner's
    p-value times `adjust` instead of the candidates' combined one, and the decision
    rule's evidence from it (e.g. a single pre-specified learner that still pays for the
    search over every candidate: `training.learners=[that one]`, `adjust=` the number of
    candidates)."""
    result = training.fit(pipeline, frame)
    model = result.model
    if adjust is not None:
        p = min(1.0, result.blp.heterogeneity.p_value * adjust)
        result.heterogeneity_p = p
        evidence = p < model.rule.alpha or result.blp.ate_detected(model.rule.alpha)
        model = dataclasses.replace(model, rule=dataclasses.replace(model.rule, evidence=evidence))
    out = model.predict(test, explain=0)
    arm = pipeline.cohort.arm
    labels = out["recommendation"].to_numpy(dtype=object)
    rec = np.where(labels == arm.treatment, 1, np.where(labels == arm.control, -1, 0))
    rule = model.rule
    cand_p = {name: c.blp.heterogeneity.p_value for name, c in result.candidates.items()}
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
        "raw_p": result.blp.differential_forest_prediction.p_value,
        # the model checks: with the truth's coverage, their hit and false-alarm rates
        "checks_fired": float(not result.checks.passed),
        **{f"check_{c.name}_fired": float(c.fired) for c in result.checks.checks},
        **{f"check_{c.name}": c.statistic for c in result.checks.checks},
        **{f"check_{c.name}_p": c.p_value for c in result.checks.checks},
        **{f"cand_{k}_p": v for k, v in cand_p.items()},
        **{f"cand_{k}_dr_loss": c.dr_loss for k, c in result.candidates.items()},
        **{f"cand_{k}_r_loss": c.r_loss for k, c in result.candidates.items()},
        **{
            f"cand_{k}_slope": c.benefit_calibration.raw_slope for k, c in result.candidates.items()
        },
    }
    bets = out["better_bet"].to_numpy(dtype=object)
    pred = Prediction(
        out["benefit"].to_numpy(dtype=float),
        out["benefit_lower"].to_numpy(dtype=float),
        out["benefit_upper"].to_numpy(dtype=float),
        rec,
        float(result.blp.ate),
        bet=np.where(bets == arm.treatment, 1, np.where(bets == arm.control, -1, 0)),
        extra=extra,
    )
    if diagnose:
        X = model.features(test)
        raw = model._raw_benefit(model.learner, X)
        posterior = model.benefit_draws(X)
        if posterior is None:
            draws = np.column_stack([model._raw_benefit(m, X) for m in model.ensemble])
        else:
            draws = posterior
        pred.extra["_var_boot"] = draws.var(axis=1, ddof=1)
        pred.extra["_coef_var"] = model.benefit_calibration.coefficient_var(raw)
        pred.extra["_oof_raw_var"] = float(result.candidates[result.chosen].tau_raw.var())
        pred.extra["_candidates"] = candidate_benefits(result, pipeline, X)
        pred.extra["sel_one_se"] = one_se_choice(result.candidates, result.scores)
    return pred, result


def candidate_benefits(
    result: TrainResult, pipeline: Pipeline, X: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Every candidate learner's test-set benefit as if it had been chosen: refit on all
    observed rows, its own per-arm calibrators and calibration for benefit (the model's
    benefit path, without the prognosis split). Diagnoses the selection step."""
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
        if cand.arms.calibrators is not None and not learner.posterior:
            c0, c1 = cand.arms.calibrators
            mu0, mu1 = c0.transform(mu0), c1.transform(mu1)
        out[name] = cand.benefit_calibration.apply(mu1 - mu0)
    return out


# --------------------------------------------------------------------------- replications


@dataclass(frozen=True)
class Holdout:
    """The one simulated test set every replication and method is scored on."""

    cohort: pd.DataFrame
    X: pd.DataFrame  # its features, as the pipeline declares them
    truth: Truth
    preference: np.ndarray  # each patient's stated preferred arm, or "none"


def holdout(scenario: str, spec: Pipeline, n: int, seed: int) -> Holdout:
    test = simulate(scenario, n, seed)
    pref_col = spec.cohort.preference
    preference = (
        test.cohort[pref_col].astype(object).to_numpy()
        if pref_col and pref_col in test.cohort
        else np.full(n, "none", dtype=object)
    )
    truth = truth_of(test.truth, spec, scenario)
    return Holdout(test.cohort, feature_frame(test.cohort, spec), truth, preference)


@dataclass
class Replication:
    """One replication's records (one row per method) and arrays (one per test patient)."""

    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]


def replicate(
    spec: Pipeline,
    frame: pd.DataFrame,
    test: Holdout,
    base: dict[str, Any],
    peers: Sequence[str],
    peer_seed: int,
    diagnose: bool = True,
    adjust: int | None = None,
    say: Progress | None = None,
) -> Replication:
    """Train ours and fit the peers on one training cohort; score each on the test set.
    `base` starts every record (scenario, pipeline, n, replication, seed)."""
    say = say or (lambda _m: None)
    arm = spec.cohort.arm
    truth = test.truth
    level = spec.training.interval_level
    say(OURS)
    t0 = time.perf_counter()
    ours, _ = run_ours(spec, frame, test.cohort, diagnose, adjust)
    secs = time.perf_counter() - t0
    metrics = score(ours, truth, test.preference, arm.treatment, arm.control, level)
    public = {k: v for k, v in ours.extra.items() if not k.startswith("_")}
    row = {**base, "method": OURS, "seconds": secs, **metrics, **public}
    arrays: dict[str, np.ndarray] = {}
    if diagnose:
        for name, cb in ours.extra["_candidates"].items():
            row[f"cand_{name}_pehe"] = pehe(cb, truth)
        row["oof_raw_sd"] = math.sqrt(ours.extra["_oof_raw_var"])
        row["one_se_pehe"] = row[f"cand_{ours.extra['sel_one_se']}_pehe"]
        row["ensemble_pehe"] = pehe(
            np.mean(list(ours.extra["_candidates"].values()), axis=0), truth
        )
        arrays["var_boot"] = ours.extra["_var_boot"]
        arrays["coef_var"] = ours.extra["_coef_var"]
    assert ours.lower is not None and ours.upper is not None
    arrays.update(benefit=ours.benefit, lower=ours.lower, upper=ours.upper)
    rows = [row]
    if peers:
        data = peer_data(spec, prepare(frame, spec), test.X)
        for name in peers:
            say(name)
            t0 = time.perf_counter()
            pred = run_peer(name, spec, data, peer_seed)
            secs = time.perf_counter() - t0
            metrics = score(pred, truth, test.preference, arm.treatment, arm.control, level)
            rows.append({**base, "method": name, "seconds": secs, **metrics})
            arrays[f"{name}_benefit"] = pred.benefit
    return Replication(rows, arrays)


# --------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    """Per-replication records, the test-set arrays (for diagnosis) and the setup."""

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
    scenario, path = resolve(scenario, pipeline)
    spec = load_pipeline(path)
    if training:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update=training)})
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose from {list(PEERS)}")
    say = progress or (lambda _m: None)
    test_seed, seeds = study_seeds(seed, replications)
    test = holdout(scenario, spec, test_n, test_seed)
    rows: list[dict[str, Any]] = []
    keep: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    for r, s in enumerate(seeds):
        frame = simulate(scenario, n, s).cohort
        base = {"scenario": scenario, "pipeline": path, "n": n, "replication": r, "seed": s}

        def step(message: str, r: int = r) -> None:
            say(f"rep {r + 1}/{replications}: {message}")

        done = replicate(
            spec,
            frame,
            test,
            base,
            peers,
            peer_seed=spec.training.seed + r,
            diagnose=diagnose,
            adjust=adjust,
            say=step,
        )
        rows += done.rows
        for key, arr in done.arrays.items():
            keep.setdefault(key, []).append(arr)
        if on_replication is not None:
            on_replication(r)
    arrays = {k: np.vstack(v) for k, v in keep.items()}
    arrays["tau"] = test.truth.benefit
    return StudyResult(
        scenario=scenario,
        pipeline_path=path,
        pipeline=spec,
        n=n,
        replications=replications,
        test_n=test_n,
        seed=seed,
        methods=[OURS, *peers],
        records=pd.DataFrame(rows),
        arrays=arrays,
        truth=test.truth,
        seconds=time.perf_counter() - start,
    )
