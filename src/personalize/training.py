"""The training pipeline: validated cohort -> cross-fitted candidates -> chosen, calibrated,
explained model with its heterogeneity evidence (docs/training.md).

Nothing here talks to MLflow; `tracking` records what this returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from personalize.config import Pipeline
from personalize.data.validate import Cohort, prepare
from personalize.learners import EffectLearner, learner_class, make_learner, outcome_learner
from personalize.model import ModelInfo, PersonalizeModel, TrainingRange
from personalize.stats.blp import BLPResult, blp_test, cauchy_combination
from personalize.stats.calibration import (
    ArmCalibration,
    ArmCalibrator,
    BenefitCalibration,
    assess,
    choose_calibrator,
)
from personalize.stats.checks import ModelChecks, benefit_slope_check, comparator_check
from personalize.stats.decision import DecisionRule
from personalize.stats.dr_scores import dr_scores
from personalize.stats.group_calibration import GroupCalibration, benefit_calibration_by_group
from personalize.stats.missingness import IPCW, ipcw_weights
from personalize.stats.policy import PolicyValueResult, policy_value
from personalize.stats.prognosis import Prognosis, split_arms
from personalize.stats.r_loss import r_loss
from personalize.stats.rate import RATEResult, rate

Step = Callable[[str], None]

# The flexible learner the served model is checked against (`model_checks`): one LightGBM
# model per arm, already cross-fitted as the doubly-robust scores' outcome model, so the
# check costs no extra fit.
COMPARATOR_LEARNER = "t"


@dataclass
class Candidate:
    """One learner's out-of-fold showing: calibrated arms, raw and recalibrated benefit."""

    name: str
    arms: ArmFit
    tau_raw: np.ndarray  # difference of calibrated arms, out of fold
    tau: np.ndarray  # after calibration for benefit
    blp: BLPResult
    benefit_calibration: BenefitCalibration
    dr_loss: float = float("nan")
    r_loss: float = float("nan")
    policy: PolicyValueResult | None = None

    def metrics(self) -> dict[str, float]:
        out = {
            "dr_loss": self.dr_loss,
            "r_loss": self.r_loss,
            "benefit_slope": self.benefit_calibration.raw_slope,
            "heterogeneity_p": self.blp.heterogeneity.p_value,
        }
        if self.policy is not None:
            out["policy_gain"] = self.policy.gain_over_best_arm
        return out


@dataclass
class TrainResult:
    model: PersonalizeModel
    cohort: Cohort
    ipcw: IPCW
    candidates: dict[str, Candidate]
    chosen: str
    calibration: dict[str, ArmCalibration]  # per arm label, honest (cross-calibrated)
    reliability: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # y, p, weight per arm
    blp: BLPResult
    heterogeneity_p: float  # the candidates' heterogeneity tests, Cauchy-combined
    autoc: RATEResult
    qini: RATEResult
    groups: GroupCalibration
    policy: PolicyValueResult
    scores: np.ndarray  # doubly-robust scores
    oof_benefit: np.ndarray  # calibrated, out of fold
    subgroups: list[dict[str, Any]] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    share_either: float = float("nan")  # of the training patients, under the final model
    checks: ModelChecks = field(default_factory=lambda: ModelChecks(()))

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {
            "cohort/n_patients": float(len(self.cohort)),
            "cohort/n_observed": float(self.cohort.observed.sum()),
            "ipcw/effective_sample_size": self.ipcw.effective_sample_size,
            "ipcw/n_clipped": float(self.ipcw.n_clipped),
            **self.blp.metrics(prefix="blp/"),
            "heterogeneity/p_adjusted": self.heterogeneity_p,
            **self.autoc.metrics(prefix="autoc/"),
            **self.qini.metrics(prefix="qini/"),
            **self.groups.metrics(prefix="benefit_calibration/"),
            "policy/gain_over_best_arm": self.policy.gain_over_best_arm,
            "policy/gain_ci_low": self.policy.gain_ci_low,
            "policy/gain_ci_high": self.policy.gain_ci_high,
            "decision/share_either": self.share_either,
            **self.checks.metrics(prefix="check/"),
        }
        for arm, cal in self.calibration.items():
            for key, value in cal.to_dict().items():
                if isinstance(value, float):
                    m[f"calibration/{arm}/{key}"] = value
        for name, cand in self.candidates.items():
            for key, value in cand.metrics().items():
                m[f"candidate/{name}/{key}"] = value
        return m

    def summary(self) -> dict[str, Any]:
        rule = self.model.rule
        return {
            "learner": self.chosen,
            "heterogeneity_detected": self.heterogeneity_p < rule.alpha,
            "heterogeneity_p_adjusted": self.heterogeneity_p,
            "evidence": rule.evidence_reason,
            "blp_differential_p": self.blp.differential_forest_prediction.p_value,
            "ate": self.blp.ate,
            "ate_ci": [self.blp.ate_ci_low, self.blp.ate_ci_high],
            "autoc": self.autoc.estimate,
            "autoc_ci": [self.autoc.ci_low, self.autoc.ci_high],
            "checks_passed": self.checks.passed,
            "checks_fired": [c.name for c in self.checks.fired],
        }


