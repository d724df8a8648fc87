"""The HTTP contract: request and response models, and a model's answer as a response.

The patient object is not fixed in code: `personalize.service.contract` builds it from the
loaded model's feature schema, and `personalize.service.openapi` puts it into
``/openapi.json``, so a model trained on another cohort brings its own contract.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personalize.service.problems import LOC_PART_MAX, MAX_PROBLEMS, clip

if TYPE_CHECKING:
    from personalize.model import PersonalizeModel

SYNTHETIC_NOTICE = (
    "SYNTHETIC DATA: this model was trained on a simulated cohort, not on real patients; "
    "not for clinical use"
)

# ---------------------------------------------------------------------------- responses


class Problem(BaseModel):
    detail: str = Field(description="what went wrong, in words")


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="where: body, then the path to the field")
    field: str = Field(description="the field as a dotted path, e.g. patient.age")
    msg: str = Field(description="why the value was refused")
    type: str = Field(description="machine-readable error type")


class ValidationProblem(BaseModel):
    detail: list[FieldProblem]


class ArmOutcome(BaseModel):
    role: Literal["treatment", "control"]
    probability: float | None = Field(
        description="calibrated probability of response under this arm (binary outcomes; "
        "null for continuous outcomes)"
    )
    expected_improvement: float | None = Field(
        description="expected improvement under this arm, in the outcome's points "
        "(continuous outcomes; null for binary outcomes)"
    )


class Benefit(BaseModel):
    estimate: float = Field(description="treatment minus control, on the outcome's scale")
    lower: float = Field(description="lower end of the interval")
    upper: float = Field(description="upper end of the interval")
    level: float = Field(
        description="nominal coverage of the interval, e.g. 0.9. What the interval covers, "
        "and how often and where it covered in simulated trials (recovery study; also in "
        "the model card), is in `covers`: with a posterior learner (the default), the "
        "expected benefit of patients with this patient's measured characteristics; with a "
        "bootstrap learner, the average benefit of patients like this one"
    )
    covers: str = Field(description="what the interval is an interval for, in words")
    definition: str = Field(description="e.g. 'MBT minus CBT (positive favours MBT)'")
    scale: Literal["probability", "points"]


class Driver(BaseModel):
    feature: str
    label: str = Field(description="the feature in clinical words, with its unit")
    value: float | str | None = Field(description="this patient's value (null: not given)")
    contribution: float = Field(
        description="this feature's share of the benefit, on the benefit's scale"
    )
    direction: str = Field(description="in words, e.g. 'favours MBT'")


class BenefitParts(BaseModel):
    """The benefit estimate split into parts that add up to it (SHAP's decomposition):
    ``base_value + sum(drivers[].contribution) + other_features == benefit.estimate``."""

    base_value: float = Field(
        description="the average benefit (SHAP base value): the benefit the model expects "
        "before any of this patient's values is taken into account, on the benefit's scale"
    )
    other_features: float = Field(
        description="the summed contributions of every feature not listed in `drivers`, on "
        "the benefit's scale (positive favours the treatment)"
    )


class OutcomeInfo(BaseModel):
    kind: Literal["binary", "continuous"]
    definition: str


class TrainedOn(BaseModel):
    pipeline: str
    description: str | None
    cohort_sha256: str | None
    n_patients: int | None
    synthetic: bool


class ModelBlock(BaseModel):
    name: str
    version: str
    run_id: str | None
    learner: str | None
    source: Literal["registry", "cache"] = Field(
        description="registry: loaded from the model registry; cache: the registry was "
        "unreachable and the last locally cached copy is served"
    )
    synthetic: bool = Field(description="true when the model was trained on synthetic data")
    synthetic_notice: str | None
    checks_passed: bool = Field(
        default=True,
        description="false when one of the model's out-of-fold checks fired (it was promoted "
        "under the pipeline's `checks: warn`)",
    )
    checks_warning: str | None = Field(
        default=None,
        description="which checks fired and why, in one line; null when every check passed",
    )
    trained_on: TrainedOn


class MissingFeature(BaseModel):
    feature: str
    label: str


class Recommendation(BaseModel):
    audit_id: str = Field(description="id of this recommendation's audit record")
    recommendation: str = Field(description="the treatment label, the control label or 'either'")
    recommendation_role: Literal["treatment", "control", "either"]
    rationale: str = Field(description="why, in plain language")
    better_bet: str | None = Field(
        default=None,
        description="for a patient left at 'either' without a stated preference: the arm the "
        "model favours for this patient, offered only when the model passed its checks and "
        "that arm is better with at least the pipeline's `decision.bet_level` probability "
        "(not a reliable difference, not a recommendation); null otherwise, and never "
        "against a stated preference",
    )
    better_bet_probability: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="the probability (posterior, or from the bootstrap learner's interval) "
        "that the better bet's arm gives this patient the better outcome; null when no bet "
        "is offered",
    )
    arms: dict[str, ArmOutcome] = Field(description="per arm, keyed by the arm's label")
    benefit: Benefit
    outcome: OutcomeInfo
    drivers: list[Driver] = Field(
        description="top drivers of the benefit, largest first. A driver whose value is null "
        "is a feature that was not given: its contribution is how the model handles a "
        "missing value, not a value of the patient"
    )
    benefit_parts: BenefitParts | None = Field(
        default=None,
        description="base value and other features: with `drivers`, the parts that add up to "
        "`benefit.estimate` (null when the service is configured to explain nothing)",
    )
    warnings: list[str] = Field(description="values outside the training data's range")
    missing_features: list[MissingFeature] = Field(
        description="fields not given; the model handles them as missing, not as a default"
    )
    model: ModelBlock


class BatchResponse(BaseModel):
    count: int
    model: ModelBlock
    results: list[Recommendation] = Field(description="one per patient, in request order")


class ModelInfo(BaseModel):
    name: str
    version: str
    run_id: str | None
    source: Literal["registry", "cache"]
    model_uri: str
    loaded_at: datetime
    synthetic: bool
    card: dict[str, Any] = Field(description="the model card (TRIPOD+AI, PATH)")


class FieldInfo(BaseModel):
    name: str
    type: Literal["numeric", "categorical"]
    label: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    levels: list[str] | None = None
    observed_min: float | None = Field(default=None, description="training data's minimum")
    observed_max: float | None = Field(default=None, description="training data's maximum")
    preference: bool = Field(default=False, description="the patient's stated treatment preference")


class SchemaInfo(BaseModel):
    model: ModelBlock
    treatment: str
    control: str
    outcome: OutcomeInfo
    fields: list[FieldInfo]


class Readiness(BaseModel):
    ready: bool
    status: str
    model: ModelBlock | None


class ReloadResult(BaseModel):
    changed: bool
    previous: ModelBlock | None
    current: ModelBlock


# ---------------------------------------------------------------------------- requests

PATIENT_DOC = (
    "The patient's baseline covariates. The fields, types, ranges and levels come from the "
    "loaded model (see components.schemas.Patient); every field is optional, unknown "
    "fields are refused."
)
PATIENT_REF_MAX = 256  # characters of a patient reference (also CDS Hooks' context.patientId)
PatientRef = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=PATIENT_REF_MAX,
        description="your reference for the patient (e.g. an MRN); only its keyed hash "
        "is stored in the audit log",
    ),
]
BatchRef = Annotated[str | None, Field(min_length=1, max_length=PATIENT_REF_MAX)]


class StrictRequest(BaseModel):
    """A request body without unknown fields. Many of them are refused as one problem:
    pydantic would build an error for each (about 100,000 in a 2 MB body)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_many_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + MAX_PROBLEMS:
            unknown = [name for name in data if name not in cls.model_fields]
            first = ", ".join(clip(str(name), LOC_PART_MAX) for name in unknown[:3])
            raise ValueError(f"{len(unknown)} unknown fields (the first: {first})")
        return data


class RecommendationRequest(StrictRequest):
    patient: dict[str, Any] = Field(description=PATIENT_DOC)
    patient_ref: PatientRef = None


class BatchRequest(StrictRequest):
    patients: list[dict[str, Any]] = Field(min_length=1, description=PATIENT_DOC)
    patient_refs: list[BatchRef] | None = Field(
        default=None,
        description="optional: one reference per patient, same order (hashed in the audit)",
    )


# ---------------------------------------------------------------------------- conversion


def finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("the model produced a non-finite estimate")
    return number


def recommendation_from_row(
    row: dict[str, Any],
    *,
    model: PersonalizeModel,
    block: ModelBlock,
    missing: list[MissingFeature],
    audit_id: str,
) -> Recommendation:
    """One patient's row of `recommend.score` as the response: a conversion only, no new
    numbers (the scorer and the service give the same answer)."""
    rule = model.rule
    binary = model.binary
    t, c = rule.treatment, rule.control

    def arm(role: Literal["treatment", "control"], value: float) -> ArmOutcome:
        return ArmOutcome(
            role=role,
            probability=value if binary else None,
            expected_improvement=None if binary else value,
        )

    rec = str(row["recommendation"])
    role: Literal["treatment", "control", "either"] = (
        "treatment" if rec == t else "control" if rec == c else "either"
    )
    return Recommendation(
        audit_id=audit_id,
        recommendation=rec,
        recommendation_role=role,
        rationale=str(row["rationale"]),
        better_bet=row.get("better_bet"),
        better_bet_probability=row.get("better_bet_probability"),
        arms={
            t: arm("treatment", finite(row["outcome_treatment"])),
            c: arm("control", finite(row["outcome_control"])),
        },
        benefit=Benefit(
            estimate=finite(row["benefit"]),
            lower=finite(row["benefit_lower"]),
            upper=finite(row["benefit_upper"]),
            level=rule.level,
            covers=model.interval_covers,
            definition=f"{t} minus {c} (positive favours {t})",
            scale="probability" if binary else "points",
        ),
        outcome=outcome_info(model),
        drivers=[Driver.model_validate(d) for d in row["drivers"]],
        benefit_parts=None
        if row.get("base_value") is None
        else BenefitParts(
            base_value=finite(row["base_value"]), other_features=finite(row["other_features"])
        ),
        warnings=[str(w) for w in row["warnings"]],
        missing_features=missing,
        model=block,
    )


def outcome_info(model: PersonalizeModel) -> OutcomeInfo:
    outcome = model.pipeline.outcome
    return OutcomeInfo(kind=outcome.kind, definition=outcome.describe())
