"""What a refused request is told: its problems, bounded in number and size, with the
nearest names for an unknown field (a 1.8 MB body of unknown fields gets a few KB back)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


MAX_PROBLEMS = 20
LOC_PART_MAX = 64  # characters of one name in a problem's loc (a field name is a JSON key)
MSG_MAX = 300


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problems(
    errors: Iterable[Any], prefix: Sequence[str | int], known: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Pydantic errors as {loc, field, msg, type}, without echoing the input values: names
    in `loc` and messages clipped, an unknown field of the patient (`known`: the model's
    fields) answered with the nearest names of the first MAX_PROBLEMS, not the whole list."""
    out = []
    for i, err in enumerate(errors):
        loc = [p if isinstance(p, int) else clip(str(p), LOC_PART_MAX) for p in err["loc"]]
        loc = [*prefix, *loc]
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            if known is not None and i < MAX_PROBLEMS:
                msg += suggestion(str(loc[-1]), known)
        out.append(
            {
                "loc": loc,
                "field": ".".join(str(p) for p in loc if p != "body"),
                "msg": clip(msg, MSG_MAX),
                "type": str(err["type"]),
            }
        )
    return out


def suggestion(name: str, known: Sequence[str]) -> str:
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
