"""The pipeline file: a declarative, typed description of one cohort and how to learn from it.

Everything downstream (validation, training, the service's request schema, the scorer)
reads the cohort through this model, so nothing is hard-wired to one trial.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NO_PREFERENCE = "none"  # the preference column's value for a stated preference for neither arm


class Strict(BaseModel):
    """Unknown keys are typos, not extensions: reject them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericFeature(Strict):
    type: Literal["numeric"]
    min: float | None = None
    max: float | None = None
    label: str | None = None
    unit: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> NumericFeature:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CategoricalFeature(Strict):
    type: Literal["categorical"]
    levels: list[str] = Field(min_length=1)
    label: str | None = None

    @model_validator(mode="after")
    def _levels_unique(self) -> CategoricalFeature:
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("levels must be unique")
        return self


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="type")]


class Arms(Strict):
    column: str
    treatment: str
    control: str

    @model_validator(mode="after")
    def _two_arms(self) -> Arms:
        if self.treatment == self.control:
            raise ValueError("treatment and control labels must differ")
        return self

    @property
    def labels(self) -> tuple[str, str]:
        return (self.treatment, self.control)


class SimulateSpec(Strict):
    """How the synthetic demo cohort for this pipeline is generated."""

    scenario: str
    n: int | None = None
    seed: int = 0


class CohortSpec(Strict):
    path: str | None = None
    id: str
    arm: Arms
    preference: str | None = None
    simulate: SimulateSpec | None = None


class Responder(Strict):
    relative_reduction: float | None = Field(default=None, gt=0, le=1)
    absolute_reduction: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Responder:
        if (self.relative_reduction is None) == (self.absolute_reduction is None):
            raise ValueError("give exactly one of relative_reduction or absolute_reduction")
        return self

    def describe(self) -> str:
        if self.relative_reduction is not None:
            return f">= {self.relative_reduction:.0%} reduction"
        return f">= {self.absolute_reduction:g} point reduction"


class Outcome(Strict):
    kind: Literal["binary", "continuous"]
    baseline: str | None = None
    followup: str | None = None
    column: str | None = None
    better: Literal["higher", "lower"] | None = None
    responder: Responder | None = None
    missing: Literal["ipcw", "complete_case"] = "ipcw"
    label: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Outcome:
        paired = self.baseline is not None and self.followup is not None
        if self.kind == "binary":
            if not paired:
                raise ValueError("a binary outcome needs baseline and followup columns")
            if self.responder is None:
                raise ValueError("a binary outcome needs a responder definition")
            if self.column is not None:
                raise ValueError("a binary outcome is defined from baseline/followup, not column")
        else:
            if self.responder is not None:
                raise ValueError("responder applies to binary outcomes only")
            if paired == (self.column is not None):
                raise ValueError("a continuous outcome needs either baseline+followup or column")
            if self.column is not None and self.better is None:
                raise ValueError("a ready outcome column needs better: higher | lower")
        if (self.baseline is None) != (self.followup is None):
            raise ValueError("baseline and followup go together")
        return self

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.baseline, self.followup, self.column) if c is not None]

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.kind == "binary":
            assert self.responder is not None
            return f"responder: {self.responder.describe()} from {self.baseline} to {self.followup}"
        if self.column is not None:
            return f"{self.column} ({self.better} is better)"
        return f"improvement from {self.baseline} to {self.followup}"


class ValidationRules(Strict):
    """Minimum data to train at all; stated in every validation report."""

    min_per_arm: int = Field(default=50, ge=1)
    min_observed_per_arm: int = Field(default=30, ge=1)


class Training(Strict):
    folds: int = Field(default=5, ge=2, le=20)
    seed: int = 0
    learners: list[str] | None = Field(default=None, min_length=1)  # None: the defaults
    interval_level: float = Field(default=0.9, gt=0, lt=1)
    bootstrap: int = Field(default=50, ge=10)
    ipcw_clip: float = Field(default=10.0, gt=1)


class Decision(Strict):
    margin: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # the better bet is offered only when the favoured arm is better for the patient with
    # at least this posterior (or bootstrap) probability
    bet_level: float = Field(default=0.8, ge=0.5, lt=1)


SLOPE_Z = 1.96  # the slope gate's 95% confidence interval


class Gates(Strict):
    """Conditions a version must meet before `promote` moves `champion` to it.

    Each arm's out-of-fold calibration slope fails only when the data show it is outside
    `calibration_slope`: when its 95% confidence interval lies wholly outside the band. With
    a hundred responders per arm the slope's standard error is 0.3 to 2 where predictions
    vary little, and the point estimate alone refused sound models by chance."""

    calibration_slope: tuple[float, float] = (0.7, 1.3)
    max_ece: float = 0.10

    def slope_passes(self, slope: float, se: float) -> bool:
        """Whether the band admits an arm's slope, given its standard error (NaN: none
        recorded, the point estimate alone is judged)."""
        lo, hi = self.calibration_slope
        half = 0.0 if math.isnan(se) else SLOPE_Z * se
        return math.isfinite(slope) and slope + half >= lo and slope - half <= hi

    def slope_rule(self, arm: str, slope: float, se: float) -> str:
        """The check as the promotion report and the model card state it."""
        lo, hi = self.calibration_slope
        shown = f"{slope:.2f}"
        if not math.isnan(se):
            shown += f" (95% CI {slope - SLOPE_Z * se:.2f} to {slope + SLOPE_Z * se:.2f})"
        verb = "reaches" if self.slope_passes(slope, se) else "lies outside"
        return f"calibration slope {arm} = {shown} {verb} [{lo:g}, {hi:g}]"