def cohort_hash(frame: pd.DataFrame) -> str:
    """Content hash of the cohort as read: identifies the data without storing it."""
    digest = hashlib.sha256()
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def strata(cohort: Cohort) -> np.ndarray:
    """Arm x outcome class (binary) or arm x outcome half (continuous); missing its own."""
    y = cohort.y
    obs = cohort.observed
    if np.nanmax(np.abs(y - np.round(y))) == 0 and set(np.unique(y[obs])) <= {0.0, 1.0}:
        level = np.where(obs, np.nan_to_num(y), 2)
    else:
        level = np.where(obs, np.nan_to_num(y) > np.nanmedian(y), 2)
    return cohort.treated.astype(int) * 3 + level.astype(int)


def cross_fit(
    learner: EffectLearner,
    cohort: Cohort,
    weight: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold arm predictions for every patient; fits see observed rows only."""
    mu0 = np.empty(len(cohort))
    mu1 = np.empty(len(cohort))
    obs = cohort.observed
    for k, (train, test) in enumerate(folds):
        fit_rows = train[obs[train]]
        model = learner.out_of_fold(seed=learner.seed + 101 * k).fit(
            cohort.X.iloc[fit_rows], cohort.treated[fit_rows], cohort.y[fit_rows], weight[fit_rows]
        )
        mu0[test], mu1[test] = model.predict_arms(cohort.X.iloc[test])
    return mu0, mu1


def bootstrap_ensemble(
    learner: EffectLearner, cohort: Cohort, weight: np.ndarray, size: int, seed: int, step: Step
) -> list[EffectLearner]:
    """Refits on patient-level bootstrap resamples, stratified by arm."""
    rng = np.random.default_rng(seed)
    obs = cohort.observed
    members = []
    arms = [np.flatnonzero(cohort.treated == a) for a in (0, 1)]
    for b in range(size):
        rows = np.concatenate([rng.choice(idx, len(idx), replace=True) for idx in arms])
        rows = rows[obs[rows]]
        members.append(
            learner.clone(seed=seed + 7919 * (b + 1)).fit(
                cohort.X.iloc[rows], cohort.treated[rows], cohort.y[rows], weight[rows]
            )
        )
        step("bootstrap")
    return members


def honest_calibration(
    p: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    rows: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
) -> tuple[ArmCalibrator, np.ndarray]:
    """Choose a calibrator on `rows` and return it with out-of-fold calibrated `p`: each
    fold is calibrated by a map fitted on the other folds' rows, so no patient's own
    outcome shapes their calibrated prediction (an in-sample map would leak it into the
    benefit and fake heterogeneity)."""
    cal, _, _ = choose_calibrator(p[rows], y[rows], weight[rows], seed=seed)
    honest = np.empty(len(p))
    for train, test in folds:
        r = train[rows[train]]
        honest[test] = ArmCalibrator(cal.method).fit(p[r], y[r], weight[r]).transform(p[test])
    return cal, honest


def calibrate_arms(
    pipeline: Pipeline,
    cohort: Cohort,
    weight: np.ndarray,
    mu0: np.ndarray,
    mu1: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> ArmFit:
    """Per-arm calibration of a learner's arms (binary outcomes; continuous pass through)."""
    if pipeline.outcome.kind != "binary":
        return ArmFit(None, mu0, mu1)
    fitted, arms = [], []
    for a, mu in enumerate((mu0, mu1)):
        rows = cohort.observed & (cohort.treated == a)
        cal, honest = honest_calibration(mu, cohort.y, weight, rows, folds, pipeline.training.seed)
        fitted.append(cal)
        arms.append(honest)
    return ArmFit((fitted[0], fitted[1]), arms[0], arms[1])


@dataclass
class ArmFit:
    calibrators: tuple[ArmCalibrator, ArmCalibrator] | None
    mu0: np.ndarray  # calibrated, out of fold
    mu1: np.ndarray


def fit_prognosis(
    pipeline: Pipeline,
    cohort: Cohort,
    weight: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[Prognosis, ArmCalibrator | None, np.ndarray]:
    """The pooled prognostic model, its calibrator, and its honest out-of-fold m(x)."""
    kind = pipeline.outcome.kind
    obs = cohort.observed
    m = np.empty(len(cohort))
    for train, test in folds:
        r = train[obs[train]]
        m[test] = (
            Prognosis(kind)
            .fit(cohort.X.iloc[r], cohort.y[r], weight[r])
            .predict(cohort.X.iloc[test])
        )
    cal = None
    if kind == "binary":
        cal, m = honest_calibration(m, cohort.y, weight, obs, folds, pipeline.training.seed)
    final = Prognosis(kind).fit(cohort.X[obs], cohort.y[obs], weight[obs])
    return final, cal, m


def assess_arms(
    pipeline: Pipeline, cohort: Cohort, weight: np.ndarray, p0: np.ndarray, p1: np.ndarray
) -> tuple[dict[str, ArmCalibration], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-arm calibration metrics and reliability data of out-of-fold predictions."""
    binary = pipeline.outcome.kind == "binary"
    labels = (pipeline.cohort.arm.control, pipeline.cohort.arm.treatment)
    calibration, reliability = {}, {}
    for a, (label, p) in enumerate(zip(labels, (p0, p1), strict=True)):
        rows = cohort.observed & (cohort.treated == a)
        method = "prognosis (platt) +/- benefit" if binary else "prognosis +/- benefit"
        calibration[label] = assess(cohort.y[rows], p[rows], weight[rows], binary, method)
        reliability[label] = (cohort.y[rows], p[rows], weight[rows])
    return calibration, reliability


def one_se_choice(candidates: dict[str, Candidate], scores: np.ndarray) -> str:
    """The one-standard-error rule on the out-of-fold DR-loss: the simplest candidate (by
    its class's `complexity`) whose loss exceeds the best one's by at most one standard
    error of the paired per-patient loss difference. At trial size the gaps between
    candidates are mostly noise, and taking the smallest loss chases it: in the recovery
    study the rule's choice had the smaller PEHE at every sample size (docs/training.md)."""
    losses = {name: (scores - c.tau) ** 2 for name, c in candidates.items()}
    best = min(losses, key=lambda name: float(losses[name].mean()))
    for name in sorted(losses, key=lambda name: learner_class(name).complexity):
        diff = losses[name] - losses[best]
        if diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff)):
            return name
    return best


def fold_calibrated_benefit(
    cohort: Cohort,
    e: float,
    nuisance: tuple[np.ndarray, np.ndarray],
    tau_raw: np.ndarray,
    weight: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """`tau_raw` calibrated for benefit fold by fold, each fold by the map the other folds'
    BLP gives: a comparator's benefit stays out of fold, so its DR-loss is not flattered by
    a calibration fitted on the outcomes it is scored against."""
    out = np.empty(len(tau_raw))
    for train, test in folds:
        blp = blp_test(
            cohort.y[train],
            cohort.treated[train],
            e,
            nuisance[0][train],
            nuisance[1][train],
            tau_raw[train],
            weight[train],
        )
        diff = blp.differential_forest_prediction
        bc = BenefitCalibration.from_blp(
            blp.ate, blp.ate_se, diff.estimate, diff.se, float(np.mean(tau_raw[train]))
        )
        out[test] = bc.apply(tau_raw[test])
    return out


def model_checks(
    pipeline: Pipeline,
    cohort: Cohort,
    weight: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    e: float,
    nuisance: tuple[np.ndarray, np.ndarray],
    oof: dict[str, tuple[np.ndarray, np.ndarray]],
    scores: np.ndarray,
    chosen: Candidate,
) -> ModelChecks:
    """The chosen learner's checks (`stats.checks`), from out-of-fold predictions only."""
    applied = 1.0 if learner_class(chosen.name).posterior else chosen.benefit_calibration.slope
    slope = benefit_slope_check(chosen.blp.heterogeneity, applied)
    comparator = learner_class(COMPARATOR_LEARNER)
    title = f"{comparator.title} over LightGBM"
    if chosen.name == COMPARATOR_LEARNER:
        versus = comparator_check(scores, chosen.tau, chosen.tau, title)
    else:
        if COMPARATOR_LEARNER in oof:
            mu = oof[COMPARATOR_LEARNER]
        elif isinstance(outcome_learner(pipeline.outcome.kind, 0), comparator):
            mu = nuisance  # the DR scores' outcome model is this learner: the same fit
        else:
            kind, seed = pipeline.outcome.kind, pipeline.training.seed
            learner = make_learner(COMPARATOR_LEARNER, kind, seed)
            mu = cross_fit(learner, cohort, weight, folds)
        arms = calibrate_arms(pipeline, cohort, weight, *mu, folds)
        tau = fold_calibrated_benefit(cohort, e, nuisance, arms.mu1 - arms.mu0, weight, folds)
        versus = comparator_check(scores, chosen.tau, tau, title)
    return ModelChecks((slope, versus))


def progress_steps(pipeline: Pipeline) -> int:
    """How many times `fit` calls its `step` callback (for a progress bar)."""
    cfg = pipeline.training
    return 4 + 1 + len(pipeline.learners) + 2 + cfg.bootstrap


def fit(pipeline: Pipeline, frame: pd.DataFrame, step: Step | None = None) -> TrainResult:
    """The whole training pipeline on one cohort frame (raises CohortError if invalid)."""
    step = step or (lambda _name: None)
    cfg = pipeline.training
    cohort = prepare(frame, pipeline)
    obs = cohort.observed
    ipcw = ipcw_weights(cohort.X, cohort.treated, obs, pipeline.outcome.missing, cfg.ipcw_clip)
    weight = ipcw.weights
    step("ipcw")
    e = float(cohort.treated.mean())  # randomized: the allocation ratio, known by design
    splitter = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    folds = list(splitter.split(cohort.X, strata(cohort)))

    outcome_model = outcome_learner(pipeline.outcome.kind, cfg.seed)
    nuisance = cross_fit(outcome_model, cohort, weight, folds)
    step("cross-fit outcome model")
    oof: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in pipeline.learners:
        learner = make_learner(name, pipeline.outcome.kind, cfg.seed)
        same = type(learner) is type(outcome_model)  # the same fit: reuse it
        oof[name] = nuisance if same else cross_fit(learner, cohort, weight, folds)
        step(f"cross-fit {name}")
    scores = dr_scores(cohort.y, cohort.treated, e, *nuisance, weight)
    m = e * nuisance[1] + (1 - e) * nuisance[0]

    candidates: dict[str, Candidate] = {}
    for name in pipeline.learners:
        arms = calibrate_arms(pipeline, cohort, weight, *oof[name], folds)
        posterior = learner_class(name).posterior
        # a posterior learner's benefit is its own posterior mean (its prior shrinks it);
        # the others' are calibrated per arm, then for benefit
        tau_hat = oof[name][1] - oof[name][0] if posterior else arms.mu1 - arms.mu0
        blp = blp_test(cohort.y, cohort.treated, e, *nuisance, tau_hat, weight)
        diff = blp.differential_forest_prediction
        if posterior:
            bc = BenefitCalibration.identity(diff.estimate)
        else:
            bc = BenefitCalibration.from_blp(
                blp.ate, blp.ate_se, diff.estimate, diff.se, float(np.mean(tau_hat))
            )
        cand = Candidate(name, arms, tau_hat, bc.apply(tau_hat), blp, bc)
        # DR-loss of the benefit after calibration for benefit: its expectation is PEHE plus
        # a constant, and recalibrating first stops flat (over-shrunk) learners from winning
        # merely by predicting the average effect for everyone.
        cand.dr_loss = float(np.mean((scores - cand.tau) ** 2))
        cand.r_loss = r_loss(cohort.y, cohort.treated, e, m, cand.tau, weight)
        cand.policy = policy_value(scores, cand.tau > 0, seed=cfg.seed)
        candidates[name] = cand
    chosen = one_se_choice(candidates, scores)
    best = candidates[chosen]
    prognosis, prognosis_cal, m_oof = fit_prognosis(pipeline, cohort, weight, folds)
    binary = pipeline.outcome.kind == "binary"
    if learner_class(chosen).posterior:  # its own out-of-fold per-arm posterior means
        p0_oof, p1_oof = oof[chosen]
    else:
        p0_oof, p1_oof = split_arms(m_oof, best.tau, e, binary)
    calibration, reliability = assess_arms(pipeline, cohort, weight, p0_oof, p1_oof)
    step("calibration")

    blp = best.blp
    # One test of "no heterogeneity" from every candidate's (so the choice among them is
    # paid for): their tests are strongly dependent, which the Cauchy combination allows.
    p_het = cauchy_combination([c.blp.heterogeneity.p_value for c in candidates.values()])
    autoc = rate(best.tau, scores, "AUTOC", seed=cfg.seed)
    qini = rate(best.tau, scores, "QINI", seed=cfg.seed)
    groups = benefit_calibration_by_group(best.tau, scores)
    checks = model_checks(pipeline, cohort, weight, folds, e, nuisance, oof, scores, best)
    step("heterogeneity evidence")

    alpha = pipeline.decision.alpha
    het = p_het < alpha
    ate_reliable = blp.ate_detected(alpha)
    detail = (
        f"heterogeneity p = {p_het:.3g} over {len(candidates)} candidate learner"
        f"{'s' if len(candidates) > 1 else ''}; average effect p = {blp.ate_p_value:.3g}"
    )
    if het:
        reason = f"heterogeneity detected ({detail})"
    elif ate_reliable:
        reason = f"average effect reliably non-zero, no heterogeneity detected ({detail})"
    else:
        reason = f"no evidence of heterogeneity nor of an average effect ({detail})"
    rule = DecisionRule(
        treatment=pipeline.cohort.arm.treatment,
        control=pipeline.cohort.arm.control,
        margin=pipeline.decision.margin,
        level=cfg.interval_level,
        alpha=alpha,
        evidence=het or ate_reliable,
        evidence_reason=reason,
        binary=binary,
        heterogeneity=het,
        individual=learner_class(chosen).posterior,
        bet_level=pipeline.decision.bet_level,
        checks_passed=checks.passed,
    )

    learner = make_learner(chosen, pipeline.outcome.kind, cfg.seed)
    learner.fit(cohort.X[obs], cohort.treated[obs], cohort.y[obs], weight[obs])
    step("refit")
    if learner.posterior:  # the posterior draws are its uncertainty: no bootstrap
        ensemble: list[EffectLearner] = []
        for _ in range(cfg.bootstrap):
            step("posterior draws")
    else:
        ensemble = bootstrap_ensemble(learner, cohort, weight, cfg.bootstrap, cfg.seed, step)
    model = PersonalizeModel(
        pipeline=pipeline,
        learner=learner,
        calibrators=None if learner.posterior else best.arms.calibrators,
        benefit_calibration=best.benefit_calibration,
        prognosis=prognosis,
        prognosis_calibrator=prognosis_cal,
        allocation=e,
        ensemble=ensemble,
        rule=rule,
        training_range=TrainingRange.of(cohort.X),
        info=ModelInfo(
            learner=chosen,
            cohort_sha256=cohort_hash(frame),
            n_patients=len(cohort),
            synthetic=pipeline.synthetic,
        ),
        checks=checks,
    )
    result = TrainResult(
        model=model,
        cohort=cohort,
        ipcw=ipcw,
        candidates=candidates,
        chosen=chosen,
        calibration=calibration,
        reliability=reliability,
        blp=blp,
        heterogeneity_p=p_het,
        autoc=autoc,
        qini=qini,
        groups=groups,
        policy=policy_value(scores, best.tau > 0, seed=cfg.seed),
        scores=scores,
        oof_benefit=best.tau,
        checks=checks,
    )
    result.importance = moderator_importance(model, cohort.X)
    result.subgroups = subgroup_performance(
        pipeline, cohort, [p0_oof, p1_oof], weight, scores, best.tau
    )
    decisions = model.predict(frame, explain=0)["recommendation"]
    result.share_either = float((decisions == "either").mean())
    return result


def moderator_importance(model: PersonalizeModel, X: pd.DataFrame) -> dict[str, float]:
    """Global importance of each feature for the benefit: mean |driver| (calibrated scale)."""
    names, _, phi = model.benefit_drivers(X)
    mean_abs = np.abs(phi).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    return {names[j]: float(mean_abs[j]) for j in order}


def subgroup_performance(
    pipeline: Pipeline,
    cohort: Cohort,
    oof: list[np.ndarray],
    weight: np.ndarray,
    scores: np.ndarray,
    benefit: np.ndarray,
) -> list[dict[str, Any]]:
    """Per subgroup (pipeline `subgroups`): n, per-arm predicted vs observed outcome and the
    mean predicted vs doubly-robust observed benefit (TRIPOD+AI fairness reporting)."""
    rows: list[dict[str, Any]] = []
    obs = cohort.observed
    for name, cuts in pipeline.subgroups.items():
        col = cohort.X[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            labels = col.astype(object).fillna("missing").to_numpy()
        else:
            edges = [-np.inf, *(cuts or []), np.inf]
            binned = pd.cut(col, edges, right=False)
            labels = binned.astype(object).map(_band).fillna("missing").to_numpy()
        for level in pd.unique(labels):
            g = labels == level
            row: dict[str, Any] = {
                "feature": name,
                "group": str(level),
                "n": int(g.sum()),
                "predicted_benefit": float(benefit[g].mean()),
                "observed_benefit_dr": float(scores[g].mean()),
                "observed_benefit_se": float(scores[g].std(ddof=1) / np.sqrt(max(g.sum(), 2))),
            }
            for a, label in enumerate((pipeline.cohort.arm.control, pipeline.cohort.arm.treatment)):
                r = g & obs & (cohort.treated == a)
                if weight[r].sum() > 0:
                    row[f"predicted_{label}"] = float(np.average(oof[a][r], weights=weight[r]))
                    row[f"observed_{label}"] = float(np.average(cohort.y[r], weights=weight[r]))
            rows.append(row)
    return rows


def _band(interval: Any) -> str:
    if not isinstance(interval, pd.Interval):
        return "missing"
    lo, hi = interval.left, interval.right
    if np.isinf(lo):
        return f"< {hi:g}"
    if np.isinf(hi):
        return f">= {lo:g}"
    return f"{lo:g} to < {hi:g}"


__all__ = ["TrainResult", "fit", "progress_steps"]
