"""What a study leaves under --out: records, summary, diagnosis, figures, Markdown, arrays."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personalize.study.figures import plot_curve, plot_study
from personalize.study.run import StudyResult
from personalize.study.summary import (
    diagnose_intervals,
    markdown_report,
    records_of,
    references,
    summarize,
)


def write_outputs(
    results: Sequence[StudyResult], out: Path, prefix: str, command: str
) -> dict[str, Path]:
    """CSV of every replication, summary CSV, diagnosis JSON, plots, a markdown report and
    ours' test-set arrays (float32 npz); returns the files written by role."""
    out.mkdir(parents=True, exist_ok=True)
    records = records_of(results)
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
    files["report"].write_text(markdown_report(results, summary, command))
    arrays: dict[str, Any] = {
        f"n{r.n}_{k}": v.astype(np.float32) for r in results for k, v in r.arrays.items()
    }
    files["arrays"] = out / f"{prefix}-arrays.npz"
    np.savez_compressed(files["arrays"], **arrays)
    return files
