"""How a run's numbers and names read to a person: the outcome's scale (percentages or
points), feature and arm labels, the instrument the outcome is measured on.

Shared by the figures, the card's data and its templates so that all three word a run
alike.
"""

from __future__ import annotations

import math
from typing import Any

from personalize.config import NumericFeature, Pipeline
from personalize.learners import ARM_DRIVER

ARM_DRIVER_LABEL = "Treatment arm itself (same for every patient)"
TOP_MODERATORS = 15  # moderators shown in the figure and the card's table


class OutcomeScale:
    """How numbers on the outcome's scale are shown: percentages for binary outcomes
    (probabilities, benefits in percentage points), points for continuous ones."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.factor = 100.0 if binary else 1.0
        self.unit = "pp" if binary else "points"
        self.unit_long = "percentage points" if binary else "points"

    def benefit(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value * 100:+.1f} pp" if self.binary else f"{value:+.2f}"

    def outcome(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value * 100:.1f}%" if self.binary else f"{value:.2f}"


def finite(value: Any) -> float | None:
    """The value as a float, or None when it is missing, NaN or infinite (shown as n/a)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def feature_label(pipeline: Pipeline, name: str, unit: bool = True) -> str:
    """The pipeline's label for a feature (with its unit, if asked), or the column name."""
    if name == ARM_DRIVER:
        return ARM_DRIVER_LABEL
    spec = pipeline.features.get(name)
    if spec is None:
        return name
    label = spec.label or name
    if unit and isinstance(spec, NumericFeature) and spec.unit:
        label += f" ({spec.unit})"
    return label


def outcome_measure(pipeline: Pipeline) -> str:
    """The instrument the outcome is measured on, in words."""
    out = pipeline.outcome
    source = out.baseline or out.column
    if source is not None and source in pipeline.features:
        return pipeline.features[source].label or source
    return source or "the outcome"


def arm_labels(pipeline: Pipeline) -> tuple[str, str]:
    """(treatment, control) as the pipeline labels the arms."""
    return pipeline.cohort.arm.treatment, pipeline.cohort.arm.control
