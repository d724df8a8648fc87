"""The human-facing outputs of a training run: figures and the model card (DESIGN.md 2.7).

Pure functions of a :class:`~personalize.training.TrainResult`; nothing here talks to
MLflow or touches matplotlib's global state (figures are built as ``Figure`` objects, never
through pyplot), so the caller decides where they go:

- :func:`figures` -> ``{file name: Figure}`` (reliability, TOC/Qini, benefit distribution,
  calibration for benefit, moderators, candidate learners);
- :func:`model_card_dict` -> the TRIPOD+AI-minded model card as JSON-ready data (served at
  ``GET /v1/model``; NaN becomes ``None``);
- :func:`render_model_card` -> the same card as Markdown, rendered from that dict only, so
  the two never disagree; :func:`model_card` does both steps.

Every figure and the card say so prominently when the pipeline's data are synthetic.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from personalize import __version__
from personalize.config import CategoricalFeature, NumericFeature, Pipeline
from personalize.learners import ARM_DRIVER, learner_class
from personalize.stats.calibration import reliability_bins
from personalize.stats.decision import NO_DIFFERENCE

if TYPE_CHECKING:
    from personalize.training import TrainResult

__all__ = [
    "FIGURE_NAMES",
    "figures",
    "model_card",
    "model_card_dict",
    "render_model_card",
    "save_figures",
]

CARD_VERSION = 1
FIGURE_NAMES = (
    "reliability.png",
    "toc.png",
    "benefit_distribution.png",
    "benefit_calibration.png",
    "moderators.png",
    "candidates.png",
)
SYNTHETIC_NOTE = "SYNTHETIC DATA: not for clinical use"
SYNTHETIC_BANNER = (
    "> **⚠ SYNTHETIC DATA.** This model was trained on a simulated cohort, not on real "
    "patients. Its numbers demonstrate the method only and must not inform any clinical "
    "decision."
)
TOP_MODERATORS = 15

ARM_DRIVER_LABEL = "Treatment arm itself (same for every patient)"

TREATMENT_COLOR = "#1b7f6b"
CONTROL_COLOR = "#6a51a3"
NEUTRAL_COLOR = "#4d4d4d"
HIGHLIGHT_COLOR = "#d95f02"
SYNTHETIC_COLOR = "#b00020"


# --------------------------------------------------------------------------- small helpers


class _Scale:
    """How numbers on the outcome's scale are shown: percentages for binary outcomes
    (probabilities, benefits in percentage points), points for continuous ones."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.factor = 100.0 if binary else 1.0
        self.unit = "pp" if binary else "points"
        self.unit_long = "percentage points" if binary else "points"

    def benefit(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value * 100:+.1f} pp" if self.binary else f"{value:+.2f}"

    def outcome(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value * 100:.1f}%" if self.binary else f"{value:.2f}"


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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


def _feature_label(pipeline: Pipeline, name: str, unit: bool = True) -> str:
    if name == ARM_DRIVER:
        return ARM_DRIVER_LABEL
    spec = pipeline.features.get(name)
    if spec is None:
        return name
    label = spec.label or name
    if unit and isinstance(spec, NumericFeature) and spec.unit:
        label += f" ({spec.unit})"
    return label


def _measure(pipeline: Pipeline) -> str:
    """The instrument the outcome is measured on, in words."""
    out = pipeline.outcome
    source = out.baseline or out.column
    if source is not None and source in pipeline.features:
        return pipeline.features[source].label or source
    return source or "the outcome"


def _arms(pipeline: Pipeline) -> tuple[str, str]:
    return pipeline.cohort.arm.treatment, pipeline.cohort.arm.control


# --------------------------------------------------------------------------- figures


def figures(result: TrainResult) -> dict[str, Figure]:
    """Every plot of a training run, keyed by the file name it is logged under."""
    return {
        "reliability.png": reliability_figure(result),
        "toc.png": toc_figure(result),
        "benefit_distribution.png": benefit_distribution_figure(result),
        "benefit_calibration.png": benefit_calibration_figure(result),
        "moderators.png": moderators_figure(result),
        "candidates.png": candidates_figure(result),
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
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}%")
    (ax.xaxis if which == "x" else ax.yaxis).set_major_formatter(fmt)


