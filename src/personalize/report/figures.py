"""The figures of a training run, each a matplotlib ``Figure`` keyed by the file name it is
logged under (reliability, TOC/Qini, benefit distribution, calibration for benefit,
moderators, candidate learners, and SHAP's beeswarm and dependence plots of the benefit's
drivers).

Pure functions of a :class:`~personalize.training.TrainResult`: figures are built as
``Figure`` objects, not through pyplot, so the caller decides where they go. SHAP's scatter
plot selects its axes through pyplot and shuffles with numpy's global generator; it runs in
`_shap_drawing`, which leaves both as they were. Every figure says so in red when the
pipeline's data are synthetic.
"""

from __future__ import annotations

import contextlib
import math
import re
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from personalize import __version__
from personalize.config import CategoricalFeature
from personalize.learners import ARM_DRIVER, learner_class
from personalize.report.labels import (
    TOP_MODERATORS,
    OutcomeScale,
    arm_labels,
    feature_label,
    finite,
    outcome_measure,
)
from personalize.stats.calibration import reliability_bins

if TYPE_CHECKING:
    import shap

    from personalize.training import TrainResult

__all__ = [
    "FIGURE_NAMES",
    "benefit_calibration_figure",
    "benefit_distribution_figure",
    "candidates_figure",
    "figures",
    "moderators_figure",
    "reliability_figure",
    "save_figures",
    "shap_beeswarm_figure",
    "shap_dependence_figures",
    "toc_figure",
]

FIGURE_NAMES = (
    "reliability.png",
    "toc.png",
    "benefit_distribution.png",
    "benefit_calibration.png",
    "moderators.png",
    "candidates.png",
    "shap_beeswarm.png",
)  # then one shap_dependence_<feature>.png per top driver (`DEPENDENCE_PLOTS`)
SYNTHETIC_NOTE = "SYNTHETIC DATA: not for clinical use"

TREATMENT_COLOR = "#1b7f6b"
CONTROL_COLOR = "#6a51a3"
NEUTRAL_COLOR = "#4d4d4d"
HIGHLIGHT_COLOR = "#d95f02"
SYNTHETIC_COLOR = "#b00020"

SHAP_SAMPLE = 2000  # training patients the SHAP figures explain (a seeded sample beyond)
DEPENDENCE_PLOTS = 4  # dependence plots: the top drivers by mean |contribution|
BEESWARM_FEATURES = 12


def figures(result: TrainResult) -> dict[str, Figure]:
    """Every plot of a training run, keyed by the file name it is logged under."""
    return {
        "reliability.png": reliability_figure(result),
        "toc.png": toc_figure(result),
        "benefit_distribution.png": benefit_distribution_figure(result),
        "benefit_calibration.png": benefit_calibration_figure(result),
        "moderators.png": moderators_figure(result),
        "candidates.png": candidates_figure(result),
        **shap_figures(result),
    }


def shap_figures(result: TrainResult) -> dict[str, Figure]:
    """SHAP's beeswarm of the benefit's drivers and a dependence plot for each of the top
    drivers, from one explanation of the training cohort."""
    explanation = _driver_explanation(result)
    return {
        "shap_beeswarm.png": shap_beeswarm_figure(result, explanation),
        **shap_dependence_figures(result, explanation),
    }


