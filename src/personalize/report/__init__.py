"""The human-facing outputs of a training run: figures and the model card.

One module per job, all pure functions of a :class:`~personalize.training.TrainResult`
or of the card built from it; nothing here talks to MLflow:

- :mod:`~personalize.report.figures`: :func:`figures` -> ``{file name: Figure}``
  (reliability, TOC/Qini, benefit distribution, calibration for benefit, moderators,
  candidate learners) and :func:`save_figures`;
- :mod:`~personalize.report.card`: :func:`model_card_dict` -> the TRIPOD+AI-minded model
  card as JSON-ready data (served at ``GET /v1/model``; NaN becomes ``None``);
- :mod:`~personalize.report.render`: :func:`render_model_card` (Markdown) and
  :func:`render_model_card_html` (an HTML fragment) from that dict only, through the
  templates in ``templates/``, so the three never disagree; :func:`model_card` does both
  steps for Markdown;
- :mod:`~personalize.report.labels`: the wording the three share (outcome scale, labels).

Every figure and the card say so prominently when the pipeline's data are synthetic.
"""

from personalize.report.card import CARD_VERSION, model_card_dict
from personalize.report.figures import FIGURE_NAMES, figures, save_figures
from personalize.report.render import (
    SYNTHETIC_BANNER,
    card_summary,
    model_card,
    render_model_card,
    render_model_card_html,
)

__all__ = [
    "CARD_VERSION",
    "FIGURE_NAMES",
    "SYNTHETIC_BANNER",
    "card_summary",
    "figures",
    "model_card",
    "model_card_dict",
    "render_model_card",
    "render_model_card_html",
    "save_figures",
]
