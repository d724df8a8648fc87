"""The loaded model's patient contract as the service reads it: the fields a request may
send, their types, levels and ranges, and a patient's values checked into typed columns
(`PatientInvalid` lists every problem)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from personalize.data.cells import NO_PREFERENCE, categorical_dtype
from personalize.data.columns import Column

if TYPE_CHECKING:
    from personalize.model import PersonalizeModel
from personalize.service.problems import MAX_PROBLEMS, problems
from personalize.service.schemas import BatchRequest, FieldInfo, MissingFeature


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
                desc = numeric_doc(info)
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


def numeric_doc(info: FieldInfo) -> str:
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
