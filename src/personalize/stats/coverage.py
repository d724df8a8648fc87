"""What a benefit interval covers, as measured, and where it was measured.

A nominal 90% is a promise about some target. For a posterior interval (`bayes_average`,
`bayes_linear`, `bcf`) the target is the expected benefit of patients with this patient's
measured characteristics (what "this patient's benefit" means: a modifier the trial did not
record is beyond any model of the recorded ones); for a bootstrap interval (the LightGBM and
PATH learners) it is the average benefit of patients like this one, and the benefit of
patients with exactly this patient's characteristics varies more.

How often each actually covered its target was measured in the recovery study on SYNTHETIC
STAMP-shaped trials (benchmarks/results/recovery.md). The default's figure comes from the
scenario library's held-out shapes of truth (docs/scenarios.md): shapes nobody tuned on,
most outside its model class; the figure quoted first is the worst of those shapes, not an
average over the shape it was designed for. Other learners were measured on the linear
shape only, and say so. Every place that shows an interval (API, page, CDS card, model
card) says it from here; a learner and outcome kind the study did not measure says that
instead of borrowing another's figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from personalize.learners import Kind


@dataclass(frozen=True)
class MeasuredCoverage:
    own: float  # share of test patients whose true benefit lay in their interval (mean)
    group: float  # ... whose similar patients' mean true benefit lay in it
    width: float  # median width, on the benefit's scale (probability or points)
    n: int  # patients per simulated training trial
    replications: int  # simulated trials per shape of truth
    shapes: tuple[str, ...] = ("linear",)  # the scenario-library families measured on
    held_out: bool = False  # those families were held out from every choice of the method
    worst: float | None = None  # the worst family's mean coverage (None: one family)
    worst_shape: str | None = None

    def where(self) -> str:
        """Where the figure was measured, in words."""
        if self.held_out:
            return (
                f"simulated trials of {self.n} patients with {len(self.shapes)} shapes of "
                "truth held out from the model's design"
            )
        return (
            f"simulated trials of {self.n} patients whose truth has the linear shape (the "
            "shape the linear model assumes; other shapes were not measured)"
        )

    def said(self) -> str:
        """How often it covered: the worst held-out shape first."""
        if self.held_out and self.worst is not None:
            return (
                f"{self.worst:.0%} of patients on the worst shape ({self.worst_shape}), "
                f"{self.own:.0%} on average"
            )
        return f"{self.own:.0%} of patients"


# The scenario library's held-out families (docs/scenarios.md; the study's code holds the
# same list, which this layer may not import)
HELD_OUT_SHAPES = (
    "logit",
    "saturating",
    "u-shape",
    "bands",
    "weak-many",
    "unmeasured",
    "heteroscedastic",
    "null-curved",
)

# Nominal 90% intervals at N = 770. The default (`bayes_average`): means over the held-out
# families' trials (benchmarks/results/held-out-binary/ and held-out-continuous/); the
# others: medians over the linear family's (`stamp`) trials.
POSTERIOR: dict[tuple[str, Kind], MeasuredCoverage] = {
    ("bayes_average", "continuous"): MeasuredCoverage(
        own=0.838,
        group=0.998,
        width=1.648,
        n=770,
        replications=3,
        shapes=HELD_OUT_SHAPES,
        held_out=True,
        worst=0.679,
        worst_shape="bands",
    ),
    ("bayes_average", "binary"): MeasuredCoverage(
        own=0.895,
        group=0.995,
        width=0.371,
        n=770,
        replications=6,
        shapes=HELD_OUT_SHAPES,
        held_out=True,
        worst=0.812,
        worst_shape="bands",
    ),
    ("bayes_linear", "binary"): MeasuredCoverage(
        own=0.89, group=1.00, width=0.341, n=770, replications=30
    ),
    ("bayes_linear", "continuous"): MeasuredCoverage(
        own=0.86, group=1.00, width=1.585, n=770, replications=30
    ),
    ("bcf", "binary"): MeasuredCoverage(own=0.92, group=1.00, width=0.40, n=770, replications=10),
}
BOOTSTRAP: dict[Kind, MeasuredCoverage] = {
    "binary": MeasuredCoverage(own=0.56, group=1.00, width=0.21, n=770, replications=10),
    "continuous": MeasuredCoverage(own=0.68, group=0.99, width=1.36, n=770, replications=10),
}


def measured(learner: str, kind: Kind, individual: bool) -> MeasuredCoverage | None:
    """The study's figures for this learner's interval, or None where it has none."""
    return POSTERIOR.get((learner, kind)) if individual else BOOTSTRAP.get(kind)


def covers(learner: str, kind: Kind, individual: bool) -> str:
    """What the interval is for, with how often and where it covered."""
    m = measured(learner, kind, individual)
    if individual:
        said = (
            "the expected benefit of patients with this patient's measured characteristics "
            "(posterior interval; "
        )
        if m is None:
            return said + "its coverage was not measured for this learner and outcome)"
        return said + f"in {m.where()} a 90% interval covered it for {m.said()})"
    said = "the average benefit of patients like this one (bootstrap interval; "
    if m is None:
        return said + "its coverage was not measured for this outcome)"
    return (
        said + f"in {m.where()} a 90% interval covered it for {m.group:.0%} of patients, but "
        f"the benefit of patients with this patient's characteristics for only {m.own:.0%}: "
        "patients vary more than their group's average)"
    )
