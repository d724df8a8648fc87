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

from personalize.learners import Kind, default_learner_names, learner_class
from personalize.stats import coverage

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def ours(prefix: str) -> pd.DataFrame:
    records = pd.read_csv(RESULTS / f"{prefix}-records.csv")
    return records[records["method"] == "ours"]


# which committed records each stated figure comes from
POSTERIOR_RECORDS: dict[tuple[str, Kind], str] = {
    ("bayes_linear", "binary"): "stamp-30",  # the default
    ("bayes_linear", "continuous"): "stamp-continuous",  # the default
    ("bcf", "binary"): "stamp-bcf",
}
BOOTSTRAP_RECORDS: dict[Kind, str] = {
    "binary": "stamp-default",
    "continuous": "stamp-continuous-default",
}
CLAIMS = [
    *((coverage.POSTERIOR[key], prefix, key[0]) for key, prefix in POSTERIOR_RECORDS.items()),
    *((coverage.BOOTSTRAP[kind], prefix, None) for kind, prefix in BOOTSTRAP_RECORDS.items()),
]


def test_every_stated_figure_has_its_records() -> None:
    assert set(POSTERIOR_RECORDS) == set(coverage.POSTERIOR)
    assert set(BOOTSTRAP_RECORDS) == set(coverage.BOOTSTRAP)


@pytest.mark.parametrize(("claim", "prefix", "learner"), CLAIMS)
def test_stated_coverage_is_the_measured_median(
    claim: coverage.MeasuredCoverage, prefix: str, learner: str | None
) -> None:
    r = ours(prefix)
    if learner is None:  # the bootstrap learners, chosen among themselves
        assert not any(learner_class(name).posterior for name in r["chosen"])
    else:
        assert (r["chosen"] == learner).all()
    assert len(r) == claim.replications and (r["n"] == claim.n).all()
    assert claim.own == pytest.approx(r["coverage"].median(), abs=0.005)
    assert claim.group == pytest.approx(r["group_coverage"].median(), abs=0.005)
    assert claim.width == pytest.approx(r["width"].median(), abs=0.005)


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_the_default_learner_gives_an_interval_that_covers_the_patient(kind: Kind) -> None:
    """A pipeline that names no learner gets one whose interval is for the patient's own
    benefit, and covered it more often than the bootstrap learners' interval did."""
    (name,) = default_learner_names(kind)
    assert learner_class(name).posterior
    claim = coverage.POSTERIOR[name, kind]
    assert claim.own > coverage.BOOTSTRAP[kind].own
    said = coverage.covers(name, kind, True)
    assert "own benefit" in said and f"{claim.own:.0%}" in said


def test_an_unmeasured_learner_says_so() -> None:
    said = coverage.covers("bcf", "continuous", True)
    assert "not measured" in said and "%" not in said
