"""The trained model as the service and the scorer use it: one predict path for both.

Per patient: calibrated outcome under each arm, benefit (treatment minus control) with its
interval, the recommendation with its rationale, the top drivers and warnings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from personalize.calibration import ArmCalibrator, BenefitCalibration
from personalize.cohort.pipeline import CategoricalFeature, NumericFeature, Pipeline
from personalize.cohort.validate import NO_PREFERENCE, feature_frame
from personalize.decision import DecisionRule
from personalize.learners import ARM_DRIVER, EffectLearner
from personalize.learners.base import rescale
from personalize.prognosis import Prognosis, split_arms

OUTPUT_COLUMNS = [
    "outcome_control",
    "outcome_treatment",
    "benefit",
    "benefit_lower",
    "benefit_upper",
    "recommendation",
    "rationale",
    "drivers",
    "warnings",
]


@dataclass(frozen=True)
class TrainingRange:
    """What the training data covered, to warn about extrapolation."""

    numeric: dict[str, tuple[float, float]]
    levels: dict[str, list[str]]

    @classmethod
    def of(cls, X: pd.DataFrame) -> TrainingRange:
        numeric, levels = {}, {}
        for name in X.columns:
            col = X[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                levels[name] = sorted(str(v) for v in col.dropna().unique())
            elif col.notna().any():
                numeric[name] = (float(col.min()), float(col.max()))
        return cls(numeric, levels)

    def warnings(self, X: pd.DataFrame) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in range(len(X))]
        for name, (lo, hi) in self.numeric.items():
            values = X[name].to_numpy(dtype=float)
            for i in np.flatnonzero((values < lo) | (values > hi)):
                out[i].append(
                    f"{name}={values[i]:g} is outside the training data's range "
                    f"[{lo:g}, {hi:g}]; the estimate is an extrapolation"
                )
        for name, seen in self.levels.items():
            col = X[name].astype(object)
            for i in np.flatnonzero(col.notna().to_numpy() & ~col.isin(seen).to_numpy()):
                out[i].append(f"{name}={col.iloc[i]} was not seen in the training data")
        return out


@dataclass
class PersonalizeModel:
    pipeline: Pipeline
    learner: EffectLearner
    calibrators: tuple[ArmCalibrator, ArmCalibrator] | None  # None: continuous outcome
    benefit_calibration: BenefitCalibration
    prognosis: Prognosis
    prognosis_calibrator: ArmCalibrator | None
    allocation: float  # share randomized to treatment
    ensemble: list[EffectLearner]
    rule: DecisionRule
    training_range: TrainingRange
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return self.pipeline.outcome.kind == "binary"

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        return feature_frame(frame, self.pipeline)

    def _calibrate(self, mu0: np.ndarray, mu1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.calibrators is None:
            return mu0, mu1
        return self.calibrators[0].transform(mu0), self.calibrators[1].transform(mu1)

    def _raw_benefit(self, learner: EffectLearner, X: pd.DataFrame) -> np.ndarray:
        """Difference of the per-arm calibrated outcomes, before calibration for benefit."""
        p0, p1 = self._calibrate(*learner.predict_arms(X))
        return p1 - p0

    def arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Expected outcome under control and under treatment: the calibrated prognosis
        m(x) split by the calibrated benefit (see `prognosis`)."""
        m = self.prognosis.predict(X)
        if self.prognosis_calibrator is not None:
            m = self.prognosis_calibrator.transform(m)
        benefit = self.benefit_calibration.apply(self._raw_benefit(self.learner, X))
        return split_arms(m, benefit, self.allocation, self.binary)

    def benefit_interval(
        self, X: pd.DataFrame, benefit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """benefit +- z * sd, where sd combines the bootstrap variance of the learner's
        prediction (scaled by the benefit slope) and the uncertainty of the benefit
        calibration's average effect and slope."""
        bc = self.benefit_calibration
        draws = np.column_stack([self._raw_benefit(m, X) for m in self.ensemble])
        var = bc.slope**2 * draws.var(axis=1, ddof=1)
        var += bc.coefficient_var(self._raw_benefit(self.learner, X))
        z = float(norm.ppf(0.5 + self.rule.level / 2))
        half = z * np.sqrt(var)
        return benefit - half, benefit + half

    def benefit_drivers(self, X: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, base, phi) with base + phi.sum(1) == benefit exactly, on the outcome's
        scale (probability for binary outcomes). The learner's contributions are carried
        through each arm's calibration map by the rescale rule, scaled by the benefit
        slope, and rescaled once more where a probability had to be clipped to [0, 1]."""
        raw = self.learner.contributions(X)
        if self.calibrators is not None:
            mu0 = raw.base0 + raw.phi0.sum(axis=1)
            mu1 = raw.base1 + raw.phi1.sum(axis=1)
            c0, c1 = self.calibrators
            raw = raw.map_arms(
                c0.transform(mu0),
                c0.transform(raw.base0),
                c1.transform(mu1),
                c1.transform(raw.base1),
            )
        bc = self.benefit_calibration
        base = bc.ate + bc.slope * (raw.benefit_base - bc.center)
        phi = bc.slope * raw.benefit_phi
        p0, p1 = self.arms(X)
        return raw.names, base, rescale(phi, p1 - p0 - base)

    def predict(self, frame: pd.DataFrame, explain: int = 3) -> pd.DataFrame:
        X = self.features(frame)
        p0, p1 = self.arms(X)
        benefit = p1 - p0
        lower, upper = self.benefit_interval(X, benefit)
        pref_col = self.pipeline.cohort.preference
        pref = None
        if pref_col and pref_col in frame.columns:
            pref = (
                frame[pref_col]
                .astype(object)
                .where(frame[pref_col].notna(), NO_PREFERENCE)
                .to_numpy()
            )
        rec, why = self.rule.decide(benefit, lower, upper, pref)
        result = pd.DataFrame(
            {
                "outcome_control": p0,
                "outcome_treatment": p1,
                "benefit": benefit,
                "benefit_lower": lower,
                "benefit_upper": upper,
                "recommendation": rec,
                "rationale": why,
            }
        )
        result["drivers"] = [json.dumps(d) for d in self.drivers(X, explain)]
        result["warnings"] = [json.dumps(w) for w in self.training_range.warnings(X)]
        id_col = self.pipeline.cohort.id
        if id_col in frame.columns:
            result.insert(0, id_col, frame[id_col].astype(str).to_numpy())
        return result

    def drivers(self, X: pd.DataFrame, k: int) -> list[list[dict[str, Any]]]:
        if k <= 0:
            return [[] for _ in range(len(X))]
        names, _, phi = self.benefit_drivers(X)
        order = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, :k]
        t, ctrl = self.rule.treatment, self.rule.control
        out = []
        for i, top in enumerate(order):
            row = []
            for j in top:
                name = names[j]
                value = None if name == ARM_DRIVER else _display(X[name].iloc[i])
                contrib = float(phi[i, j])
                if contrib == 0:
                    continue
                row.append(
                    {
                        "feature": name,
                        "label": self._label(name),
                        "value": value,
                        "contribution": contrib,
                        "direction": f"favours {t}" if contrib > 0 else f"favours {ctrl}",
                    }
                )
            out.append(row)
        return out

    def _label(self, name: str) -> str:
        spec = self.pipeline.features.get(name)
        if spec is None:
            return name
        label = spec.label or name
        if isinstance(spec, NumericFeature) and spec.unit:
            label += f" ({spec.unit})"
        return label

    def feature_schema(self) -> dict[str, dict[str, Any]]:
        """The request contract: types, ranges, levels and labels of every feature."""
        schema: dict[str, dict[str, Any]] = {}
        for name, spec in self.pipeline.features.items():
            if isinstance(spec, CategoricalFeature):
                schema[name] = {
                    "type": "categorical",
                    "levels": spec.levels,
                    "label": spec.label or name,
                }
            else:
                schema[name] = {
                    "type": "numeric",
                    "min": spec.min,
                    "max": spec.max,
                    "label": spec.label or name,
                    "unit": spec.unit,
                    "observed": self.training_range.numeric.get(name),
                }
        return schema


def _display(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
