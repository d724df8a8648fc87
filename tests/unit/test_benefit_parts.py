"""A recommendation's benefit split into parts that add up to it: the base value (the
average benefit), the top drivers and the other features together, as the response carries
them (`recommend.score` -> `recommendation_from_row`, the service's one path without HTTP)
and as the CDS card says them in words."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from personalize import training
from personalize.data.simulate import simulate
from personalize.service.cds_hooks import detail
from personalize.service.fhir import Extraction
from personalize.service.holder import LoadedModel
from personalize.service.recommend import score
from personalize.service.schemas import Recommendation, recommendation_from_row
from support.registry import small

pytestmark = pytest.mark.filterwarnings("ignore:LightGBM binary classifier")

TOL = 1e-9
PATIENTS = 60


@pytest.fixture(scope="module")
def served() -> list[tuple[LoadedModel, list[dict[str, Any]]]]:
    """A binary T-learner and a continuous S-learner as the service loads them, each with
    cohort patients of whom some values are left out (as a record may leave them)."""
    out = []
    for pipeline, learner in (("stamp", "t"), ("stamp-continuous", "s")):
        frame = simulate("stamp", 400, 3).cohort
        model = training.fit(small(pipeline, [learner]), frame).model
        loaded = LoadedModel.build(
            model,
            name=f"personalize-{pipeline}",
            version="1",
            run_id=None,
            source="registry",
            model_uri=f"models:/personalize-{pipeline}/1",
        )
        out.append((loaded, patients(loaded, frame)))
    return out


def patients(loaded: LoadedModel, frame: pd.DataFrame) -> list[dict[str, Any]]:
    rng = np.random.default_rng(4)
    out = []
    for _, row in frame.head(PATIENTS).iterrows():
        raw: dict[str, Any] = {}
        for name in loaded.contract.names:
            value = row.get(name)
            if value is None or pd.isna(value) or rng.random() < 0.3:
                raw[name] = None
            else:
                raw[name] = value.item() if hasattr(value, "item") else value
        out.append(loaded.contract.validate(raw, ()))
    return out


def responses(
    loaded: LoadedModel, patients: list[dict[str, Any]], explain: int
) -> list[Recommendation]:
    rows = score(loaded, patients, explain)
    return [
        recommendation_from_row(
            row,
            model=loaded.model,
            block=loaded.block,
            missing=loaded.contract.missing(patient),
            audit_id="0" * 32,
        )
        for row, patient in zip(rows, patients, strict=True)
    ]


def test_base_value_drivers_and_other_features_add_up_to_the_benefit(
    served: list[tuple[LoadedModel, list[dict[str, Any]]]],
) -> None:
    listed_missing = 0
    for loaded, group in served:
        recs = responses(loaded, group, explain=3)
        explanation = loaded.model.explain(loaded.contract.frame(group))
        names = list(explanation.feature_names)
        for i, rec in enumerate(recs):
            parts = rec.benefit_parts
            # no driver is listed where none moves the benefit (a calibration slope of 0)
            assert parts is not None and len(rec.drivers) <= 3
            total = parts.base_value + sum(d.contribution for d in rec.drivers)
            assert abs(total + parts.other_features - rec.benefit.estimate) <= TOL
            # the parts are SHAP's: the base value, and every feature not listed, summed
            assert abs(parts.base_value - explanation.base_values[i]) <= TOL
            listed = [names.index(d.feature) for d in rec.drivers]
            rest = np.delete(explanation.values[i], listed).sum()
            assert abs(parts.other_features - rest) <= TOL
        # the base value is the model's average benefit, the same for every patient
        assert np.ptp([r.benefit_parts.base_value for r in recs if r.benefit_parts]) <= TOL
        listed_missing += sum(d.value is None for rec in recs for d in rec.drivers)
    assert listed_missing, "no listed driver is a value that was not given"
    binary = responses(*served[0], explain=3)
    assert all(rec.drivers for rec in binary)


def test_with_every_driver_listed_no_other_features_are_left(
    served: list[tuple[LoadedModel, list[dict[str, Any]]]],
) -> None:
    loaded, group = served[0]
    every = len(loaded.model.pipeline.features) + 1
    for rec in responses(loaded, group[:10], explain=every):
        parts = rec.benefit_parts
        assert parts is not None and abs(parts.other_features) <= TOL
        total = parts.base_value + sum(d.contribution for d in rec.drivers)
        assert abs(total - rec.benefit.estimate) <= TOL


def test_a_service_that_explains_nothing_gives_no_parts(
    served: list[tuple[LoadedModel, list[dict[str, Any]]]],
) -> None:
    loaded, group = served[0]
    for rec in responses(loaded, group[:5], explain=0):
        assert rec.drivers == [] and rec.benefit_parts is None


def test_the_schema_documents_the_parts() -> None:
    schema = Recommendation.model_json_schema()
    field = schema["properties"]["benefit_parts"]
    assert "add up to" in field["description"]
    parts = schema["$defs"]["BenefitParts"]
    assert "base_value + sum(drivers[].contribution) + other_features" in parts["description"]
    assert "average benefit" in parts["properties"]["base_value"]["description"]
    assert "not listed in `drivers`" in parts["properties"]["other_features"]["description"]
    drivers = schema["properties"]["drivers"]["description"]
    assert "how the model handles a missing value, not a value of the patient" in drivers


def signed_pp(value: float) -> str:
    return f"{value * 100:+.1f} pp"


def test_the_cds_card_builds_the_benefit_up_in_words(
    served: list[tuple[LoadedModel, list[dict[str, Any]]]],
) -> None:
    loaded, group = served[0]
    recs = responses(loaded, group, explain=3)
    rec = next(r for r in recs if any(d.value is None for d in r.drivers))
    parts = rec.benefit_parts
    assert parts is not None
    treatment, control = loaded.arms
    text = detail(rec, treatment, control, Extraction())
    lines = text.splitlines()
    start = lines.index("**Top drivers**: from the average benefit to this patient's")
    steps = lines[start + 2 : start + 2 + len(rec.drivers) + 3]
    assert steps[0] == (
        "- Average benefit (base value, before any of this patient's values): "
        + signed_pp(parts.base_value)
    )
    for line, d in zip(steps[1:-2], rec.drivers, strict=True):
        value = "not given" if d.value is None else d.value
        value = f"{value:g}" if isinstance(value, float) else value
        assert line == f"- {d.label} = {value}: {d.direction} ({signed_pp(d.contribution)})"
    assert steps[-2] == f"- Other features, together: {signed_pp(parts.other_features)}"
    assert steps[-1].startswith(
        f"- **Benefit for this patient: {signed_pp(rec.benefit.estimate)}**"
    )
    assert (
        "A driver that is *not given* is a feature the record did not provide: its "
        "contribution is how the model handles a missing value, not a value of this patient."
    ) in text
    # without the parts (a response that has none), the drivers alone
    bare = detail(rec.model_copy(update={"benefit_parts": None}), treatment, control, Extraction())
    assert "**Top drivers**\n" in bare and "Average benefit" not in bare
