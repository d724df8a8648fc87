"""What a benefit interval covers, as measured.

A nominal 90% is a promise about some target. For a posterior interval (`bayes_linear`,
`bcf`) the target is the patient's own benefit; for a bootstrap interval (the LightGBM and
PATH learners) it is the average benefit of patients like this one, and a patient's own
benefit varies more. How often each actually covered its target, and the patient's own
benefit, was measured in the recovery study on SYNTHETIC STAMP-shaped trials
(benchmarks/results/recovery.md); every place that shows an interval (API, page, CDS card,
model card) says so from here. A learner and outcome kind the study did not measure says
that instead of borrowing another's figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from personalize.learners import Kind


@dataclass(frozen=True)
class MeasuredCoverage:
    own: float  # share of test patients whose own true benefit lay in their interval
    group: float  # ... whose similar patients' mean true benefit lay in it
    width: float  # median width, on the benefit's scale (probability or points)
    n: int  # patients per simulated training trial
    replications: int


# Nominal 90% intervals, `stamp` scenario, medians over replications (recovery study):
# per posterior learner and outcome kind, and for the bootstrap learners per kind.
POSTERIOR: dict[tuple[str, Kind], MeasuredCoverage] = {
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
    """What the interval is for, with how often it covered in simulated trials."""
    m = measured(learner, kind, individual)
    if individual:
        said = "this patient's own benefit (posterior interval; "
        if m is None:
            return said + "its coverage was not measured for this learner and outcome)"
        return (
            said + f"in simulated trials of {m.n} patients a 90% interval covered the "
            f"patient's true benefit for {m.own:.0%} of patients)"
        )
    said = "the average benefit of patients like this one (bootstrap interval; "
    if m is None:
        return said + "its coverage was not measured for this outcome)"
    return (
        said + f"in simulated trials of {m.n} patients a 90% interval covered it for "
        f"{m.group:.0%} of patients, but a patient's own benefit for only {m.own:.0%}: "
        "individual patients vary more)"
    )
