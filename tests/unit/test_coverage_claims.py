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

from personalize.data.families import HELD_OUT
from personalize.learners import Kind, default_learner_names, learner_class
from personalize.stats import coverage

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def ours_in(path: Path) -> pd.DataFrame:
    records = pd.read_csv(path)
    return records[records["method"] == "ours"]


def ours(prefix: str) -> pd.DataFrame:
    return ours_in(RESULTS / "earlier" / prefix / f"{prefix}-records.csv")


# which committed records each stated figure comes from: a folder of a library run (the
# default's, on the held-out families) or an earlier run's records, `earlier/<prefix>/`
# (others, on the linear family)
POSTERIOR_RECORDS: dict[tuple[str, Kind], str] = {
    ("bayes_average", "binary"): "held-out-binary",  # the default
    ("bayes_average", "continuous"): "held-out-continuous",
    ("bayes_linear", "binary"): "stamp-30",
    ("bayes_linear", "continuous"): "stamp-continuous",
    ("bcf", "binary"): "stamp-bcf",
}
BOOTSTRAP_RECORDS: dict[Kind, str] = {
    "binary": "stamp-default",
    "continuous": "stamp-continuous-default",
}
CLAIMS = [
    *(
        (coverage.POSTERIOR[key], prefix, key[0])
        for key, prefix in POSTERIOR_RECORDS.items()
        if not coverage.POSTERIOR[key].held_out
    ),
    *((coverage.BOOTSTRAP[kind], prefix, None) for kind, prefix in BOOTSTRAP_RECORDS.items()),
]
HELD_OUT_CLAIMS = [
    (key, folder) for key, folder in POSTERIOR_RECORDS.items() if coverage.POSTERIOR[key].held_out
]


def test_the_held_out_shapes_are_the_librarys() -> None:
    assert coverage.HELD_OUT_SHAPES == HELD_OUT


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


@pytest.mark.parametrize(("key", "folder"), HELD_OUT_CLAIMS)
def test_the_defaults_figure_is_its_worst_held_out_family(
    key: tuple[str, Kind], folder: str
) -> None:
    """The stated coverage names the held-out families it was measured on and quotes the
    worst family's mean, from that run's records."""
    claim = coverage.POSTERIOR[key]
    assert set(claim.shapes) <= set(HELD_OUT)
    if key[1] == "binary":  # every held-out family was run for a responder
        assert set(claim.shapes) == set(HELD_OUT)
    per = {f: ours_in(RESULTS / folder / f"{f}-records.csv") for f in claim.shapes}
    for records in per.values():
        assert (records["chosen"] == key[0]).all()
        assert len(records) == claim.replications and (records["n"] == claim.n).all()
    means = {f: float(r["coverage"].mean()) for f, r in per.items()}
    worst = min(means, key=lambda f: means[f])
    assert claim.worst_shape == worst
    assert claim.worst == pytest.approx(means[worst], abs=0.005)
    every = pd.concat(per.values())
    assert claim.own == pytest.approx(every["coverage"].mean(), abs=0.005)
    assert claim.group == pytest.approx(every["group_coverage"].mean(), abs=0.005)
    assert claim.width == pytest.approx(every["width"].median(), abs=0.005)


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_the_default_learner_gives_an_interval_for_the_patient(kind: Kind) -> None:
    """A pipeline that names no learner gets a posterior interval, for the expected benefit
    of patients with this patient's measured characteristics; where it was measured, the
    figure quoted is the worst held-out family's."""
    (name,) = default_learner_names(kind)
    assert learner_class(name).posterior
    said = coverage.covers(name, kind, True)
    assert "patients with this patient's measured characteristics" in said
    claim = coverage.measured(name, kind, True)
    if claim is None:
        assert "not measured" in said
        return
    assert claim.held_out and claim.worst is not None
    assert f"{claim.worst:.0%} of patients on the worst shape ({claim.worst_shape})" in said
    assert "held out" in said


def test_an_unmeasured_learner_says_so() -> None:
    said = coverage.covers("bcf", "continuous", True)
    assert "not measured" in said and "%" not in said