def save_figures(figs: Mapping[str, Figure], directory: str | Path, dpi: int = 120) -> list[Path]:
    """Write each figure as a PNG under `directory` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = out / name
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _figure(result: TrainResult, width: float, height: float) -> Figure:
    """A constrained-layout figure with a footer: pipeline, learner, n and, for synthetic
    data, a red SYNTHETIC DATA note."""
    fig = Figure(figsize=(width, height), layout="constrained")
    # an empty figure-level x label reserves a strip at the bottom for the footer, so
    # constrained layout keeps axes labels and outside legends clear of it
    fig.supxlabel("footer", fontsize=10, color="none")
    pipeline = result.model.pipeline
    fig.text(
        0.01,
        0.012,
        f"{pipeline.name} · learner {result.chosen} · "
        f"n = {len(result.cohort)} patients · personalize {__version__}",
        ha="left",
        va="bottom",
        fontsize=7.5,
        color="#666666",
    )
    if pipeline.synthetic:
        fig.text(
            0.99,
            0.012,
            SYNTHETIC_NOTE,
            ha="right",
            va="bottom",
            fontsize=9,
            color=SYNTHETIC_COLOR,
            fontweight="bold",
        )
    return fig


def _percent_axis(ax: Axes, which: str) -> None:
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}%")
    (ax.xaxis if which == "x" else ax.yaxis).set_major_formatter(fmt)


def reliability_figure(result: TrainResult) -> Figure:
    """Per arm: out-of-fold, cross-calibrated predictions vs what was observed, by quantile
    bin of the prediction (IPCW-weighted), with the line of perfect calibration."""
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    arms = [a for a in (treatment, control) if a in result.reliability]
    fig = _figure(result, 5.2 * len(arms) + 0.6, 6.0)
    axes = fig.subplots(1, len(arms), squeeze=False)[0]
    for ax, arm in zip(axes, arms, strict=True):
        y, p, w = result.reliability[arm]
        n_bins = int(np.clip(len(y) // 25, 4, 10))
        rows = reliability_bins(y, p, w, bins=n_bins)
        pred = np.array([r["predicted"] for r in rows]) * scale.factor
        obs = np.array([r["observed"] for r in rows]) * scale.factor
        counts = np.array([r["n"] for r in rows])
        color = TREATMENT_COLOR if arm == treatment else CONTROL_COLOR
        err = np.zeros_like(obs)
        if scale.binary:
            share = np.clip(obs / 100, 0, 1)
            err = 1.96 * np.sqrt(share * (1 - share) / np.maximum(counts, 1)) * 100
        ax.errorbar(
            pred,
            obs,
            yerr=err if scale.binary else None,
            fmt="o-",
            color=color,
            ecolor=color,
            capsize=3,
            ms=6,
        )
        lo = float(min(pred.min(), (obs - err).min(), (p * scale.factor).min()))
        hi = float(max(pred.max(), (obs + err).max(), (p * scale.factor).max()))
        if scale.binary:
            lo, hi = max(0.0, lo), min(100.0, hi)
        pad = 0.06 * (hi - lo or 1.0)
        lims = (lo - pad, hi + pad)
        ax.plot(lims, lims, "--", color="#999999", lw=1)
        # the spread of individual predictions, as a rug along the bottom
        ax.plot(
            p * scale.factor,
            np.full(len(p), lims[0] + 0.012 * (lims[1] - lims[0])),
            "|",
            color=color,
            alpha=0.3,
            ms=9,
        )
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.3)
        cal = result.calibration[arm]
        if scale.binary:
            ax.set_xlabel("Predicted probability of response (%)")
            ax.set_ylabel("Observed responder rate (%, IPCW-weighted)")
            _percent_axis(ax, "x")
            _percent_axis(ax, "y")
            metrics = (
                f"Brier {cal.brier:.3f} · ECE {cal.ece:.3f} · "
                f"slope {cal.slope:.2f} · intercept {cal.intercept:+.2f}"
            )
        else:
            ax.set_xlabel("Predicted mean improvement (points)")
            ax.set_ylabel("Observed mean improvement (points, IPCW-weighted)")
            metrics = (
                f"RMSE {cal.rmse:.2f} · slope {cal.slope:.2f} · intercept {cal.intercept:+.2f}"
            )
        method = "" if cal.method == "identity" else f"; {cal.method} calibration"
        ax.set_title(
            f"{arm} ({cal.n} patients with an observed outcome{method})\n{metrics}", fontsize=10
        )
        size = int(np.median(counts))
        handles = [
            Line2D(
                [],
                [],
                color=color,
                marker="o",
                label=f"quantile bins of the prediction (about {size} patients each"
                + ("; 95% binomial interval)" if scale.binary else ")"),
            ),
            Line2D([], [], color="#999999", ls="--", label="perfect calibration"),
            Line2D(
                [],
                [],
                color=color,
                marker="|",
                ls="",
                ms=9,
                alpha=0.5,
                label="individual predictions (rug)",
            ),
        ]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            fontsize=8,
            frameon=False,
        )
    what = "cross-calibrated " if scale.binary else ""
    outcome = pipeline.outcome.describe()
    if not scale.binary:
        outcome += f" ({outcome_measure(pipeline)}, points; higher is better)"
    fig.suptitle(
        f"Reliability per arm: out-of-fold {what}predictions vs observed outcome\n{outcome}",
        fontsize=11,
    )
    return fig


def toc_figure(result: TrainResult) -> Figure:
    """TOC curve (AUTOC) and Qini curve: how much more the patients ranked highest by
    predicted benefit gain than the average patient, out of fold, with pointwise bands."""
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    fig = _figure(result, 11.5, 5.0)
    ax_toc, ax_qini = fig.subplots(1, 2)
    for ax, res, curve_name in ((ax_toc, result.autoc, "TOC"), (ax_qini, result.qini, "Qini")):
        q = np.asarray(res.toc_q)
        weight = np.ones_like(q) if curve_name == "TOC" else q
        est = np.asarray(res.toc_estimate) * weight * scale.factor
        low = np.asarray(res.toc_low) * weight * scale.factor
        high = np.asarray(res.toc_high) * weight * scale.factor
        ax.fill_between(
            q * 100,
            low,
            high,
            color=TREATMENT_COLOR,
            alpha=0.2,
            label=f"pointwise {res.level:.0%} band",
        )
        ax.plot(q * 100, est, color=TREATMENT_COLOR, lw=2, label=f"{curve_name} curve")
        ax.axhline(0, color=NEUTRAL_COLOR, lw=1, label="no heterogeneity (0)")
        ax.set_xlim(0, 100)
        _percent_axis(ax, "x")
        ax.set_xlabel("Patients prioritised by predicted benefit, highest first (% of cohort)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        target = "AUTOC" if curve_name == "TOC" else "Qini"
        ax.set_title(
            f"{target} = {scale.benefit(res.estimate)} "
            f"({res.level:.0%} CI {scale.benefit(res.ci_low)} to "
            f"{scale.benefit(res.ci_high)}; p = {res.p_value:.3g})",
            fontsize=10,
        )
    ax_toc.set_ylabel(f"Benefit in the top q minus average benefit ({scale.unit_long})")
    ax_qini.set_ylabel(f"q × TOC(q) ({scale.unit_long})")
    fig.suptitle(
        f"Does ranking by predicted benefit ({treatment} minus {control}) find "
        "patients who gain more? (out of fold, doubly-robust)",
        fontsize=11,
    )
    return fig


def benefit_distribution_figure(result: TrainResult) -> Figure:
    """Histogram of the final model's predicted benefit on the training cohort with the
    decision margin marked."""
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    p0, p1 = result.model.arms(result.cohort.X)
    benefit = (np.asarray(p1) - np.asarray(p0)) * scale.factor
    margin = result.model.rule.margin * scale.factor
    fig = _figure(result, 9.0, 5.4)
    ax = fig.subplots()
    lo, hi = float(benefit.min()), float(benefit.max())
    span = max(hi, margin * 1.3) - min(lo, -margin * 1.3)
    width = span / 40 if span > 0 else 1.0
    edges = np.arange(min(lo, -margin * 1.3) - width, max(hi, margin * 1.3) + 2 * width, width)
    ax.hist(benefit, bins=list(edges), color=TREATMENT_COLOR, alpha=0.75, edgecolor="white")
    ax.axvspan(-margin, margin, color="#bbbbbb", alpha=0.3)
    for x in (-margin, margin):
        ax.axvline(x, color=NEUTRAL_COLOR, ls="--", lw=1.2)
    ax.axvline(0, color=NEUTRAL_COLOR, lw=1)
    favour_t = float(np.mean(benefit >= margin))
    favour_c = float(np.mean(benefit <= -margin))
    ax.text(
        0.99,
        0.97,
        f"≥ +{margin:g} {scale.unit} (favours {treatment}): {favour_t:.0%}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        color=TREATMENT_COLOR,
    )
    ax.text(
        0.01,
        0.97,
        f"≤ −{margin:g} {scale.unit} (favours {control}): {favour_c:.0%}",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=9,
        color=CONTROL_COLOR,
    )
    ymax = ax.get_ylim()[1] * 1.2
    ax.set_ylim(0, ymax)
    ax.text(
        0,
        ymax * 0.88,
        f"|benefit| < {margin:g} {scale.unit}:\n'either'",
        ha="center",
        va="top",
        fontsize=8,
        color=NEUTRAL_COLOR,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
    )
    rule = result.model.rule
    share_either = finite(result.share_either)
    either = "n/a" if share_either is None else f"{share_either:.0%}"
    status = "passed" if rule.evidence else "NOT passed"
    note = (
        f"After the full rule (margin, {rule.level:.0%} interval, evidence) {either} of "
        f"these patients get 'either'. Evidence {status}: {rule.evidence_reason}."
    )
    ax.set_title(textwrap.fill(note, 120), fontsize=8.5, color=NEUTRAL_COLOR)
    if scale.binary:
        ax.set_xlabel(
            f"Predicted benefit: P(response | {treatment}) − P(response | {control}) "
            "(percentage points; > 0 favours " + treatment + ")"
        )
    else:
        ax.set_xlabel(
            f"Predicted benefit: improvement with {treatment} − with {control} "
            f"(points of {outcome_measure(pipeline)}; > 0 favours {treatment})"
        )
    ax.set_ylabel("Patients")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"Predicted benefit of {treatment} over {control}: final model on the "
        f"training cohort (calibrated, in sample)",
        fontsize=11,
    )
    return fig


def benefit_calibration_figure(result: TrainResult) -> Figure:
    """Calibration for benefit: mean predicted vs doubly-robust observed benefit by quantile
    group of out-of-fold predicted benefit, with confidence intervals."""
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    g = result.groups
    pred = np.array([r.mean_predicted for r in g.groups]) * scale.factor
    obs = np.array([r.mean_observed for r in g.groups]) * scale.factor
    low = np.array([r.ci_low for r in g.groups]) * scale.factor
    high = np.array([r.ci_high for r in g.groups]) * scale.factor
    fig = _figure(result, 7.6, 6.2)
    ax = fig.subplots()
    ax.axhline(0, color="#bbbbbb", lw=1)
    ax.axvline(0, color="#bbbbbb", lw=1)
    ax.errorbar(
        pred,
        obs,
        yerr=[obs - low, high - obs],
        fmt="o",
        color=TREATMENT_COLOR,
        capsize=4,
        ms=7,
        label=f"quantile group: observed with {g.level:.0%} CI",
    )
    for r, x, y in zip(g.groups, pred, obs, strict=True):
        ax.annotate(
            f"Q{r.group} (n={r.n})",
            (x, y),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
            color=NEUTRAL_COLOR,
        )
    x_lo = float(min(pred.min(), 0.0))
    x_hi = float(max(pred.max(), 0.0))
    pad = 0.15 * (x_hi - x_lo or 1.0)
    line = np.array([x_lo - pad, x_hi + pad])
    x_range = (float(line[0]), float(line[1]))
    ax.plot(line, line, "--", color="#999999", lw=1, label="perfect calibration (y = x)")
    slope = finite(g.slope)
    if slope is not None:
        intercept = float(g.intercept) * scale.factor
        ax.plot(
            line,
            intercept + slope * line,
            color=HIGHLIGHT_COLOR,
            lw=1,
            alpha=0.8,
            label=f"fitted line across groups (slope {slope:.2f})",
        )
    ax.set_xlim(x_range)
    ax.set_xlabel(
        f"Mean predicted benefit, out of fold ({scale.unit_long}, {treatment} − {control})"
    )
    ax.set_ylabel(f"Observed benefit, doubly-robust ({scale.unit_long})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncols=2, fontsize=8, frameon=False)
    slope_se = finite(g.slope_se)
    slope_text = (
        "slope n/a (predicted benefit does not vary)"
        if slope is None
        else f"slope {slope:.2f}" + ("" if slope_se is None else f" (SE {slope_se:.2f})")
    )
    fig.suptitle(
        f"Calibration for benefit by quantile group of predicted benefit\n"
        f"{slope_text}; 1 = well calibrated, 0 = ranking carries no signal",
        fontsize=11,
    )
    return fig


def moderators_figure(result: TrainResult) -> Figure:
    """Global moderator importance: mean |driver of the benefit| per feature (top 15)."""
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    items = sorted(result.importance.items(), key=lambda kv: -kv[1])[:TOP_MODERATORS]
    names = [k for k, _ in items][::-1]
    values = np.array([v for _, v in items][::-1]) * scale.factor
    labels = [feature_label(pipeline, n) for n in names]
    fig = _figure(result, 9.5, 0.36 * max(len(items), 4) + 2.2)
    ax = fig.subplots()
    colors = [NEUTRAL_COLOR if n == ARM_DRIVER else TREATMENT_COLOR for n in names]
    ax.barh(np.arange(len(names)), values, color=colors, alpha=0.85)
    ax.set_yticks(np.arange(len(names)), labels, fontsize=9)
    top = float(values.max()) if len(values) else 0.0
    for i, v in enumerate(values):
        ax.text(
            v + 0.01 * (top or 1),
            i,
            f"{v:.2f}" if scale.binary else f"{v:.3f}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, (top or 1) * 1.15)
    where = "calibrated outcome scale" if scale.binary else "outcome scale"
    ax.set_xlabel(
        f"Mean |contribution to predicted benefit| ({scale.unit_long},\n"
        f"{where}; each patient's drivers sum exactly to their benefit)"
    )
    ax.grid(alpha=0.3, axis="x")
    shown = f"top {len(items)} of {len(result.importance)}"
    fig.suptitle(
        f"What moves the predicted benefit of {treatment} over {control} "
        f"({shown} features; learner {result.chosen})",
        fontsize=11,
    )
    return fig


def candidates_figure(result: TrainResult) -> Figure:
    """Each candidate learner's out-of-fold DR-loss, the chosen one (the one-standard-error
    rule's) highlighted."""
    pipeline = result.model.pipeline
    items = sorted(result.candidates.items(), key=lambda kv: -_nan_last(kv[1].dr_loss))
    names = [k for k, _ in items]
    values = np.array([c.dr_loss for _, c in items], dtype=float)
    fig = _figure(result, 9.0, 0.5 * max(len(names), 3) + 2.2)
    ax = fig.subplots()
    best = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    ypos = np.arange(len(names))
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        chosen = name == result.chosen
        color = HIGHLIGHT_COLOR if chosen else NEUTRAL_COLOR
        ax.hlines(i, best, v, color=color, lw=2, alpha=0.5)
        ax.plot(v, i, "o", color=color, ms=10 if chosen else 7)
        note = f"+{v - best:.4f}"
        if chosen:
            note = "lowest: chosen" if v == best else f"{note}: chosen, simplest within 1 SE"
        ax.annotate(
            f"{v:.4f} ({note})",
            (v, i),
            textcoords="offset points",
            xytext=(8, -3),
            fontsize=8,
            color=color,
            fontweight="bold" if chosen else "normal",
        )
    ax.set_yticks(ypos, [f"{learner_class(n).title} ({n})" for n in names], fontsize=9)
    for tick, name in zip(ax.get_yticklabels(), names, strict=True):
        if name == result.chosen:
            tick.set_color(HIGHLIGHT_COLOR)
            tick.set_fontweight("bold")
    losses = values[np.isfinite(values)]
    if losses.size:
        spread = float(losses.max() - losses.min()) or abs(best) * 0.01 or 1.0
        ax.set_xlim(losses.min() - 0.1 * spread, losses.max() + 0.45 * spread)
    ax.set_ylim(-0.6, len(names) - 0.4)
    unit = "probability scale" if result.model.binary else "squared points"
    ax.set_xlabel(
        "Out-of-fold DR-loss (lower is better): mean squared error of the predicted\n"
        f"benefit against doubly-robust scores ({unit})"
    )
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(
        f"Candidate learners compared out of fold ({pipeline.training.folds}-fold "
        f"cross-fitting); chosen: {result.chosen}",
        fontsize=11,
    )
    return fig


