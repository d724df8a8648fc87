"""The OpenAPI document of the loaded model: its patient contract, arms, batch limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from personalize.service.contract import Contract
from personalize.service.schemas import PATIENT_DOC


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