class Registry(Strict):
    model_name: str


class Pipeline(Strict):
    name: str
    description: str | None = None
    synthetic: bool = False
    cohort: CohortSpec
    features: dict[str, Feature] = Field(min_length=1)
    outcome: Outcome
    validation: ValidationRules = ValidationRules()
    training: Training = Training()
    decision: Decision = Decision()
    gates: Gates = Gates()
    # a fired model check (docs/training.md, "Model checks") blocks promotion, or with
    # `warn` lets it through with a warning on every answer
    checks: Literal["block", "warn"] = "block"
    registry: Registry
    # features to report performance by (TRIPOD+AI fairness): categorical -> its levels,
    # numeric -> bands at the given cut points, e.g. {sex: null, age: [50, 65]}
    subgroups: dict[str, list[float] | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _roles_disjoint(self) -> Pipeline:
        if self.cohort.id in self.features or self.cohort.arm.column in self.features:
            raise ValueError("the id and arm columns cannot be features")
        leaked = [c for c in (self.outcome.followup, self.outcome.column) if c in self.features]
        if leaked:
            raise ValueError(f"outcome column {leaked[0]!r} cannot be a feature")
        unknown = [k for k in self.subgroups if k not in self.features]
        if unknown:
            raise ValueError(f"subgroups {unknown} are not declared features")
        if self.training.learners:  # the learners load their libraries: only when named
            from personalize.learners import learner_names

            known = learner_names()
            unknown = [k for k in self.training.learners if k not in known]
            if unknown:
                raise ValueError(f"training.learners: unknown {unknown}; choose from {known}")
        return self

    @property
    def learners(self) -> list[str]:
        """The candidate learners: `training.learners`, or the defaults for the outcome's
        kind when the file names none."""
        from personalize.learners import default_learner_names  # loads LightGBM: on use

        return list(self.training.learners or default_learner_names(self.outcome.kind))

    @property
    def required_columns(self) -> list[str]:
        cols = [self.cohort.id, self.cohort.arm.column, *self.features, *self.outcome.columns]
        if self.cohort.preference:
            cols.append(self.cohort.preference)
        return list(dict.fromkeys(cols))


class PipelineError(ValueError):
    """A pipeline file that cannot be used; the message names the file, the key or line,
    and the reason."""


class PipelineNotFound(PipelineError):
    """No file at the path given (a usage error, not a bad file)."""


MAX_PIPELINE_BYTES = 1 << 20  # a pipeline file is a few KiB; anything larger is not one
MAX_DEPTH = 32  # nesting levels; the deepest real key (features.age.type) is at 3


class _PipelineYAML(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what it would accept silently or fail on with a
    traceback: a key given twice (the last one would win unnoticed), nesting deep enough
    to exhaust Python's stack, an integer too long for Python to convert. Each refusal
    names the line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _Refused(
                    f"line {line}: duplicate key {key!r} (first given at line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:
            digits = sum(c.isdigit() for c in str(node.value))
            raise _Refused(
                f"line {node.start_mark.line + 1}: an integer of {digits} digits is too long"
            ) from None


_PipelineYAML.add_constructor("tag:yaml.org,2002:int", _PipelineYAML.construct_yaml_int)


class _Refused(Exception):
    """A pipeline file's YAML refused by `_PipelineYAML` (the message starts with the line)."""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, then what."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        return f"{where}{what}"
    return " ".join(str(exc).split())


def read_pipeline_text(path: Path) -> str:
    """The file's text: a regular file of at most `MAX_PIPELINE_BYTES` bytes of UTF-8."""
    if not path.exists():
        raise PipelineNotFound(f"pipeline file not found: {path}")
    if path.is_dir():
        raise PipelineError(f"{path}: is a directory, not a pipeline file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PIPELINE_BYTES + 1)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PIPELINE_BYTES:
        raise PipelineError(
            f"{path}: larger than {MAX_PIPELINE_BYTES >> 20} MiB; not a pipeline file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})"
        ) from None


def load_pipeline(path: str | Path) -> Pipeline:
    """The one reader of pipeline files (every command goes through it): each problem is
    a `PipelineError` whose message names the file and, where there is one, the line or
    the key."""
    path = Path(path)
    text = read_pipeline_text(path)
    try:
        raw = yaml.load(text, Loader=_PipelineYAML)  # a SafeLoader subclass
    except _Refused as exc:
        raise PipelineError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:  # a structure deep in one line (flow style) past the composer
        raise PipelineError(f"{path}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level")
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise PipelineError(f"{path}: invalid pipeline file\n" + "\n".join(lines)) from None
