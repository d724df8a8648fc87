"""The model card as text: Markdown (logged with the run, served at
``GET /v1/model?format=markdown``) and an HTML fragment (``?format=html``, shown by the
clinician page).

Both are rendered from the templates in ``templates/`` and read nothing but the card dict
of :func:`personalize.report.card.model_card_dict`, so they say what the JSON card says.
The HTML template is autoescaped: every value from the card arrives as text, never as
markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from personalize.report.card import model_card_dict
from personalize.report.labels import TOP_MODERATORS, OutcomeScale

if TYPE_CHECKING:
    from personalize.training import TrainResult

__all__ = ["SYNTHETIC_BANNER", "model_card", "render_model_card", "render_model_card_html"]

SYNTHETIC_HEADLINE = "⚠ SYNTHETIC DATA."
SYNTHETIC_WARNING = (
    "This model was trained on a simulated cohort, not on real patients. Its numbers "
    "demonstrate the method only and must not inform any clinical decision."
)
# the first block of a synthetic model's Markdown card
SYNTHETIC_BANNER = f"> **{SYNTHETIC_HEADLINE}** {SYNTHETIC_WARNING}"


def number(value: Any, digits: int = 3) -> str:
    """A number for a table: fixed decimals, significant digits when very small, n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def p_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def percent(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}%}"


def table_cell(value: Any) -> str:
    """A Markdown table cell: a "|" would end the cell and a line break the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


_templates = Environment(
    loader=PackageLoader("personalize.report", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=StrictUndefined,  # a key missing from the card fails loudly, not as ""
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_templates.filters.update(number=number, p_value=p_value, percent=percent, cell=table_cell)


def _render(template: str, card: Mapping[str, Any]) -> str:
    binary = card["outcome"]["kind"] == "binary"
    return _templates.get_template(template).render(
        card=card,
        binary=binary,
        scale=OutcomeScale(binary),
        top_moderators=TOP_MODERATORS,
        synthetic_banner=SYNTHETIC_BANNER,
        synthetic_headline=SYNTHETIC_HEADLINE,
        synthetic_warning=SYNTHETIC_WARNING,
    )


def render_model_card(card: Mapping[str, Any]) -> str:
    """Markdown for a card made by :func:`model_card_dict` (reads nothing else)."""
    return _render("model_card.md.j2", card)


def render_model_card_html(card: Mapping[str, Any]) -> str:
    """The same card as an HTML fragment (no ``<html>``/``<head>``, no scripts or inline
    styles) for a page to insert; classes only, the page's stylesheet styles it."""
    return _render("model_card.html.j2", card)


def model_card(
    result: TrainResult,
    *,
    model_name: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
) -> str:
    """The model card as Markdown (rendered from :func:`model_card_dict`)."""
    return render_model_card(
        model_card_dict(result, model_name=model_name, version=version, run_id=run_id)
    )


def card_summary(card: Mapping[str, Any]) -> str:
    """The model card in a paragraph (a registered version's description): intended use,
    the data and whether they are synthetic, the heterogeneity verdict."""
    use, data, het = card["intended_use"], card["data_source"], card["heterogeneity"]
    population = card["population"]
    verdict = (
        "heterogeneity of benefit detected"
        if het.get("detected")
        else "no reliable evidence that benefit differs between patients"
    )
    lines = [
        f"{SYNTHETIC_HEADLINE} {SYNTHETIC_WARNING}" if card.get("synthetic") else "",
        f"Intended use: {use.get('purpose', '')}",
        f"Question: {use.get('question', '')}",
        f"Data: {population.get('n_patients')} patients ({population.get('n_observed')} with "
        f"an observed outcome); {data.get('statement') or data.get('description', '')}",
        f"Heterogeneity: {verdict} (adjusted p = "
        f"{p_value(het.get('differential_p_adjusted'))}, alpha {het.get('alpha')}).",
        (
            f"WARNING, model checks failed: {card['checks']['warning']}."
            if card.get("checks") and not card["checks"].get("passed", True)
            else ""
        ),
        f"Outcome: {card['outcome'].get('definition', '')}; "
        f"learner {card['model'].get('learner')}.",
    ]
    return "\n\n".join(line for line in lines if line)