def reliability_figure(result: TrainResult) -> Figure:
    """Per arm: out-of-fold, cross-calibrated predictions vs what was observed, by quantile
    bin of the prediction (IPCW-weighted), with the line of perfect calibration."""
    from matplotlib.lines import Line2D

    pipeline = result.model.pipeline
    scale = _Scale(result.model.binary)
    treatment, control = _arms(pipeline)
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
        outcome += f" ({_measure(pipeline)}, points; higher is better)"
    fig.suptitle(
        f"Reliability per arm: out-of-fold {what}predictions vs observed outcome\n{outcome}",
        fontsize=11,
    )
    return fig


def toc_figure(result: TrainResult) -> Figure:
    """TOC curve (AUTOC) and Qini curve: how much more the patients ranked highest by
    predicted benefit gain than the average patient, out of fold, with pointwise bands."""
    pipeline = result.model.pipeline
    scale = _Scale(result.model.binary)
    treatment, control = _arms(pipeline)
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
    scale = _Scale(result.model.binary)
    treatment, control = _arms(pipeline)
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
    share_either = _finite(result.share_either)
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
            f"(points of {_measure(pipeline)}; > 0 favours {treatment})"
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
    scale = _Scale(result.model.binary)
    treatment, control = _arms(pipeline)
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
    slope = _finite(g.slope)
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
    slope_se = _finite(g.slope_se)
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
    scale = _Scale(result.model.binary)
    treatment, control = _arms(pipeline)
    items = sorted(result.importance.items(), key=lambda kv: -kv[1])[:TOP_MODERATORS]
    names = [k for k, _ in items][::-1]
    values = np.array([v for _, v in items][::-1]) * scale.factor
    labels = [_feature_label(pipeline, n) for n in names]
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
    """Each candidate learner's out-of-fold DR-loss, the chosen one highlighted."""
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
        note = "lowest: chosen" if chosen else f"+{v - best:.4f}"
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
    finite = values[np.isfinite(values)]
    if finite.size:
        spread = float(finite.max() - finite.min()) or abs(best) * 0.01 or 1.0
        ax.set_xlim(finite.min() - 0.1 * spread, finite.max() + 0.45 * spread)
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


