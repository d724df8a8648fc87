"""The scenario library's table: per family and method, the study's headline numbers.

One study run over several families (docs/scenarios.md) leaves one folder; this reads each
family's per-trial records and writes the table a reader compares methods on, development
and held-out families apart: mean PEHE, mean and worst-trial coverage of the 90% interval,
median width, gain capture with and without the better bet (and what following the bet gained
over a coin per patient offered one), and for ours how often the
model checks fired where the interval failed (coverage below 0.80: a hit) and where it held
(a false alarm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from personalize.data.families import DEVELOPMENT, FAMILIES

FAILED = 0.80  # a trial whose interval covered fewer patients than this: the checks should fire


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame or not frame[column].notna().any():
        return math.nan
    return float(frame[column].mean())


def bet_vs_coin(records: pd.DataFrame) -> float:
    """Mean over the trials of what following the better bet gained over a coin, per
    patient offered one, on the outcome's scale (probability for a responder: x 100 is
    percentage points): the gain capture with and without the bet differ by exactly that
    gain spread over all test patients. NaN where no trial offered a bet."""
    need = ("gain_capture_bet", "gain_capture", "value_oracle", "value_best_arm", "share_bet")
    if any(c not in records for c in need):
        return math.nan
    r = records[records["share_bet"] > 0]
    if r.empty:
        return math.nan
    spread = r["value_oracle"] - r["value_best_arm"]
    per_patient = (r["gain_capture_bet"] - r["gain_capture"]) * spread / r["share_bet"]
    return float(per_patient.mean())


def family_rows(family: str, records: pd.DataFrame) -> list[dict[str, object]]:
    """One row per method of one family's records (one row per trial and method)."""
    rows: list[dict[str, object]] = []
    for method, got in records.groupby("method", sort=False):
        cov = got["coverage"] if "coverage" in got else pd.Series(dtype=float)
        row: dict[str, object] = {
            "family": family,
            "split": "development" if family in DEVELOPMENT else "held-out",
            "method": method,
            "trials": len(got),
            "pehe": _mean(got, "pehe"),
            "sd_true": _mean(got, "sd_true"),
            "coverage": float(cov.mean()) if cov.notna().any() else math.nan,
            "coverage_worst": float(cov.min()) if cov.notna().any() else math.nan,
            "width": float(got["width"].median()) if "width" in got else math.nan,
            "gain_capture": _mean(got, "gain_capture"),
            "gain_capture_bet": _mean(got, "gain_capture_bet"),
            "share_bet": _mean(got, "share_bet"),
            "bet_vs_coin": bet_vs_coin(got),
            "het_reject": _mean(got, "het_reject"),
            "seconds": _mean(got, "seconds"),
        }
        if "checks_fired" in got and got["checks_fired"].notna().any():
            fired = got["checks_fired"].astype(float)
            failed = cov < FAILED
            row["checks_fired"] = float(fired.mean())
            row["checks_hit"] = float(fired[failed].mean()) if failed.any() else math.nan
            held = ~failed
            row["checks_false_alarm"] = float(fired[held].mean()) if held.any() else math.nan
        rows.append(row)
    return rows


def family_table(records: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every family's rows, in the library's order."""
    order = [f for f in FAMILIES if f in records]
    return pd.DataFrame([row for f in order for row in family_rows(f, records[f])])


def _cell(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    ("family", "family"),
    ("method", "method"),
    ("trials", "trials"),
    ("pehe", "PEHE"),
    ("sd_true", "sd(τ)"),
    ("coverage", "coverage"),
    ("coverage_worst", "worst trial"),
    ("width", "width"),
    ("gain_capture", "gain capture"),
    ("gain_capture_bet", "with bet"),
    ("share_bet", "share bet"),
    ("bet_vs_coin", "bet − coin"),
    ("het_reject", "het. rejects"),
    ("checks_fired", "checks fired"),
    ("checks_hit", "hit (cov<0.8)"),
    ("checks_false_alarm", "false alarm"),
    ("seconds", "s/fit"),
)


def markdown(table: pd.DataFrame, title: str, command: str) -> str:
    """The table as Markdown, development and held-out families apart."""
    lines = [f"# {title}", "", f"Command: `{command}`", "", "SYNTHETIC data.", ""]
    for split in ("development", "held-out"):
        part = table[table["split"] == split]
        if part.empty:
            continue
        cols = [(k, h) for k, h in COLUMNS if k in part]
        lines += [f"## {split.capitalize()} families", ""]
        lines.append("| " + " | ".join(h for _, h in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, row in part.iterrows():
            lines.append("| " + " | ".join(_cell(row[k]) for k, _ in cols) + " |")
        lines.append("")
    return "\n".join(lines)