@dataclass(frozen=True)
class _Drivers:
    """The chosen model's SHAP explanation of training patients as the figures show it:
    on the scale people read (percentage points for binary outcomes), features by their
    labels; `names` are the pipeline's column names, `patients` how many were explained."""

    explanation: shap.Explanation
    names: list[str]
    patients: int


def _driver_explanation(result: TrainResult) -> _Drivers:
    """`PersonalizeModel.explain` of the training cohort (of a seeded sample of SHAP_SAMPLE
    patients from a larger one: the figures look the same and training stays fast).
    Features that never contribute (a learner's arm term that is zero) are left out."""
    import shap  # a second of import that only the figures need

    pipeline = result.model.pipeline
    X = result.cohort.X
    if len(X) > SHAP_SAMPLE:
        rng = np.random.default_rng(pipeline.training.seed)
        X = X.iloc[np.sort(rng.choice(len(X), SHAP_SAMPLE, replace=False))]
    raw = result.model.explain(X)
    factor = OutcomeScale(result.model.binary).factor
    values = np.asarray(raw.values)
    keep = [j for j in range(values.shape[1]) if np.any(values[:, j] != 0)]
    names = [str(raw.feature_names[j]) for j in keep]
    explanation = shap.Explanation(
        values=values[:, keep] * factor,
        base_values=np.asarray(raw.base_values) * factor,
        data=np.asarray(raw.data)[:, keep],
        display_data=np.asarray(raw.display_data)[:, keep],
        feature_names=[feature_label(pipeline, name) for name in names],
    )
    return _Drivers(explanation, names, len(X))


