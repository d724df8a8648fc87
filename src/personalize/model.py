"""The trained model as the service and the scorer use it: one predict path for both.

Per patient: calibrated outcome under each arm, benefit (treatment minus control) with its
interval, the recommendation with its rationale, the top drivers and warnings.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from personalize import fast_trees
from personalize.config import CategoricalFeature, NumericFeature, Pipeline
from personalize.data.cells import NO_PREFERENCE
from personalize.data.columns import Column, columns, shared
from personalize.data.columns import reading as columns_reading
from personalize.data.validate import feature_frame, features_of, typed_columns
from personalize.learners import ARM_DRIVER, EffectLearner
from personalize.learners.base import rescale
from personalize.stats import coverage
from personalize.stats.calibration import ArmCalibrator, BenefitCalibration
from personalize.stats.checks import ModelChecks
from personalize.stats.decision import DecisionRule
from personalize.stats.prognosis import Prognosis, split_arms

if TYPE_CHECKING:
    import shap

ANSWER_COLUMNS = [
    "outcome_control",
    "outcome_treatment",
    "benefit",
    "benefit_lower",
    "benefit_upper",
    "recommendation",
    "rationale",
    "better_bet",
    "better_bet_probability",
]
OUTPUT_COLUMNS = [*ANSWER_COLUMNS, "drivers", "warnings"]


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
        cols = columns(X)
        for name, (lo, hi) in self.numeric.items():
            values = cols[name].values
            for i in np.flatnonzero((values < lo) | (values > hi)):
                out[i].append(
                    f"{name}={values[i]:g} is outside the training data's range "
                    f"[{lo:g}, {hi:g}]; the estimate is an extrapolation"
                )
        for name, seen in self.levels.items():
            col = cols[name]  # a categorical over the declared levels (`feature_frame`)
            levels = col.levels or []
            unseen = np.array([level not in seen for level in levels] + [False])
            codes = col.codes
            for i in np.flatnonzero(unseen[codes]):
                out[i].append(f"{name}={levels[codes[i]]} was not seen in the training data")
        return out


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model says about itself: the chosen learner, the cohort it was
    trained on (content hash, size, synthetic or real) and its model card's data."""

    learner: str
    cohort_sha256: str
    n_patients: int
    synthetic: bool
    card: dict[str, Any] | None = None


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
    info: ModelInfo
    # the out-of-fold model checks (`stats.checks`); None for a model trained before them
    checks: ModelChecks | None = None

    @property
    def checks_passed(self) -> bool:
        """No check fired (a model trained before the checks counts as passed)."""
        return self.checks is None or self.checks.passed

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
        """Difference of the per-arm calibrated outcomes, before calibration for benefit
        (computed once per learner within `reading(X)`: the arms and the interval both
        read the learner's)."""

        def compute() -> np.ndarray:
            p0, p1 = self._calibrate(*learner.predict_arms(X))
            return p1 - p0

        return shared(X, ("raw-benefit", id(learner)), compute)

    def _member_benefits(self, X: pd.DataFrame) -> np.ndarray:
        """`_raw_benefit` of every bootstrap member (rows x members), calibrated in one
        call per arm and row range (the maps are elementwise: the same numbers as member by
        member), the ranges on the scorer's threads."""
        mu0, mu1 = type(self.learner).arms_of(self.ensemble, X)
        out = np.empty(np.shape(mu0))

        def rows(start: int, stop: int) -> None:
            p0, p1 = self._calibrate(mu0[start:stop], mu1[start:stop])
            np.subtract(p1, p0, out=out[start:stop])

        fast_trees.in_parts(len(out), rows)
        return out

    @property
    def individual_interval(self) -> bool:
        """True when the interval is a posterior interval for the patient's own benefit;
        False when it is a bootstrap interval for the expected benefit of patients like
        this one (docs/training.md, "Intervals")."""
        return self.learner.posterior

    @property
    def interval_covers(self) -> str:
        return coverage.covers(self.learner.name, self.learner.kind, self.individual_interval)

    def arm_draws(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """Posterior draws of the expected outcome under control and under treatment (rows x
        draws), for a learner that has them; else None."""
        if not self.learner.posterior:
            return None
        return self._calibrate(*self.learner.arm_draws(X))

    def benefit_draws(self, X: pd.DataFrame) -> np.ndarray | None:
        """Posterior draws of each patient's benefit (rows x draws): the per-arm draws
        differenced draw by draw; None for a learner without a posterior."""
        draws = self.arm_draws(X)
        return None if draws is None else draws[1] - draws[0]

    def arms(
        self, X: pd.DataFrame, draws: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected outcome under control and under treatment.

        A posterior learner models each arm itself: its answers are the posterior means of
        its per-arm outcomes (`draws`: `arm_draws(X)` when the caller has them). For the
        others, the calibrated prognosis m(x) is split by the calibrated benefit (see
        `prognosis`): with a few dozen responders per arm, their per-arm models
        discriminate poorly."""
        if self.learner.posterior:
            d0, d1 = self._posterior(X, draws)
            return d0.mean(axis=1), d1.mean(axis=1)
        m = self.prognosis.predict(X)
        if self.prognosis_calibrator is not None:
            m = self.prognosis_calibrator.transform(m)
        benefit = self.benefit_calibration.apply(self._raw_benefit(self.learner, X))
        return split_arms(m, benefit, self.allocation, self.binary)

    def _posterior(
        self, X: pd.DataFrame, draws: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        draws = self.arm_draws(X) if draws is None else draws
        assert draws is not None, "a posterior learner has draws"
        return draws

    def benefit_interval(
        self,
        X: pd.DataFrame,
        benefit: np.ndarray,
        draws: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The benefit's interval at the rule's level (`benefit_uncertainty`)."""
        lower, upper, _ = self.benefit_uncertainty(X, benefit, draws)
        return lower, upper

    def benefit_uncertainty(
        self,
        X: pd.DataFrame,
        benefit: np.ndarray,
        draws: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The benefit's interval at the rule's level, and the probability that the benefit
        is positive (treatment better), from the same uncertainty: the better bet's.

        A posterior learner's is the equal-tailed posterior interval of the patient's
        benefit (from `draws`, or computed). Otherwise it is benefit +- z * sd, where sd
        combines the bootstrap variance of the learner's prediction (scaled by the benefit
        slope) and the uncertainty of the benefit calibration's average effect and slope.

        Every bootstrap member's trees are evaluated together, in one compiled pass per
        input (`fast_trees.batch`; raw scores bit-identical to LightGBM's), so the interval
        no longer costs one LightGBM call per member and arm. With a benefit slope of 0
        (no heterogeneity: the calibrated benefit ignores the learner) the members' spread
        does not enter and is not computed.

        The probability is the share of posterior draws with a positive benefit; for the
        others Phi(benefit / sd), the normal the interval is read from."""
        if self.learner.posterior:
            d0, d1 = self._posterior(X, draws)
            tail = (1 - self.rule.level) / 2
            lower, upper, positive = (np.empty(len(d0)) for _ in range(3))

            def rows(start: int, stop: int) -> None:  # rows apart: the same numbers
                diff = d1[start:stop] - d0[start:stop]
                lower[start:stop], upper[start:stop] = np.quantile(diff, [tail, 1 - tail], axis=1)
                positive[start:stop] = (diff > 0).mean(axis=1) + 0.5 * (diff == 0).mean(axis=1)

            fast_trees.in_parts(len(d0), rows)
            return np.minimum(lower, benefit), np.maximum(upper, benefit), positive
        bc = self.benefit_calibration
        with self._batch():
            if bc.slope == 0:  # the members' spread is multiplied by 0: skip computing it
                var = np.zeros(len(X))
            else:
                var = bc.slope**2 * self._member_benefits(X).var(axis=1, ddof=1)
            var += bc.coefficient_var(self._raw_benefit(self.learner, X))
        z = float(ndtri(0.5 + self.rule.level / 2))  # the normal quantile, as norm.ppf
        sd = np.sqrt(var)
        half = z * sd
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = np.where(sd > 0, ndtr(benefit / sd), 0.5 + 0.5 * np.sign(benefit))
        return benefit - half, benefit + half, positive

    @cached_property
    def _boosters(self) -> list[Any]:
        """The learner's and every bootstrap member's boosters: one predict evaluates them
        together."""
        return [b for learner in (self.learner, *self.ensemble) for b in learner.boosters()]

    def warm(self) -> None:
        """Compile the trees now (e.g. when a service loads the model) rather than on the
        first request, and run one patient with every value missing through the whole
        predict path (a learner's own compiled code loads on its first call)."""
        fast_trees.warm_up(self.learner.boosters(), self._boosters)
        nobody = pd.DataFrame({name: [None] for name in self.pipeline.features})
        self.predict_arrays(nobody, explain=1)

    def _batch(self) -> contextlib.AbstractContextManager[None]:
        """Evaluate the learner's and every bootstrap member's boosters together."""
        return fast_trees.batch(self._boosters)

    def benefit_drivers(
        self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, base, phi) with base + phi.sum(1) == benefit exactly, on the outcome's
        scale (probability for binary outcomes). The learner's contributions are carried
        through each arm's calibration map by the rescale rule, scaled by the benefit
        slope, and rescaled once more where a probability had to be clipped to [0, 1].
        `arms`: `self.arms(X)` when the caller has it already."""
        raw = self.learner.contributions(X, **({"arms": arms} if self.learner.posterior else {}))
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
        p0, p1 = self.arms(X) if arms is None else arms
        return raw.names, base, rescale(phi, p1 - p0 - base)

    def explain(self, frame: pd.DataFrame) -> shap.Explanation:
        """The benefit's drivers for every row of `frame` as a ``shap.Explanation``, for
        SHAP's plots and tools: the same numbers as the drivers `predict` reports
        (`benefit_drivers`: the learner's TreeSHAP carried to the benefit's scale), every
        feature, plus ARM_DRIVER where the learner has one, with
        ``values.sum(1) + base_values == benefit``. ``data`` holds numbers (a
        categorical's code over the pipeline's levels, NaN where missing or for
        ARM_DRIVER); ``display_data`` the values as people read them (level names)."""
        import shap  # imported here: a second of start-up the scoring paths do not need

        cols = typed_columns(frame, self.pipeline)
        X = features_of(cols, self.pipeline)
        with columns_reading(X, cols), self._batch():
            names, base, phi = self.benefit_drivers(X)
        n = len(X)
        data = np.full((n, len(names)), np.nan)
        display = np.full((n, len(names)), None, dtype=object)
        for j, name in enumerate(names):
            if name in cols:
                data[:, j] = cols[name].values
                display[:, j] = _display_column(cols[name])
        return shap.Explanation(
            values=phi,
            base_values=base,
            data=data,
            display_data=display,
            feature_names=list(names),
        )

    def predict(self, frame: pd.DataFrame, explain: int = 3) -> pd.DataFrame:
        return self.render(self.predict_arrays(frame, explain))

    def predict_arrays(self, frame: pd.DataFrame, explain: int = 3) -> Predictions:
        """predict's answer as arrays, before rendering: what the batch scorer writes as
        columns. `predict` is exactly `render(predict_arrays(...))`."""
        pref_col = self.pipeline.cohort.preference
        pref = None
        if pref_col and pref_col in frame.columns:
            pref = (
                frame[pref_col]
                .astype(object)
                .where(frame[pref_col].notna(), NO_PREFERENCE)
                .to_numpy()
            )
        id_col = self.pipeline.cohort.id
        ids = frame[id_col].astype(str).to_numpy() if id_col in frame.columns else None
        return self.predict_columns(typed_columns(frame, self.pipeline), explain, pref, ids)

    def predict_columns(
        self,
        cols: dict[str, Column],
        explain: int = 3,
        preference: np.ndarray | None = None,
        ids: np.ndarray | None = None,
    ) -> Predictions:
        """`predict_arrays` from features already typed (`validate.typed_columns`), e.g.
        the service's patients, validated against the model's contract: no frame to parse.
        `preference`: each patient's stated preferred arm, or "none"."""
        X = features_of(cols, self.pipeline)
        # columns read from `cols`, each booster evaluated once per input: shared by all
        with columns_reading(X, cols), self._batch():
            draws = self.arm_draws(X)
            p0, p1 = self.arms(X, draws)
            benefit = p1 - p0
            lower, upper, p_treatment = self.benefit_uncertainty(X, benefit, draws)
            names, index, contribution, base, rest = self._top_drivers(X, explain, (p0, p1))
            warnings = self.training_range.warnings(X)
        decisions = self.rule.decide(benefit, lower, upper, preference, p_treatment)
        return Predictions(
            X=X,
            columns=cols,
            ids=ids,
            outcome_control=p0,
            outcome_treatment=p1,
            benefit=benefit,
            benefit_lower=lower,
            benefit_upper=upper,
            recommendation=decisions.recommendation,
            rationale=decisions.rationale,
            better_bet=decisions.better_bet,
            better_bet_probability=decisions.better_bet_probability,
            driver_names=names,
            driver_index=index,
            driver_contribution=contribution,
            warnings=warnings,
            driver_base=base,
            driver_rest=rest,
        )

    def render(self, pred: Predictions) -> pd.DataFrame:
        """The one output frame of the service and the pyfunc (drivers and warnings as
        JSON text)."""
        result = pd.DataFrame(pred.answer())
        result["drivers"] = [json.dumps(d) for d in self.driver_dicts(pred)]
        result["warnings"] = [json.dumps(w) for w in pred.warnings]
        if pred.ids is not None:
            result.insert(0, self.pipeline.cohort.id, pred.ids)
        return result

    def driver_dicts(self, pred: Predictions) -> list[list[dict[str, Any]]]:
        """Each patient's top drivers as dicts (feature, label, value, contribution,
        direction): what `render` writes as JSON and the service returns."""
        return self._driver_dicts(
            pred.columns, pred.driver_names, pred.driver_index, pred.driver_contribution
        )

    def _top_drivers(
        self, X: pd.DataFrame, k: int, arms: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(names, index n x k, contribution n x k, base, rest): each patient's k largest
        drivers by |contribution|, index -1 (contribution 0) where a driver contributes
        nothing; the base value and the summed contributions of the other drivers, so that
        base + contribution.sum(1) + rest == benefit (None when no driver is asked for)."""
        if k <= 0:
            empty = np.zeros((len(X), 0))
            return [], np.zeros((len(X), 0), dtype=np.int64), empty, None, None
        names, base, phi = self.benefit_drivers(X, arms)
        order = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, :k]
        contribution = np.take_along_axis(phi, order, axis=1)
        index = np.where(contribution == 0, -1, order)
        # drivers that contribute nothing are left out; keep the others in order
        keep = np.argsort(index < 0, axis=1, kind="stable")
        index = np.take_along_axis(index, keep, axis=1)
        contribution = np.where(index < 0, 0.0, np.take_along_axis(contribution, keep, axis=1))
        rest = phi.sum(axis=1) - contribution.sum(axis=1)
        return names, index, contribution, np.broadcast_to(base, len(X)).astype(float), rest

    def _driver_dicts(
        self,
        cols: dict[str, Column],
        names: list[str],
        index: np.ndarray,
        contribution: np.ndarray,
    ) -> list[list[dict[str, Any]]]:
        t, ctrl = self.rule.treatment, self.rule.control
        labels = [self._label(name) for name in names]
        values: dict[int, list[Any]] = {}

        def value(j: int, i: int) -> Any:
            if names[j] == ARM_DRIVER:
                return None
            if j not in values:
                values[j] = _display_column(cols[names[j]])
            return values[j][i]

        out = []
        for i, (top, contrib) in enumerate(zip(index.tolist(), contribution.tolist(), strict=True)):
            row = []
            for j, c in zip(top, contrib, strict=True):
                if j < 0:
                    continue
                row.append(
                    {
                        "feature": names[j],
                        "label": labels[j],
                        "value": value(j, i),
                        "contribution": c,
                        "direction": f"favours {t}" if c > 0 else f"favours {ctrl}",
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


def _display_column(col: Column) -> list[Any]:
    """Every value of a feature column as people read it (floats, level names, None)."""
    if col.levels is not None:
        return [None if c < 0 else col.levels[c] for c in col.codes.tolist()]
    return [None if v != v else v for v in col.values.tolist()]


@dataclass(frozen=True)
class Predictions:
    """Per patient, as arrays: what `PersonalizeModel.predict` renders."""

    X: pd.DataFrame
    columns: dict[str, Column]  # X's columns as arrays (`validate.typed_columns`)
    ids: np.ndarray | None
    outcome_control: np.ndarray
    outcome_treatment: np.ndarray
    benefit: np.ndarray
    benefit_lower: np.ndarray
    benefit_upper: np.ndarray
    recommendation: np.ndarray
    rationale: np.ndarray
    better_bet: np.ndarray  # object: an arm label, None where the decision rule names none
    # the probability that the better bet's arm is better for the patient; NaN: no bet
    better_bet_probability: np.ndarray
    driver_names: list[str]
    driver_index: np.ndarray  # n x k, into driver_names; -1: no driver
    driver_contribution: np.ndarray  # n x k, on the outcome scale; + favours treatment
    warnings: list[list[str]]
    # base value and the other drivers' sum: base + contributions + rest == benefit
    driver_base: np.ndarray | None = None
    driver_rest: np.ndarray | None = None

    def answer(self) -> dict[str, np.ndarray]:
        """The per-patient answer columns every output starts with, in their order."""
        return {name: getattr(self, name) for name in ANSWER_COLUMNS}
