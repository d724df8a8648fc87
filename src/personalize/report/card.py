"""The model card's data: a TRIPOD+AI-minded card of a training run as JSON-ready data.

:func:`model_card_dict` is what ``GET /v1/model`` serves and what the Markdown and HTML
cards are rendered from (:mod:`personalize.report.render`), so the three never disagree.
It holds summaries only, never an individual row; NaN becomes ``None``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from personalize import __version__
from personalize.config import CategoricalFeature, Pipeline
from personalize.learners import learner_class
from personalize.report.labels import (
    OutcomeScale,
    arm_labels,
    feature_label,
    finite,
    outcome_measure,
)
from personalize.stats import coverage
from personalize.stats.decision import NO_DIFFERENCE

if TYPE_CHECKING:
    from personalize.training import TrainResult

__all__ = ["CARD_VERSION", "model_card_dict"]

CARD_VERSION = 1


def _json_ready(value: Any) -> Any:
    """Plain JSON types only: numpy scalars and arrays unwrapped, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "to_dict"):
        return _json_ready(value.to_dict())
    return str(value)


def _summary_numeric(col: pd.Series) -> dict[str, Any]:
    values = col.to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": None, "sd": None}
    sd = float(values.std(ddof=1)) if values.size > 1 else None
    return {"mean": float(values.mean()), "sd": sd}


def _summary_categorical(col: pd.Series, levels: list[str]) -> dict[str, Any]:
    present = col.astype(object)[col.notna()]
    total = len(present)
    return {
        str(level): (float((present == level).sum() / total) if total else None) for level in levels
    }


def _population(result: TrainResult) -> dict[str, Any]:
    pipeline = result.model.pipeline
    cohort = result.cohort
    treatment, control = arm_labels(pipeline)
    arm_masks = {treatment: cohort.treated == 1, control: cohort.treated == 0}
    obs = cohort.observed
    w = result.ipcw.weights
    arms: dict[str, Any] = {}
    for label, mask in arm_masks.items():
        r = mask & obs
        arms[label] = {
            "n": int(mask.sum()),
            "n_observed": int(r.sum()),
            "observed_outcome_mean": (
                float(np.average(cohort.y[r], weights=w[r])) if w[r].sum() > 0 else None
            ),
        }
    features: list[dict[str, Any]] = []
    for name, spec in pipeline.features.items():
        if name not in cohort.X.columns:
            continue
        col = cohort.X[name]
        entry: dict[str, Any] = {
            "name": name,
            "label": spec.label or name,
            "type": spec.type,
            "missing": int(col.isna().sum()),
        }
        if isinstance(spec, CategoricalFeature):
            entry["overall"] = _summary_categorical(col, spec.levels)
            entry["by_arm"] = {
                a: _summary_categorical(col[m], spec.levels) for a, m in arm_masks.items()
            }
        else:
            entry["unit"] = spec.unit
            entry["overall"] = _summary_numeric(col)
            entry["by_arm"] = {a: _summary_numeric(col[m]) for a, m in arm_masks.items()}
        features.append(entry)
    return {
        "n_patients": len(cohort),
        "n_observed": int(obs.sum()),
        "arms": arms,
        "allocation_treatment": float(cohort.treated.mean()),
        "features": features,
        "note": "Summaries only (mean and SD, or shares among non-missing values); no "
        "individual rows.",
    }


def _discrimination(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, binary: bool
) -> dict[str, float | None]:
    if binary:
        if len(np.unique(y)) < 2:
            return {"c_statistic": None}
        return {"c_statistic": float(roc_auc_score(y.astype(int), p, sample_weight=w))}
    resid = np.average((y - p) ** 2, weights=w)
    total = np.average((y - np.average(y, weights=w)) ** 2, weights=w)
    return {"r_squared": float(1 - resid / total) if total > 0 else None}


def _learner_text(name: str) -> str:
    return learner_class(name).description