@contextlib.contextmanager
def _shap_drawing() -> Iterator[None]:
    """Around a SHAP plot: numpy's global generator seeded (SHAP shuffles and jitters the
    dots with it; the figure comes out the same every run) and restored after, and every
    figure pyplot took up meanwhile (SHAP selects its axes with ``plt.sca``) let go."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    state = np.random.get_state()
    np.random.seed(0)
    try:
        yield
    finally:
        np.random.set_state(state)
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _sample_note(result: TrainResult, drivers: _Drivers) -> str:
    n = len(result.cohort)
    if drivers.patients == n:
        return f"all {n} training patients"
    return f"a random sample of {drivers.patients} of the {n} training patients"


def shap_beeswarm_figure(result: TrainResult, drivers: _Drivers | None = None) -> Figure:
    """SHAP's beeswarm of the benefit's drivers: per feature (largest mean |contribution|
    first) every training patient's contribution to the predicted benefit, coloured by the
    patient's value."""
    import shap

    drivers = drivers or _driver_explanation(result)
    explanation = drivers.explanation
    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    shown = min(BEESWARM_FEATURES, len(drivers.names))
    fig = _figure(result, 10.5, 0.42 * shown + 3.4)
    ax = fig.subplots()
    with _shap_drawing():
        shap.plots.beeswarm(
            explanation,
            max_display=shown,
            ax=ax,
            show=False,
            plot_size=None,
            color_bar_label="The patient's value",
        )
    for tick in ax.get_yticklabels():
        tick.set_fontsize(10)
    ax.set_xlabel(
        f"Contribution to the predicted benefit ({scale.unit_long}; "
        f"> 0 favours {treatment}, < 0 favours {control})",
        fontsize=10,
    )
    base = float(np.mean(explanation.base_values))
    note = (
        f"Each dot is one patient ({_sample_note(result, drivers)}), coloured by their value "
        "(grey: not given; categorical features by the order of their levels). A patient's "
        f"predicted benefit is the average benefit ({base:+.2f} {scale.unit}) plus the "
        "contributions of all their features."
    )
    ax.set_title(textwrap.fill(note, 125), fontsize=8.5, color=NEUTRAL_COLOR)
    fig.suptitle(
        f"What drives the predicted benefit of {treatment} over {control}, patient by "
        f"patient (SHAP values; learner {result.chosen})",
        fontsize=11,
    )
    return fig


