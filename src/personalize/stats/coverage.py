"""What a benefit interval covers, as measured.

A nominal 90% is a promise about some target. For a posterior interval (`bcf`) the target is
the patient's own benefit; for a bootstrap interval (the LightGBM and PATH learners) it is
the average benefit of patients like this one, and a patient's own benefit varies more.
How often each actually covered its target, and the patient's own benefit, was measured
in the recovery study on SYNTHETIC STAMP-shaped trials (benchmarks/results/recovery.md);
every place that shows an interval (API, page, CDS card, model card) says so from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredCoverage:
    own: float  # share of test patients whose own true benefit lay in their interval
    group: float  # ... whose similar patients' mean true benefit lay in it
    width: float  # median width, probability scale
    n: int  # patients per simulated training trial
    replications: int


# Nominal 90% intervals, `stamp` scenario, medians over replications (recovery study).
POSTERIOR = MeasuredCoverage(own=0.92, group=1.00, width=0.40, n=770, replications=10)
BOOTSTRAP = MeasuredCoverage(own=0.56, group=1.00, width=0.21, n=770, replications=10)


def measured(individual: bool) -> MeasuredCoverage:
    return POSTERIOR if individual else BOOTSTRAP


def covers(individual: bool) -> str:
    """What the interval is for, with how often it covered in simulated trials."""
    m = measured(individual)
    trials = f"in simulated trials of {m.n} patients a 90% interval"
    if individual:
        return (
            f"this patient's own benefit (posterior interval; {trials} covered the "
            f"patient's true benefit for {m.own:.0%} of patients)"
        )
    return (
        f"the average benefit of patients like this one (bootstrap interval; {trials} "
        f"covered it for {m.group:.0%} of patients, but a patient's own benefit for only "
        f"{m.own:.0%}: individual patients vary more)"
    )
