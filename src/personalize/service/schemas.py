"""The HTTP contract: request and response models.

The patient object is not fixed in code: `Contract.of(model)` builds it from the loaded
model's feature schema with `pydantic.create_model` (numeric features as finite numbers
within their declared range, categorical features as an enum of their levels, every
field optional, unknown fields rejected), and `patch_openapi` puts that model into
``/openapi.json``, so a model trained on another cohort brings its own contract.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from personalize.data.cells import NO_PREFERENCE, categorical_dtype
from personalize.data.columns import Column

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
            first = ", ".join(_clip(str(name), LOC_PART_MAX) for name in unknown[:3])
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


# ---------------------------------------------------------------------------- the contract


class PatientInvalid(Exception):
    """A patient object that does not satisfy the model's contract: its problems, and how
    many more were counted but not described (see `bounded`)."""

    def __init__(self, problems: list[dict[str, Any]], omitted: int = 0) -> None:
        super().__init__(f"{len(problems) + omitted} problem(s)")
        self.problems = problems
        self.omitted = omitted


@dataclass(frozen=True)
class Contract:
    """The request contract of one loaded model."""

    patient_model: type[BaseModel]
    fields: list[FieldInfo]
    feature_names: list[str]
    preference: str | None  # name of the preference field, when it is not a feature

    @classmethod
    def of(cls, model: PersonalizeModel) -> Contract:
        schema = model.feature_schema()
        definitions: dict[str, Any] = {}
        infos: list[FieldInfo] = []
        pref_col = model.pipeline.cohort.preference
        for i, (name, spec) in enumerate(schema.items()):
            label = str(spec.get("label") or name)
            if spec["type"] == "categorical":
                levels = [str(v) for v in spec["levels"]]
                info = FieldInfo(
                    name=name,
                    type="categorical",
                    label=label,
                    levels=levels,
                    preference=name == pref_col,
                )
                ann: Any = Literal[tuple(levels)] | None
                desc = f"{label}: one of {', '.join(levels)}"
                field = Field(default=None, alias=name, title=label, description=desc)
            else:
                observed = spec.get("observed")
                info = FieldInfo(
                    name=name,
                    type="numeric",
                    label=label,
                    unit=spec.get("unit"),
                    min=spec.get("min"),
                    max=spec.get("max"),
                    observed_min=observed[0] if observed else None,
                    observed_max=observed[1] if observed else None,
                )
                ann = float | None
                desc = _numeric_doc(info)
                field = Field(
                    default=None,
                    alias=name,
                    title=label,
                    description=desc,
                    ge=info.min,
                    le=info.max,
                    strict=True,
                    allow_inf_nan=False,
                )
            definitions[f"f{i}"] = (ann, field)
            infos.append(info)
        preference = None
        if pref_col and pref_col not in schema:
            arms = model.pipeline.cohort.arm
            levels = [arms.treatment, arms.control, NO_PREFERENCE]
            preference = pref_col
            definitions[f"f{len(infos)}"] = (
                Literal[tuple(levels)] | None,
                Field(
                    default=None,
                    alias=pref_col,
                    title="Preferred treatment",
                    description="the patient's stated preference: "
                    f"{arms.treatment}, {arms.control} or {NO_PREFERENCE}",
                ),
            )
            infos.append(
                FieldInfo(
                    name=pref_col,
                    type="categorical",
                    label="Preferred treatment",
                    levels=levels,
                    preference=True,
                )
            )
        patient = create_model(
            "Patient",
            __config__=ConfigDict(
                extra="forbid",
                populate_by_name=False,
                protected_namespaces=(),
                title="Patient",
                json_schema_extra={"description": "Baseline covariates of one patient."},
            ),
            **definitions,
        )
        return cls(patient, infos, list(schema), preference)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def validate(
        self, raw: Any, loc: Sequence[str | int], *, suggest: bool = True
    ) -> dict[str, Any]:
        """The patient as {field: value or None}, or PatientInvalid naming its problems
        (of more unknown fields than a 422 lists, the first ones; the others counted).
        `suggest`: an unknown field's message names the nearest of the model's fields."""
        unknown: list[Any] = []
        if isinstance(raw, dict) and len(raw) > len(self.names) + MAX_PROBLEMS:
            # more unknown fields than a 422 lists: count them here rather than have pydantic
            # build an error for each (a 2 MB body holds about 100,000)
            known = self._names
            unknown = [name for name in raw if name not in known]
            raw = {name: value for name, value in raw.items() if name in known}
        errors: list[Any] = []
        try:
            obj = self.patient_model.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
        errors += [
            {"loc": (name,), "msg": "", "type": "extra_forbidden"}
            for name in unknown[:MAX_PROBLEMS]
        ]
        if errors:
            found = problems(errors, loc, self.names if suggest else None)
            raise PatientInvalid(found, omitted=max(0, len(unknown) - MAX_PROBLEMS))
        return obj.model_dump(by_alias=True)

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.names)

    def validate_batch(self, body: BatchRequest) -> list[dict[str, Any]]:
        """Every patient of a batch, or PatientInvalid naming every problem of every patient
        (and a `patient_refs` list that does not match the patients one to one)."""
        refs = body.patient_refs
        found: list[dict[str, Any]] = []
        if refs is not None and len(refs) != len(body.patients):
            found.append(
                {
                    "loc": ["body", "patient_refs"],
                    "field": "patient_refs",
                    "msg": f"{len(refs)} references for {len(body.patients)} patients; give one "
                    "per patient (null where there is none) or leave it out",
                    "type": "length_mismatch",
                }
            )
        patients = []
        omitted = 0
        for i, raw in enumerate(body.patients):
            try:
                # past the problems a 422 lists, no suggestions (they would not be shown)
                suggest = len(found) < MAX_PROBLEMS
                patients.append(self.validate(raw, ("body", "patients", i), suggest=suggest))
            except PatientInvalid as exc:
                if len(found) < MAX_PROBLEMS:
                    found += exc.problems
                else:  # counted, not described
                    omitted += len(exc.problems)
                omitted += exc.omitted
        if found:
            raise PatientInvalid(found, omitted)
        return patients

    @functools.cached_property
    def _levels(self) -> dict[str, tuple[pd.CategoricalDtype, dict[str, int]]]:
        """Per categorical field: its dtype (one instance, so frames share it) and codes."""
        return {
            f.name: (categorical_dtype(tuple(f.levels)), {v: i for i, v in enumerate(f.levels)})
            for f in self.fields
            if f.type == "categorical" and f.levels is not None
        }

    def columns(self, patients: Sequence[dict[str, Any]]) -> dict[str, Column]:
        """The model's typed feature columns (what `validate.typed_columns` makes of
        `frame(patients)`), built straight from validated patients."""
        cols: dict[str, Column] = {}
        for f in self.fields:
            if f.name not in self.feature_names:
                continue
            values = [p.get(f.name) for p in patients]
            if f.name in self._levels:
                codes = self._levels[f.name][1]
                cols[f.name] = Column(
                    np.array([np.nan if v is None else codes[v] for v in values], dtype=float),
                    list(f.levels or []),
                )
            else:
                cols[f.name] = Column(
                    np.array([np.nan if v is None else float(v) for v in values], dtype=float),
                    float64=True,
                )
        return cols

    def preferences(
        self, patients: Sequence[dict[str, Any]], field: str | None
    ) -> np.ndarray | None:
        """Each patient's stated preference (`field`), "none" where not given."""
        if field is None or field not in self.names:
            return None
        return np.array([p.get(field) or NO_PREFERENCE for p in patients], dtype=object)

    def frame(self, patients: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """The model's input frame, already typed as `feature_frame` types it: float
        columns for numeric fields (NaN when missing), categoricals over the declared
        levels for categorical ones (missing when missing). Validated values only."""
        cols: dict[str, Any] = {}
        for f in self.fields:
            values = [p.get(f.name) for p in patients]
            if f.name in self._levels:
                dtype, codes = self._levels[f.name]
                cols[f.name] = pd.Categorical.from_codes(
                    [-1 if v is None else codes[v] for v in values], dtype=dtype
                )
            else:
                cols[f.name] = np.array(
                    [np.nan if v is None else float(v) for v in values], dtype=float
                )
        return pd.DataFrame(cols, index=pd.RangeIndex(len(patients)))

    def missing(self, patient: dict[str, Any]) -> list[MissingFeature]:
        return [
            MissingFeature(feature=f.name, label=f.label)
            for f in self.fields
            if patient.get(f.name) is None
        ]

    def json_schema(self) -> dict[str, Any]:
        return self.patient_model.model_json_schema(by_alias=True)


def _numeric_doc(info: FieldInfo) -> str:
    unit = f" ({info.unit})" if info.unit else ""
    bounds = []
    if info.min is not None:
        bounds.append(f">= {info.min:g}")
    if info.max is not None:
        bounds.append(f"<= {info.max:g}")
    # the training data's range is not published here (the document is open to anyone);
    # GET /v1/schema gives it to key holders, and a value outside it gets a warning
    return f"{info.label}{unit}" + (f": {' and '.join(bounds)}" if bounds else "")


# A 422 lists at most MAX_PROBLEMS problems, each of bounded size, then counts the rest:
# a body of thousands of unknown fields must not come back many times larger.
MAX_PROBLEMS = 20
LOC_PART_MAX = 64  # characters of one name in a problem's loc (a field name is a JSON key)
MSG_MAX = 300


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problems(
    errors: Iterable[Any], prefix: Sequence[str | int], known: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Pydantic errors as {loc, field, msg, type}, without echoing the input values: names
    in `loc` and messages clipped, an unknown field of the patient (`known`: the model's
    fields) answered with the nearest names of the first MAX_PROBLEMS, not the whole list."""
    out = []
    for i, err in enumerate(errors):
        loc = [p if isinstance(p, int) else _clip(str(p), LOC_PART_MAX) for p in err["loc"]]
        loc = [*prefix, *loc]
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            if known is not None and i < MAX_PROBLEMS:
                msg += _suggestion(str(loc[-1]), known)
        out.append(
            {
                "loc": loc,
                "field": ".".join(str(p) for p in loc if p != "body"),
                "msg": _clip(msg, MSG_MAX),
                "type": str(err["type"]),
            }
        )
    return out


def _suggestion(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return hint + " (GET /v1/schema lists this model's fields)"


def request_problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """A request's validation errors as a 422's detail: only those it lists are converted."""
    listed = problems(errors[:MAX_PROBLEMS], ())
    return bounded(listed, omitted=len(errors) - len(listed))


def bounded(found: Sequence[dict[str, Any]], omitted: int = 0) -> list[dict[str, Any]]:
    """A 422's detail: the first MAX_PROBLEMS problems, then one entry counting the rest
    (those not listed, and `omitted`: problems counted but never described)."""
    if len(found) <= MAX_PROBLEMS and not omitted:
        return list(found)
    listed = found[:MAX_PROBLEMS]
    rest = len(found) - len(listed) + omitted
    return [
        *listed,
        {
            "loc": ["body"],
            "field": "",
            "msg": f"{rest} more problem{'s' if rest != 1 else ''} not listed",
            "type": "too_many_problems",
        },
    ]


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


# ---------------------------------------------------------------------------- OpenAPI


def patch_openapi(
    schema: dict[str, Any],
    contract: Contract | None,
    arms: tuple[str, str] | None,
    batch_max: int,
) -> dict[str, Any]:
    """Put the loaded model's patient contract (and its arm labels) into the OpenAPI
    document FastAPI generated from the static models."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if contract is not None:
        patient = contract.json_schema()
        patient.pop("$defs", None)
    else:
        patient = {
            "type": "object",
            "description": "No model is loaded yet; the patient contract appears here once "
            "one is (see /readyz).",
        }
    components["Patient"] = patient
    ref = {"$ref": "#/components/schemas/Patient"}
    single = components.get("RecommendationRequest", {}).get("properties", {})
    if "patient" in single:
        single["patient"] = {**ref, "description": PATIENT_DOC}
    batch = components.get("BatchRequest", {}).get("properties", {})
    if "patients" in batch:
        batch["patients"] = {
            "type": "array",
            "items": ref,
            "minItems": 1,
            "maxItems": batch_max,
            "description": f"{PATIENT_DOC} At most {batch_max} patients per request (more: 413).",
        }
    refs = batch.get("patient_refs")
    if refs is not None:
        refs["maxItems"] = batch_max
    if arms is not None and "Recommendation" in components:
        arm_ref = {"$ref": "#/components/schemas/ArmOutcome"}
        components["Recommendation"]["properties"]["arms"] = {
            "type": "object",
            "description": "per arm, keyed by the arm's label",
            "properties": {arms[0]: arm_ref, arms[1]: arm_ref},
            "required": list(arms),
            "additionalProperties": False,
        }
    return schema