def shap_dependence_figures(
    result: TrainResult, drivers: _Drivers | None = None
) -> dict[str, Figure]:
    """SHAP dependence plots of the top DEPENDENCE_PLOTS drivers by mean |contribution|,
    keyed ``shap_dependence_<feature>.png``: each patient's contribution from the feature
    against their value of it."""
    drivers = drivers or _driver_explanation(result)
    strength = np.abs(np.asarray(drivers.explanation.values)).mean(axis=0)
    order = np.argsort(-strength, kind="stable")
    top = [int(j) for j in order if drivers.names[j] != ARM_DRIVER][:DEPENDENCE_PLOTS]
    return {
        f"shap_dependence_{_file_part(drivers.names[j])}.png": _dependence_figure(
            result, drivers, j, rank
        )
        for rank, j in enumerate(top, start=1)
    }


def _dependence_figure(result: TrainResult, drivers: _Drivers, j: int, rank: int) -> Figure:
    import shap

    pipeline = result.model.pipeline
    scale = OutcomeScale(result.model.binary)
    treatment, control = arm_labels(pipeline)
    explanation = drivers.explanation
    name = drivers.names[j]
    label = feature_label(pipeline, name)
    values = np.asarray(explanation.values)[:, j]
    data = np.asarray(explanation.data)[:, j].astype(float)
    column = shap.Explanation(  # numbers only: the level names are put on the axis below
        values=values,
        base_values=explanation.base_values,
        data=data,
        feature_names=label,
    )
    fig = _figure(result, 8.4, 5.8)
    ax = fig.subplots()
    with _shap_drawing():
        shap.plots.scatter(column, color=TREATMENT_COLOR, ax=ax, show=False, alpha=0.7)
    ax.axhline(0, color=NEUTRAL_COLOR, lw=0.8)
    spec = pipeline.features.get(name)
    if isinstance(spec, CategoricalFeature):
        ax.set_xticks(range(len(spec.levels)), [str(v) for v in spec.levels], fontsize=9)
    missing = int(np.isnan(data).sum())
    given = "" if not missing else f" (ticks at the left edge: {missing} patients, not given)"
    ax.set_xlabel(f"{label}: the patient's value{given}", fontsize=10)
    ax.set_ylabel(
        f"Contribution to the predicted benefit\n({scale.unit_long}; > 0 favours {treatment})",
        fontsize=10,
    )
    note = (
        f"Driver {rank} of {len(drivers.names)} by mean |contribution| "
        f"({float(np.abs(values).mean()):.2f} {scale.unit}). Each dot is one patient "
        f"({_sample_note(result, drivers)}); the grey bars show how many patients have "
        "each value. Spread at one value comes from the patients' other features."
    )
    ax.set_title(textwrap.fill(note, 110), fontsize=8.5, color=NEUTRAL_COLOR)
    fig.suptitle(
        f"How {label} moves the predicted benefit of {treatment} over {control} "
        f"(SHAP dependence; learner {result.chosen})",
        fontsize=11,
    )
    return fig


def _file_part(name: str) -> str:
    """A feature's name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "feature"


def _nan_last(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
