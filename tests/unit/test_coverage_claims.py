"""What every answer says its interval covered is what the committed recovery study measured.

`stats.coverage` feeds the API's `benefit.covers`, the page, the CDS card and the model
card. These tests read the study's per-replication records under `benchmarks/results/`
(SYNTHETIC trials), so rerunning the study with different results fails here until the
stated figures are updated with it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from personalize.learners import default_learner_names, learner_class
from personalize.stats import coverage

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def ours(prefix: str) -> pd.DataFrame:
    records = pd.read_csv(RESULTS / f"{prefix}-records.csv")
    return records[records["method"] == "ours"]


@pytest.mark.parametrize(
    ("claim", "prefix", "posterior"),
    [
        (coverage.POSTERIOR, "stamp", True),  # the shipped binary default: bcf
        (coverage.BOOTSTRAP, "stamp-default", False),  # the LightGBM/PATH candidates
    ],
)
def test_stated_coverage_is_the_measured_median(
    claim: coverage.MeasuredCoverage, prefix: str, posterior: bool
) -> None:
    r = ours(prefix)
    assert all(learner_class(name).posterior == posterior for name in r["chosen"])
    assert len(r) == claim.replications and (r["n"] == claim.n).all()
    assert claim.own == pytest.approx(r["coverage"].median(), abs=0.005)
    assert claim.group == pytest.approx(r["group_coverage"].median(), abs=0.005)
    assert claim.width == pytest.approx(r["width"].median(), abs=0.005)


def test_the_binary_default_is_the_learner_whose_interval_covers_the_patient() -> None:
    """The 85-95% target for a patient's own benefit is met by the posterior interval, and
    binary outcomes get it without naming a learner."""
    assert [learner_class(n).posterior for n in default_learner_names("binary")] == [True]
    assert 0.85 <= coverage.POSTERIOR.own <= 0.95
    assert "own benefit" in coverage.covers(True)
    assert f"{coverage.POSTERIOR.own:.0%}" in coverage.covers(True)