def _nan_last(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


# --------------------------------------------------------------------------- model card


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
    treatment, control = _arms(pipeline)
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
        from sklearn.metrics import roc_auc_score

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
    scale = _Scale(binary)
    treatment, control = _arms(pipeline)
    out = pipeline.outcome
    measure = _measure(pipeline)
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
        "criterion": "lowest out-of-fold DR-loss: mean squared difference between a "
        "candidate's cross-fitted (and benefit-calibrated) benefit and the "
        "doubly-robust (AIPW with IPCW) pseudo-outcomes; its expectation is the "
        "benefit's mean squared error (PEHE) plus a constant",
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
    p_adjusted = _finite(
        getattr(result, "heterogeneity_p", blp.differential_forest_prediction.p_value)
    )
    heterogeneity = {
        "detected": p_adjusted is not None and p_adjusted < rule.alpha,
        "alpha": rule.alpha,
        "differential_p_adjusted": p_adjusted,
        "adjustment": f"Bonferroni over the {len(result.candidates)} candidate learners "
        "(the chosen one is the best of several on these data)",
        "blp": {
            "mean_forest_prediction": blp.mean_forest_prediction.to_dict(),
            "differential_forest_prediction": blp.differential_forest_prediction.to_dict(),
            "p_values": "one-sided (H0: coefficient <= 0), HC3 standard errors",
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
            f"Recommend {treatment} only when (1) the trial evidence passes (heterogeneity "
            f"detected by the BLP test at alpha = {rule.alpha:g} after adjusting for the "
            f"choice among learners, or the average effect is reliably non-zero), (2) the "
            f"patient's {rule.level:.0%} interval for the "
            f"benefit ({treatment} minus {control}) lies entirely above zero, and (3) the "
            f"predicted benefit is at least {margin_text}; recommend {control} in the "
            f"mirror-image case. Otherwise the recommendation is 'either' with the "
            f'rationale "{NO_DIFFERENCE}", and the patient\'s stated preference is echoed '
            "when known."
        ),
        "evidence_status": (
            f"Evidence {'passed' if rule.evidence else 'did not pass'}: "
            f"{rule.evidence_reason}."
            + ("" if rule.evidence else " Every patient therefore gets 'either'.")
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
            {"feature": k, "label": _feature_label(pipeline, k), "mean_abs_contribution": v}
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
        "limitations": _limitations(result),
    }
    clean: dict[str, Any] = _json_ready(card)
    return clean


def _candidate_extras(cand: Any) -> dict[str, Any]:
    """Per-candidate evidence where training provides it (BLP p, benefit slope)."""
    out: dict[str, Any] = {}
    blp = getattr(cand, "blp", None)
    if blp is not None:
        out["blp_differential_p"] = blp.differential_forest_prediction.p_value
    bc = getattr(cand, "benefit_calibration", None)
    if bc is not None:
        out["benefit_slope"] = bc.raw_slope
    return out


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
        {**r, "feature_label": _feature_label(pipeline, str(r.get("feature")), unit=False)}
        for r in sorted(rows, key=order)
    ]


def _rate_dict(res: Any) -> dict[str, Any]:
    return {k: v for k, v in res.to_dict().items() if k != "toc"}


def _limitations(result: TrainResult) -> list[str]:
    pipeline = result.model.pipeline
    rule = result.model.rule
    treatment, control = _arms(pipeline)
    items: list[str] = []
    if pipeline.synthetic:
        items.append(
            "The training data are SYNTHETIC (simulated patients). Every number in "
            "this card describes the simulation, not real patients."
        )
    items += [
        f"Population: trained on one randomized trial's participants ({len(result.cohort)} "
        "patients); the model is valid at most for patients who would have met that "
        "trial's eligibility criteria, under the trial's delivery of the two programmes. "
        "It has not been externally validated.",
        f"Model selection and evaluation share the same out-of-fold predictions: the learner "
        f"was chosen among {len(result.candidates)} candidates by out-of-fold DR-loss, and "
        "the BLP test, AUTOC/Qini and calibration for benefit are computed on that chosen "
        "learner's out-of-fold predictions. The BLP p-value is Bonferroni-adjusted for the "
        "choice; AUTOC/Qini are not, so they are slightly optimistic.",
    ]
    if getattr(result.model, "benefit_calibration", None) is not None:
        items.append(
            "The predicted benefit is recalibrated with a slope fitted on the same out-of-fold "
            "predictions that the calibration-for-benefit groups are computed on, so the "
            "groups' agreement with the diagonal is partly by construction."
        )
    items += [
        f"Benefit intervals ({rule.level:.0%}) come from a bootstrap ensemble of "
        f"{len(result.model.ensemble)} refits (plus the uncertainty of the benefit "
        "recalibration, where used): they reflect estimation variance, not model "
        "misspecification, unmeasured moderators or shift between the trial and practice. "
        "They are for the average benefit among patients with the same predicted benefit; "
        "an individual's benefit varies more (in the recovery study at N = 770 a nominal "
        "90% interval covered the true individual benefit about two times in three).",
    ]
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
    lo, hi = pipeline.gates.calibration_slope
    for arm, cal in result.calibration.items():
        if not math.isfinite(cal.slope) or not lo <= cal.slope <= hi:
            items.append(
                f"Calibration slope for {arm} ({cal.slope:.2f}) is outside the "
                f"promotion gate [{lo:g}, {hi:g}]: its predicted "
                f"{'probabilities' if result.model.binary else 'improvements'} are "
                "not reliable at the extremes."
            )
        if cal.ece is not None and cal.ece > pipeline.gates.max_ece:
            items.append(
                f"Expected calibration error for {arm} ({cal.ece:.3f}) exceeds the "
                f"promotion gate ({pipeline.gates.max_ece:g})."
            )
    if not rule.evidence:
        items.append(
            f"The trial data show no reliable difference between {treatment} and "
            f"{control} ({rule.evidence_reason}); the model recommends 'either' "
            "for every patient and its ranking should not be used to choose."
        )
    return items


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def render_model_card(card: Mapping[str, Any]) -> str:
    """Markdown for a card made by :func:`model_card_dict` (reads nothing else)."""
    binary = card["outcome"]["kind"] == "binary"
    scale = _Scale(binary)
    model = card["model"]
    treatment, control = model["treatment"], model["control"]
    lines: list[str] = [f"# {card['title']}", ""]
    if card["synthetic"]:
        lines += [SYNTHETIC_BANNER, ""]

    lines += _table(
        ["", ""],
        [
            ["Model", str(model["name"])],
            ["Version", _fmt(model["version"]) if model["version"] else "not registered"],
            ["MLflow run", _fmt(model["run_id"]) if model["run_id"] else "n/a"],
            ["Pipeline", str(model["pipeline"])],
            ["Learner", f"`{model['learner']}`: {model['learner_description']}"],
            ["Benefit", card["outcome"]["benefit"]],
            ["Cohort SHA-256", f"`{model['cohort_sha256']}`" if model["cohort_sha256"] else "n/a"],
            ["personalize", str(model["package_version"])],
        ],
    )

    use = card["intended_use"]
    lines += ["", "## Intended use", ""]
    if use.get("question"):
        lines += [f"*{use['question']}*", ""]
    lines += [
        use["purpose"],
        "",
        f"- **Users:** {use['users']}.",
        f"- **Population:** {use['population']}.",
        "- **Not intended for:**",
    ]
    lines += [f"  - {item}" for item in use["not_intended_for"]]
    lines += [
        "",
        "This is decision support: it informs a shared decision and is not a "
        "substitute for clinical judgment.",
    ]

    pop = card["population"]
    arm_names = list(pop["arms"])
    lines += [
        "",
        "## Population",
        "",
        f"{pop['n_patients']} randomized patients, {pop['n_observed']} with an observed "
        f"outcome; allocation to {treatment}: {pop['allocation_treatment']:.0%}. " + pop["note"],
        "",
    ]
    lines += _table(
        [
            "Arm",
            "Patients",
            "Outcome observed",
            "Observed " + ("responder rate" if binary else "mean improvement") + " (IPCW-weighted)",
        ],
        [
            [a, str(v["n"]), str(v["n_observed"]), scale.outcome(v["observed_outcome_mean"])]
            for a, v in pop["arms"].items()
        ],
    )
    lines += [
        "",
        "Baseline characteristics (numeric: mean (SD); categorical: share among "
        "non-missing values):",
        "",
    ]
    rows = []
    for f in pop["features"]:
        label = f["label"] + (f" ({f['unit']})" if f.get("unit") else "")
        if f["type"] == "numeric":

            def num(s: Mapping[str, Any]) -> str:
                if s["mean"] is None:
                    return "n/a"
                sd = "n/a" if s["sd"] is None else f"{s['sd']:.1f}"
                return f"{s['mean']:.1f} ({sd})"

            rows.append(
                [
                    label,
                    num(f["overall"]),
                    *(num(f["by_arm"][a]) for a in arm_names),
                    str(f["missing"]),
                ]
            )
        else:

            def cat(s: Mapping[str, Any]) -> str:
                return "; ".join(f"{k} {v:.0%}" for k, v in s.items() if v is not None) or "n/a"

            rows.append(
                [
                    label,
                    cat(f["overall"]),
                    *(cat(f["by_arm"][a]) for a in arm_names),
                    str(f["missing"]),
                ]
            )
    lines += _table(["Feature", "All", *arm_names, "Missing"], rows)

    out = card["outcome"]
    lines += [
        "",
        "## Outcome",
        "",
        f"**{out['definition']}**",
        "",
        f"- Kind: {out['kind']}" + (f"; responder: {out['responder']}" if out["responder"] else ""),
        f"- Scale: {out['scale']}",
        f"- Benefit: {out['benefit']}",
    ]

    src = card["data_source"]
    lines += [
        "",
        "## Data source",
        "",
        ("**" + src["statement"] + "**") if src["synthetic"] else src["statement"],
    ]
    if src["description"]:
        lines += ["", src["description"]]
    if src["simulated"] and src["synthetic"]:
        sim = src["simulated"]
        lines += [
            "",
            f"Simulator scenario `{sim['scenario']}` (n = {sim.get('n')}, seed {sim.get('seed')}).",
        ]

    miss = card["missing_outcomes"]
    lines += ["", "## Missing outcomes", "", miss["description"]]
    if miss["method"] != "complete_case":
        lines += [
            "",
            *_table(
                [
                    "Observed share",
                    "Weight clip",
                    "Clipped",
                    "Effective sample size",
                    "Min P(observed)",
                ],
                [
                    [
                        f"{miss['observed_share']:.1%}",
                        f"{miss['clip']:g} x mean",
                        str(miss["n_clipped"]),
                        _fmt(miss["effective_sample_size"], 1),
                        _fmt(miss["min_probability"]),
                    ]
                ],
            ),
        ]

    lrn = card["learners"]
    lines += [
        "",
        "## Learners compared",
        "",
        f"Selection: {lrn['criterion']} ({lrn['folds']}-fold cross-fitting). "
        f"**Chosen: `{lrn['chosen']}`** ({lrn['chosen_description']}).",
        "",
    ]
    lines += _table(
        [
            "Learner",
            "Description",
            "OOF DR-loss",
            "OOF R-loss",
            f"Policy gain over best arm ({scale.unit})",
            "BLP differential p (unadjusted)",
            "Benefit slope",
            "Chosen",
        ],
        [
            [
                f"`{c['name']}`",
                c["description"],
                _fmt(c["dr_loss"], 4),
                _fmt(c["r_loss"], 4),
                scale.benefit(c["policy_gain"]),
                _p(c.get("blp_differential_p")),
                _fmt(c.get("benefit_slope"), 2),
                "**chosen**" if c["chosen"] else "",
            ]
            for c in lrn["candidates"]
        ],
    )

    cal = card["calibration"]
    lines += ["", "## Calibration and discrimination per arm", "", cal["note"], ""]
    if binary:
        lines += _table(
            ["Arm", "Method", "n", "Brier", "ECE", "Intercept", "Slope", "c-statistic"],
            [
                [
                    a,
                    c["method"],
                    str(c["n"]),
                    _fmt(c["brier"]),
                    _fmt(c["ece"]),
                    _fmt(c["intercept"], 2),
                    _fmt(c["slope"], 2),
                    _fmt(c.get("c_statistic")),
                ]
                for a, c in cal["arms"].items()
            ],
        )
    else:
        lines += _table(
            ["Arm", "Method", "n", "RMSE", "Intercept", "Slope", "R²"],
            [
                [
                    a,
                    c["method"],
                    str(c["n"]),
                    _fmt(c["rmse"]),
                    _fmt(c["intercept"], 2),
                    _fmt(c["slope"], 2),
                    _fmt(c.get("r_squared")),
                ]
                for a, c in cal["arms"].items()
            ],
        )

    het = card["heterogeneity"]
    blp = het["blp"]
    ate = het["ate"]
    verdict = "detected" if het["detected"] else "not detected"
    lines += [
        "",
        "## Heterogeneity evidence",
        "",
        f"Is there heterogeneity the model captures? **{verdict}** at alpha = "
        f"{het['alpha']:g}: BLP differential p = {_p(het['differential_p_adjusted'])} "
        f"after {het['adjustment']}. All quantities out of fold.",
        "",
        "Best linear predictor test (grf `test_calibration`; "
        f"{blp['p_values']}; {blp['n_observed']} observed patients):",
        "",
    ]
    lines += _table(
        ["Coefficient", "Estimate", "SE", "p", "Reads"],
        [
            [
                "mean forest prediction",
                _fmt(blp["mean_forest_prediction"]["estimate"], 2),
                _fmt(blp["mean_forest_prediction"]["se"], 2),
                _p(blp["mean_forest_prediction"]["p_value"]),
                "1 = average benefit is right",
            ],
            [
                "differential forest prediction",
                _fmt(blp["differential_forest_prediction"]["estimate"], 2),
                _fmt(blp["differential_forest_prediction"]["se"], 2),
                _p(blp["differential_forest_prediction"]["p_value"]),
                "> 0 with small p = heterogeneity; 1 = spread is right",
            ],
        ],
    )
    lines += [
        "",
        *_table(
            ["Quantity", "Estimate", "CI", "p"],
            [
                [
                    f"Average effect ({treatment} − {control}), {ate['method']}",
                    scale.benefit(ate["estimate"]),
                    f"{ate['level']:.0%}: {scale.benefit(ate['ci_low'])} to "
                    f"{scale.benefit(ate['ci_high'])}",
                    _p(ate["p_value"]),
                ],
                *(
                    [
                        f"{r['target']} (RATE)",
                        scale.benefit(r["estimate"]),
                        f"{r['level']:.0%}: {scale.benefit(r['ci_low'])} to "
                        f"{scale.benefit(r['ci_high'])}",
                        _p(r["p_value"]),
                    ]
                    for r in (het["autoc"], het["qini"])
                ),
                [
                    "Policy gain over the best single arm",
                    scale.benefit(het["policy"]["gain_over_best_arm"]),
                    f"{het['policy']['level']:.0%}: "
                    f"{scale.benefit(het['policy']['gain_ci_low'])} to "
                    f"{scale.benefit(het['policy']['gain_ci_high'])}",
                    "",
                ],
            ],
        ),
    ]
    recal = het.get("benefit_recalibration")
    if recal:
        lines += [
            "",
            f"Benefit recalibration: {recal['description']}. Slope "
            f"{_fmt(recal['slope'], 2)} (SE {_fmt(recal['slope_se'], 2)}), average "
            f"effect {scale.benefit(recal['ate'])}.",
        ]
    bc = het["benefit_calibration"]
    lines += [
        "",
        f"Calibration for benefit by quantile group of predicted benefit (observed = "
        f"mean doubly-robust score, {bc['level']:.0%} CI); slope across groups "
        f"{_fmt(bc['slope'], 2)} (SE {_fmt(bc['slope_se'], 2)}), intercept "
        f"{scale.benefit(bc['intercept'])}:",
        "",
    ]
    lines += _table(
        ["Group", "n", "Predicted benefit range", "Mean predicted", "Mean observed", "CI"],
        [
            [
                f"Q{g['group']}",
                str(g["n"]),
                f"{scale.benefit(g['tau_min'])} to {scale.benefit(g['tau_max'])}",
                scale.benefit(g["mean_predicted"]),
                scale.benefit(g["mean_observed"]),
                f"{scale.benefit(g['ci_low'])} to {scale.benefit(g['ci_high'])}",
            ]
            for g in bc["groups"]
        ],
    )

    dec = card["decision_rule"]
    share = dec["share_either_training"]
    lines += [
        "",
        "## Decision rule",
        "",
        dec["description"],
        "",
        f"- Margin: {dec['margin_display']}; interval level: {dec['level']:.0%}; "
        f"alpha: {dec['alpha']:g}.",
        f"- {dec['evidence_status']}",
        "- Share of training patients given 'either': "
        + ("n/a" if share is None else f"{share:.0%}")
        + ".",
    ]

    exp = card["explanations"]
    lines += [
        "",
        "## Explanations",
        "",
        f"Per-patient drivers of the benefit: {exp['method']}, on the {exp['scale']}; "
        f"{exp['additivity']}. Global importance: {exp['importance_measure']}.",
        "",
    ]
    lines += _table(
        ["Feature", f"Mean |driver| ({scale.unit})"],
        [
            [
                i["label"],
                f"{i['mean_abs_contribution'] * scale.factor:.2f}"
                if binary
                else f"{i['mean_abs_contribution']:.3f}",
            ]
            for i in exp["importance"][:TOP_MODERATORS]
        ],
    )

    sub = card["subgroups"]
    lines += ["", "## Subgroup performance", ""]
    if not sub["rows"]:
        lines += ["No subgroups are configured (pipeline key `subgroups`)."]
    else:
        lines += [sub["note"], ""]
        arms = [treatment, control]
        rows = []
        for r in sub["rows"]:
            se = r.get("observed_benefit_se")
            rows.append(
                [
                    str(r.get("feature_label") or r["feature"]),
                    str(r["group"]),
                    str(r["n"]),
                    *(
                        f"{scale.outcome(r.get(f'predicted_{a}'))} / "
                        f"{scale.outcome(r.get(f'observed_{a}'))}"
                        for a in arms
                    ),
                    scale.benefit(r.get("predicted_benefit")),
                    scale.benefit(r.get("observed_benefit_dr"))
                    + ("" if se is None else f" ({scale.benefit(se).lstrip('+')})"),
                ]
            )
        what = "response" if binary else "improvement"
        lines += _table(
            [
                "Feature",
                "Group",
                "n",
                *(f"{a} {what}: predicted / observed" for a in arms),
                "Predicted benefit",
                "Observed benefit (SE)",
            ],
            rows,
        )

    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    return "\n".join(lines) + "\n"


def model_card(
    result: TrainResult,
    *,
    model_name: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
) -> str:
    """The model card as Markdown (rendered from :func:`model_card_dict`)."""
    return render_model_card(
        model_card_dict(result, model_name=model_name, version=version, run_id=run_id)
    )