def model_card_dict(
    result: TrainResult,
    *,
    model_name: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The model card as JSON-ready data (no NaN: missing numbers are None)."""
    model = result.model
    pipeline = model.pipeline
    rule = model.rule
    binary = model.binary
    scale = OutcomeScale(binary)
    treatment, control = arm_labels(pipeline)
    out = pipeline.outcome
    measure = outcome_measure(pipeline)
    name = model_name or pipeline.registry.model_name
    what_arm = "response probabilities" if binary else "expected improvement"
    population_text = (
        "patients who meet the source trial's eligibility criteria; the "
        "training cohort is summarised under Population"
    )

    outcome: dict[str, Any] = {
        "definition": out.describe(),
        "kind": out.kind,
        "measure": measure,
        "baseline": out.baseline,
        "followup": out.followup,
        "column": out.column,
        "responder": out.responder.describe() if out.responder is not None else None,
        "scale": (
            "probability of being a responder (0-1); benefit = difference in "
            "probability, shown in percentage points"
            if binary
            else f"expected improvement in {measure} (points; higher is better); benefit = "
            "difference in expected improvement"
        ),
        "benefit": f"{treatment} minus {control} (positive favours {treatment})",
    }

    ipcw = result.ipcw
    if ipcw.method == "complete_case":
        missing_text = (
            f"Complete-case analysis, as the pipeline requests: only the "
            f"{ipcw.observed_share:.0%} of patients with an observed outcome are used, "
            "unweighted. Valid only if outcomes are missing completely at random."
        )
    else:
        missing_text = (
            f"Inverse probability of censoring weighting: outcomes observed for "
            f"{ipcw.observed_share:.0%} of patients; complete cases are weighted by "
            "1 / P(observed | baseline, arm) (penalized logistic model), weights clipped at "
            f"{ipcw.clip:g} x their mean ({ipcw.n_clipped} clipped), effective sample size "
            f"{ipcw.effective_sample_size:.0f}. Assumes outcomes are missing at random given "
            "baseline covariates and arm."
        )
    missing = {
        **ipcw.summary(),
        "n_observed": int(result.cohort.observed.sum()),
        "description": missing_text,
    }

    learners = {
        "criterion": "one pre-specified learner (the pipeline's default for this outcome, "
        "or the one it names)"
        if len(result.candidates) == 1
        else "one-standard-error rule on the out-of-fold DR-loss (mean squared "
        "difference between a candidate's cross-fitted, benefit-calibrated benefit and the "
        "doubly-robust pseudo-outcomes, whose expectation is the benefit's mean squared "
        "error plus a constant): the simplest candidate whose loss is within one standard "
        "error of the lowest",
        "folds": pipeline.training.folds,
        "chosen": result.chosen,
        "chosen_description": _learner_text(result.chosen),
        "candidates": [
            {
                "name": k,
                "description": _learner_text(k),
                "dr_loss": c.dr_loss,
                "r_loss": c.r_loss,
                "policy_gain": None if c.policy is None else c.policy.gain_over_best_arm,
                **_candidate_extras(c),
                "chosen": k == result.chosen,
            }
            for k, c in sorted(result.candidates.items(), key=lambda kv: kv[1].dr_loss)
        ],
    }

    calibration: dict[str, Any] = {}
    for arm in (treatment, control):
        if arm not in result.calibration:
            continue
        y, p, w = result.reliability[arm]
        calibration[arm] = {**result.calibration[arm].to_dict(), **_discrimination(y, p, w, binary)}
    calibration_note = (
        "Per arm, out of fold: the chosen learner's cross-fitted predictions recalibrated "
        "(Platt or isotonic, whichever has the lower cross-validated Brier score) and "
        "assessed on cross-calibrated predictions, so no patient is scored by a calibrator "
        "that saw them. Ideal: intercept 0, slope 1."
        if binary
        else "Per arm, out of fold: the chosen learner's cross-fitted predictions, not "
        "recalibrated (continuous outcome). Intercept and slope of a linear regression of "
        "the observed on the predicted improvement; ideal 0 and 1."
    )

    blp = result.blp
    p_adjusted = finite(
        getattr(result, "heterogeneity_p", blp.differential_forest_prediction.p_value)
    )
    heterogeneity = {
        "detected": p_adjusted is not None and p_adjusted < rule.alpha,
        "alpha": rule.alpha,
        "differential_p_adjusted": p_adjusted,
        "adjustment": _adjustment(len(result.candidates)),
        "blp": {
            "mean_forest_prediction": blp.mean_forest_prediction.to_dict(),
            "differential_forest_prediction": blp.differential_forest_prediction.to_dict(),
            "heterogeneity_test": blp.heterogeneity.to_dict(),
            "p_values": "one-sided (H0: coefficient <= 0), HC3 standard errors; the "
            "heterogeneity test's widened by the square root of 2",
            "n_observed": blp.n_observed,
        },
        "benefit_recalibration": _benefit_recalibration(result),
        "ate": {
            "estimate": blp.ate,
            "se": blp.ate_se,
            "ci_low": blp.ate_ci_low,
            "ci_high": blp.ate_ci_high,
            "p_value": blp.ate_p_value,
            "level": blp.level,
            "method": "AIPW (doubly-robust) with IPCW; two-sided p-value",
        },
        "autoc": _rate_dict(result.autoc),
        "qini": _rate_dict(result.qini),
        "benefit_calibration": result.groups.to_dict(),
        "policy": result.policy.to_dict(),
    }

    margin_text = scale.benefit(rule.margin).lstrip("+")
    if not binary:
        margin_text += " points"
    decision = {
        **rule.to_dict(),
        "margin_display": margin_text,
        "share_either_training": result.share_either,
        "description": (
            f"Recommend {treatment} only when (1) heterogeneity is detected by the BLP test "
            f"at alpha = {rule.alpha:g} after adjusting for the choice among learners (an "
            "average effect alone recommends nobody: the rationale names the arm it "
            "favours), (2) the "
            f"patient's {rule.level:.0%} interval for the "
            f"benefit ({treatment} minus {control}) lies entirely above zero, and (3) the "
            f"predicted benefit is at least {margin_text}; recommend {control} in the "
            f"mirror-image case. Otherwise the recommendation is 'either' with the "
            f'rationale "{NO_DIFFERENCE}", and the patient\'s stated preference is echoed '
            "when known; a patient without one is told the better bet, the arm their own "
            "estimate favours (not a recommendation: the difference is not reliable)."
        ),
        "evidence_status": (
            f"Evidence {'passed' if rule.evidence else 'did not pass'}: "
            f"{rule.evidence_reason}."
            + ("" if rule.heterogeneity else " Every patient therefore gets 'either'.")
        ),
    }

    chosen_linear = learner_class(result.chosen).linear
    explanations = {
        "method": (
            "linear terms of the penalized regression"
            if chosen_linear
            else "exact TreeSHAP contributions of the LightGBM models"
        ),
        "scale": "calibrated outcome scale ("
        + (
            "probability of response; shown in percentage points"
            if binary
            else f"points of {measure}"
        )
        + ")",
        "additivity": "each patient's drivers are carried through the per-arm calibration "
        "maps (rescale rule) and the benefit recalibration, so base benefit + "
        "sum of drivers equals the benefit shown exactly",
        "importance_measure": "mean |driver of the benefit| over the training cohort",
        "importance": [
            {"feature": k, "label": feature_label(pipeline, k), "mean_abs_contribution": v}
            for k, v in result.importance.items()
        ],
    }

    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "title": f"Model card: {name}",
        "synthetic": pipeline.synthetic,
        "model": {
            "name": name,
            "version": version,
            "run_id": run_id,
            "pipeline": pipeline.name,
            "learner": result.chosen,
            "learner_description": _learner_text(result.chosen),
            "treatment": treatment,
            "control": control,
            "cohort_sha256": model.info.cohort_sha256,
            "package_version": __version__,
            "seed": pipeline.training.seed,
        },
        "intended_use": {
            "question": pipeline.description,
            "purpose": (
                f"Decision support for choosing between {treatment} and {control}: "
                f"per-arm calibrated {what_arm}, "
                "the benefit with its interval, a recommendation only where the "
                "evidence supports one, and the drivers behind it."
            ),
            "users": "clinicians discussing treatment options with a patient; researchers "
            "and analysts reviewing or scoring referral lists",
            "population": population_text,
            "not_intended_for": [
                "replacing clinical judgment or the patient's own preference",
                "patients outside the source trial's eligibility criteria or the feature "
                "ranges seen in training (the service warns when a value is outside them)",
                "choosing between treatments other than these two arms",
            ]
            + (["any clinical use: the training data are synthetic"] if pipeline.synthetic else []),
        },
        "population": _population(result),
        "outcome": outcome,
        "data_source": {
            "synthetic": pipeline.synthetic,
            "description": pipeline.description,
            "path": pipeline.cohort.path,
            "simulated": (
                pipeline.cohort.simulate.model_dump()
                if pipeline.cohort.simulate is not None
                else None
            ),
            "cohort_sha256": model.info.cohort_sha256,
            "statement": (
                "SYNTHETIC: a simulated cohort shaped after published trial "
                "summaries; no real patient contributed data."
                if pipeline.synthetic
                else "Randomized trial data as declared in the pipeline file."
            ),
        },
        "missing_outcomes": missing,
        "learners": learners,
        "calibration": {"note": calibration_note, "arms": calibration},
        "heterogeneity": heterogeneity,
        "decision_rule": decision,
        "explanations": explanations,
        "subgroups": {
            "definitions": dict(pipeline.subgroups),
            "note": "Out of fold; per arm predicted vs IPCW-weighted observed outcome among "
            "patients with an observed outcome; benefit: mean predicted vs mean "
            "doubly-robust score (SE in brackets).",
            "rows": _ordered_subgroups(pipeline, result.subgroups),
        },
        "checks": _checks(result),
        "limitations": _limitations(result),
    }
    clean: dict[str, Any] = _json_ready(card)
    return clean


def _candidate_extras(cand: Any) -> dict[str, Any]:
    """Per-candidate evidence where training provides it (its own heterogeneity test's p
    before the combination over candidates, benefit slope)."""
    out: dict[str, Any] = {}
    blp = getattr(cand, "blp", None)
    if blp is not None:
        out["heterogeneity_p"] = blp.heterogeneity.p_value
    bc = getattr(cand, "benefit_calibration", None)
    if bc is not None:
        out["benefit_slope"] = bc.raw_slope
    return out


def _interval_limitation(result: TrainResult, level: float) -> str:
    """What the benefit intervals are for, what they rest on, and how often they covered."""
    model = result.model
    learner = model.learner
    m = coverage.measured(learner.name, learner.kind, model.individual_interval)
    if model.individual_interval:
        rests = "its prior" + (
            " and on the effect being close to linear in the covariates (a dose or duration "
            "on the log scale)"
            if learner.linear
            else ""
        )
        said = (
            f"Benefit intervals ({level:.0%}) are the {learner.title}'s posterior intervals "
            "for each patient's benefit: the expected benefit of patients with this "
            f"patient's measured characteristics. They rest on {rests}, and do not reflect "
            "moderators the trial did not measure or shift between the trial and practice. "
        )
        if m is None:
            return said + "Their coverage was not measured for this learner and outcome."
        return said + (
            f"In {m.where()} (recovery study, benchmarks/results/recovery.md) a 90% "
            f"interval covered the true benefit for {m.said()} (median width "
            f"{m.width:.2f}); its misses are mostly the patients with the largest and "
            "smallest benefits, whom its prior shrinks towards the average."
        )
    said = (
        f"Benefit intervals ({level:.0%}) come from a bootstrap ensemble of "
        f"{len(model.ensemble)} refits (plus the uncertainty of the benefit recalibration, "
        "where used): they reflect estimation variance, not model misspecification, "
        "unmeasured moderators or shift between the trial and practice. They are for the "
        "average benefit among patients with the same predicted benefit; an individual's "
        "benefit varies more"
    )
    if m is None:
        return said + " (their coverage was not measured for this outcome)."
    return said + (
        f" (in {m.where()}, recovery study, a 90% interval covered that average for "
        f"{m.group:.0%} of patients but the benefit of patients with exactly this patient's "
        f"characteristics for {m.own:.0%})."
    )


def _selection_limitation(candidates: int) -> str:
    if candidates == 1:
        return (
            "One pre-specified learner, so no choice among learners to pay for; its BLP "
            "test, AUTOC/Qini and calibration for benefit are computed on its out-of-fold "
            "predictions."
        )
    return (
        "Model selection and evaluation share the same out-of-fold predictions: the learner "
        f"was chosen among {candidates} candidates by out-of-fold DR-loss (the simplest "
        "within one standard error of the lowest), and the BLP test, AUTOC/Qini and "
        "calibration for benefit are computed on that chosen learner's out-of-fold "
        "predictions. The heterogeneity p-value combines every candidate's test, so it "
        "pays for the choice; AUTOC/Qini are not adjusted, so they are slightly optimistic."
    )


def _adjustment(candidates: int) -> str:
    """How the heterogeneity p-value was adjusted, for the card's sentence."""
    widened = (
        "widening the standard error by the square root of 2 (cross-fitted predictions are "
        "fitted on the other folds' outcomes, a dependence HC3 misses)"
    )
    if candidates == 1:
        return widened + "; one pre-specified learner, so no choice to pay for"
    return (
        f"{widened} and a Cauchy combination of the {candidates} candidate learners' tests "
        "(the chosen one is the best of several on these data)"
    )


def _benefit_recalibration(result: TrainResult) -> dict[str, Any] | None:
    bc = getattr(result.model, "benefit_calibration", None)
    if bc is None:
        return None
    return {
        **bc.to_dict(),
        "description": "predicted benefit = average effect + slope x (learner's benefit "
        "- its mean); slope = out-of-fold BLP differential coefficient, "
        f"clipped to [0, {bc.MAX_SLOPE:g}] (raw {bc.raw_slope:.2f}), so an "
        "over-dispersed learner is shrunk and one without signal collapses "
        "to the average effect",
    }


def _ordered_subgroups(pipeline: Pipeline, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Subgroup rows in a reading order: features as declared, categorical levels as
    declared, numeric bands from low to high, 'missing' last."""

    def order(row: dict[str, Any]) -> tuple[int, int]:
        names = list(pipeline.subgroups)
        feature = str(row.get("feature"))
        f_rank = names.index(feature) if feature in names else len(names)
        spec = pipeline.features.get(feature)
        if isinstance(spec, CategoricalFeature):
            groups = list(spec.levels)
        else:
            cuts = pipeline.subgroups.get(feature) or []
            groups = [f"< {cuts[0]:g}"] if cuts else []
            groups += [f"{a:g} to < {b:g}" for a, b in itertools.pairwise(cuts)]
            groups += [f">= {cuts[-1]:g}"] if cuts else []
        group = str(row.get("group"))
        g_rank = groups.index(group) if group in groups else len(groups)
        return f_rank, g_rank

    return [
        {**r, "feature_label": feature_label(pipeline, str(r.get("feature")), unit=False)}
        for r in sorted(rows, key=order)
    ]


def _rate_dict(res: Any) -> dict[str, Any]:
    return {k: v for k, v in res.to_dict().items() if k != "toc"}


def _checks(result: TrainResult) -> dict[str, Any]:
    """The model checks (docs/training.md, "Model checks") and what a fired one means."""
    checks = result.checks
    policy = result.model.pipeline.checks
    return {
        "passed": checks.passed,
        "policy": policy,
        "warning": checks.warning(),
        "note": "Out of fold. A fired check blocks promotion"
        + (
            "; this pipeline says 'checks: warn', so a fired check is shown as a warning "
            "with every answer instead"
            if policy == "warn"
            else " (the pipeline may say 'checks: warn' to release the model with a warning)"
        )
        + ".",
        "checks": [c.to_dict() for c in checks.checks],
    }


def _limitations(result: TrainResult) -> list[str]:
    pipeline = result.model.pipeline
    rule = result.model.rule
    treatment, control = arm_labels(pipeline)
    items: list[str] = []
    if pipeline.synthetic:
        items.append(
            "The training data are SYNTHETIC (simulated patients). Every number in "
            "this card describes the simulation, not real patients."
        )
    warning = result.checks.warning()
    if warning is not None:
        items.append(f"WARNING: {warning}.")
    items += [
        f"Population: trained on one randomized trial's participants ({len(result.cohort)} "
        "patients); the model is valid at most for patients who would have met that "
        "trial's eligibility criteria, under the trial's delivery of the two programmes. "
        "It has not been externally validated.",
        _selection_limitation(len(result.candidates)),
    ]
    if getattr(result.model, "benefit_calibration", None) is not None:
        items.append(
            "The predicted benefit is recalibrated with a slope fitted on the same out-of-fold "
            "predictions that the calibration-for-benefit groups are computed on, so the "
            "groups' agreement with the diagonal is partly by construction."
        )
    items.append(_interval_limitation(result, rule.level))
    if result.ipcw.method == "complete_case":
        items.append(
            "Missing outcomes were handled by complete-case analysis, which assumes "
            "they are missing completely at random."
        )
    else:
        items.append(
            f"Outcomes were missing for {1 - result.ipcw.observed_share:.0%} of patients; "
            "inverse probability of censoring weights assume they are missing at random "
            "given baseline covariates and arm."
        )
    items.append(
        "Subgroup estimates rest on few patients and are not powered to detect "
        "differences between subgroups; read their intervals, not their point "
        "estimates."
    )
    gates = pipeline.gates
    for arm, cal in result.calibration.items():
        if not gates.slope_passes(cal.slope, cal.slope_se):
            items.append(
                f"The promotion gate fails: {gates.slope_rule(arm, cal.slope, cal.slope_se)}; "
                f"its predicted {'probabilities' if result.model.binary else 'improvements'} "
                "are not reliable at the extremes."
            )
        if cal.ece is not None and cal.ece > pipeline.gates.max_ece:
            items.append(
                f"Expected calibration error for {arm} ({cal.ece:.3f}) exceeds the "
                f"promotion gate ({pipeline.gates.max_ece:g})."
            )
    if rule.evidence and not rule.heterogeneity:
        items.append(
            f"The average effect is reliably non-zero but no heterogeneity was detected "
            f"({rule.evidence_reason}): the model recommends 'either' for every patient, and "
            "its rationale names the arm the average favours."
        )
    elif not rule.evidence:
        items.append(
            f"The trial data show no reliable difference between {treatment} and "
            f"{control} ({rule.evidence_reason}); the model recommends 'either' "
            "for every patient and its ranking should not be used to choose."
        )
    return items
