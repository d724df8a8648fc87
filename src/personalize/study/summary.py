"""What a study found: medians per method, ours against the best peer, interval diagnosis,
and the tables (terminal and Markdown) that report them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy.stats import norm

from personalize.study.run import OURS, StudyResult

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
    "width_at_level",
    "gain_capture",
    "gain_capture_bet",
    "share_against_preference",
    "accuracy_against_preference",
    "seconds",
]
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
    ("width_at_level", "width at nominal cov.", "{:.3f}"),
    ("gain_capture", "gain capture", "{:.2f}"),
    ("gain_capture_bet", "gain capture (better bet)", "{:.2f}"),
    ("gain_capture_sign", "gain capture (estimate's side)", "{:.2f}"),
    ("share_bet", "given a bet", "{:.2f}"),
    ("checks_fired", "checks fired", "{:.2f}"),
    ("share_either_min", "either (worst rep.)", "{:.2f}"),
    ("het_reject_rate", "het. rejects", "{:.2f}"),
    ("seconds", "s/fit", "{:.1f}"),
]


def records_of(results: Sequence[StudyResult]) -> pd.DataFrame:
    """Every replication's records of every cohort size, one table."""
    return pd.concat([r.records for r in results], ignore_index=True)


def summarize_results(results: Sequence[StudyResult]) -> pd.DataFrame:
    """`summarize` over the records of every cohort size (one pipeline, one level)."""
    return summarize(records_of(results), results[0].level)


def summarize(records: pd.DataFrame, level: float) -> pd.DataFrame:
    """One row per (n, method): medians over replications (and IQR of PEHE), rates of the
    tests, chosen-learner counts, and ours-over-best-peer ratios."""
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
            present = col in g and g[col].notna().any()  # older records lack newer metrics
            row[col] = float(g[col].median()) if present else math.nan
        row["pehe_q25"] = float(g["pehe"].quantile(0.25))
        row["pehe_q75"] = float(g["pehe"].quantile(0.75))
        row["pehe_over_sd"] = float((g["pehe"] / g["sd_true"]).median())
        row["share_either_min"] = float(g["share_either"].min())
        row["gain_capture_mean"] = (
            float(g["gain_capture"].mean()) if g["gain_capture"].notna().any() else math.nan
        )
        row["coverage_mean"] = (
            float(g["coverage"].mean()) if g["coverage"].notna().any() else (math.nan)
        )
        if method == OURS:
            row.update(_ours_summary(g))
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


def _ours_summary(g: pd.DataFrame) -> dict[str, Any]:
    """Ours only: test rejection rates, chosen learners, and the selection diagnosis."""
    row: dict[str, Any] = {
        "het_reject_rate": float(g["het_reject"].mean()),
        "ate_reject_rate": float(g["ate_reject"].mean()),
        "evidence_rate": float(g["evidence"].mean()),
        "raw_reject_rate": float((g["raw_p"] < 0.05).mean()),
        "autoc_reject_rate": float(g["autoc_excludes_zero"].mean()),
        "benefit_slope": float(g["benefit_slope"].median()),
    }
    counts = g["chosen"].value_counts()
    row["chosen"] = ", ".join(f"{k} {v}" for k, v in counts.items())
    cand = [c for c in g.columns if c.startswith("cand_") and c.endswith("_pehe")]
    for col in cand:
        row[col] = float(g[col].median())
    if cand:
        row["oracle_choice_pehe"] = float(g[cand].min(axis=1).median())
    if "one_se_pehe" in g and g["one_se_pehe"].notna().any():
        row["one_se_pehe"] = float(g["one_se_pehe"].median())
        row["ensemble_pehe"] = float(g["ensemble_pehe"].median())
        picks = g["sel_one_se"].value_counts()
        row["one_se_chosen"] = ", ".join(f"{k} {v}" for k, v in picks.items())
    return row


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
        ours = result.records["method"] == OURS
        slope = result.records.loc[ours, "benefit_slope"].to_numpy()
        vb, cv = a["var_boot"], a["coef_var"]
        s = slope[:, None]
        oof = result.records.loc[ours, "oof_raw_sd"].to_numpy()
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


# --------------------------------------------------------------------------- tables


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def summary_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table (an N column for several sizes)."""
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


def render(summary: pd.DataFrame, title: str, console: Console | None = None) -> None:
    """The results table and ours-over-best-peer ratios, on the terminal."""
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


def markdown_report(results: Sequence[StudyResult], summary: pd.DataFrame, command: str) -> str:
    """The study's Markdown results: setup, the table, and per N the selection, tests,
    policy references and interval diagnosis of ours."""
    level = results[0].level
    diagnosis = {str(r.n): diagnose_intervals(r) for r in results}
    refs = {str(r.n): references(r) for r in results}
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
            f"  - tests (share of replications rejecting at alpha): heterogeneity (combined) "
            f"{r['het_reject_rate']:.2f}, average effect {r['ate_reject_rate']:.2f}, the chosen "
            f"learner's alone without the cross-fitting bound {r['raw_reject_rate']:.2f}, "
            f"AUTOC CI excludes 0 "
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
    return "\n".join(lines) + "\n"
