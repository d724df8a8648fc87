"""The study's figures: per-method spread at one N, and medians against N.

Drawn on `matplotlib.figure.Figure` directly (no pyplot): no GUI backend and no global
figure state, whatever else runs in the process."""

from __future__ import annotations

from pathlib import Path

import matplotlib.style
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

DPI = 110


def plot_study(records: pd.DataFrame, level: float, path: Path) -> None:
    """Box plots per method: PEHE (with sd of the true benefit), regret, coverage (with the
    nominal level) and share of `either`."""
    methods = list(dict.fromkeys(records["method"]))
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
    with matplotlib.style.context("default"):  # whatever style another module left set
        fig = Figure(figsize=(16, 4))
        axes = fig.subplots(1, 4)
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
        fig.savefig(path, dpi=DPI)


def plot_curve(summary: pd.DataFrame, path: Path) -> None:
    """Median metric against the cohort size, one line per method."""
    panels = [
        ("pehe", "PEHE (median)"),
        ("regret", "regret (median)"),
        ("coverage", "coverage (median)"),
        ("het_reject_rate", "heterogeneity test power"),
        ("share_either", "share 'either' (median)"),
    ]
    sizes = sorted(summary["n"].unique())
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(4 * len(panels), 3.6))
        axes = fig.subplots(1, len(panels))
        for ax, (col, title) in zip(axes, panels, strict=True):
            for method, g in summary.groupby("method", sort=False):
                if col in g and g[col].notna().any():
                    ax.plot(g["n"], g[col], marker="o", label=method)
            if col == "pehe":
                ax.plot(summary["n"], summary["sd_true"], "r--", label="sd(τ)")
            if col == "coverage":
                ax.axhline(float(summary["nominal"].iloc[0]), color="red", linestyle="--")
            ax.set_xscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(v) for v in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(title)
            ax.set_xlabel("N")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
