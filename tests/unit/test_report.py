"""Figures and model card of a training run (personalize.report)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalize import report, training
from personalize.config import Pipeline, load_pipeline
from personalize.data.simulate import simulate
from personalize.learners import ARM_DRIVER
from personalize.report.labels import feature_label
from personalize.stats import coverage

# the module, not the `figures` function the package exports under the same name
figures_module = importlib.import_module("personalize.report.figures")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "report"


def small(pipeline: Pipeline, **update: Any) -> Pipeline:
    """A quick-to-train copy: few bootstrap refits, subgroups by sex and age band."""
    changes: dict[str, Any] = {"training": pipeline.training.model_copy(update={"bootstrap": 10})}
    if not pipeline.subgroups:
        changes["subgroups"] = {"sex": None, "age": [50, 65]}
    changes.update(update)
    return pipeline.model_copy(update=changes)


@pytest.fixture(scope="module")
def stamp() -> Pipeline:
    return load_pipeline(ROOT / "pipelines" / "stamp.yaml")


# Training runs of this module's own, not the session's registry (tests/conftest.py): the
# report reads a TrainResult, which the registry does not keep, and these fast tests must
# not wait for the registry's training.
@pytest.fixture(scope="module")
def result(stamp: Pipeline) -> training.TrainResult:
    return training.fit(small(stamp), simulate("stamp", 400, 3).cohort)


@pytest.fixture(scope="module")
def continuous(stamp: Pipeline) -> training.TrainResult:
    outcome = stamp.outcome.model_copy(
        update={
            "kind": "continuous",
            "baseline": "bpi_severity",
            "followup": "bpi_severity_m6",
            "responder": None,
            "label": None,
        }
    )
    pipeline = small(
        stamp, outcome=outcome, decision=stamp.decision.model_copy(update={"margin": 0.5})
    )
    return training.fit(pipeline, simulate("stamp", 400, 3).cohort)


def with_pipeline(result: training.TrainResult, **update: Any) -> training.TrainResult:
    """The same run as if trained under a pipeline differing in `update` (no refit)."""
    pipeline = result.model.pipeline.model_copy(update=update)
    return dataclasses.replace(result, model=dataclasses.replace(result.model, pipeline=pipeline))


def card_args() -> dict[str, Any]:
    return {"model_name": "personalize-stamp", "version": "7", "run_id": "run-abc123"}


def no_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(no_nan(v) for v in value.values())
    if isinstance(value, list):
        return all(no_nan(v) for v in value)
    return value is None or isinstance(value, bool | int | str)


def synthetic_notes(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.texts if "SYNTHETIC DATA" in t.get_text()]


# --------------------------------------------------------------------------- figures


def top_drivers(result: training.TrainResult) -> list[str]:
    """The features with the largest mean |driver of the benefit|, the arm term aside."""
    ranked = [name for name in result.importance if name != ARM_DRIVER]
    return ranked[: figures_module.DEPENDENCE_PLOTS]


def test_every_figure_renders_to_a_png(result: training.TrainResult) -> None:
    figs = report.figures(result)
    dependence = [f"shap_dependence_{name}.png" for name in top_drivers(result)]
    assert "shap_beeswarm.png" in report.FIGURE_NAMES
    assert list(figs) == [*report.FIGURE_NAMES, *dependence]
    assert len(dependence) == 4
    # one set kept for a human to look at (git-ignored)
    paths = report.save_figures(figs, ARTIFACTS / "binary")
    assert [p.name for p in paths] == list(figs)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 20_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def test_figures_leave_pyplot_and_numpys_generator_alone(result: training.TrainResult) -> None:
    """SHAP's scatter plot selects its axes through pyplot and shuffles with numpy's global
    generator: neither may change for the caller."""
    import matplotlib.pyplot as plt

    plt.figure()  # a figure of the caller's, current before and after
    try:
        before = plt.get_fignums()
        np.random.seed(5)
        expected = np.random.random(3)
        np.random.seed(5)
        report.figures(result)
        assert plt.get_fignums() == before
        np.testing.assert_array_equal(np.random.random(3), expected)
    finally:
        plt.close("all")


def test_every_figure_says_synthetic(result: training.TrainResult) -> None:
    for name, fig in report.figures(result).items():
        assert synthetic_notes(fig), f"{name} lacks the SYNTHETIC DATA note"


def test_real_data_figures_carry_no_synthetic_note(result: training.TrainResult) -> None:
    for name, fig in report.figures(with_pipeline(result, synthetic=False)).items():
        assert not synthetic_notes(fig), name


def test_figures_label_axes_with_units_and_arms(result: training.TrainResult) -> None:
    figs = report.figures(result)
    for name, fig in figs.items():
        # SHAP's plots add a colour bar or a histogram's twin axes to their one plot
        for ax in fig.axes[:1] if name.startswith("shap_") else fig.axes:
            assert ax.get_xlabel(), name
            # bar charts of features / learners and the beeswarm label their categories
            # on the y axis
            assert ax.get_ylabel() or name in (
                "moderators.png",
                "candidates.png",
                "shap_beeswarm.png",
            ), name
    dist = figs["benefit_distribution.png"].axes[0]
    assert "percentage points" in dist.get_xlabel()
    assert "MBT" in dist.get_xlabel() and "CBT" in dist.get_xlabel()
    moderators = figs["moderators.png"].axes[0]
    labels = [t.get_text() for t in moderators.get_yticklabels()]
    assert "Age (years)" in labels or "Sex" in labels  # pipeline labels, not column names
    reliability = figs["reliability.png"].axes
    assert [ax.get_title().split(" ")[0] for ax in reliability] == ["MBT", "CBT"]
    assert all("Brier" in ax.get_title() for ax in reliability)


def scatter_offsets(ax: Any) -> list[np.ndarray]:
    """The (x, y) positions of each scatter collection's dots, largest collection first."""
    found = [np.asarray(c.get_offsets()) for c in ax.collections if len(c.get_offsets())]
    return sorted(found, key=len, reverse=True)


def test_beeswarm_shows_every_patients_drivers_in_percentage_points(
    result: training.TrainResult,
) -> None:
    fig = report.figures(result)["shap_beeswarm.png"]
    ax = fig.axes[0]
    explanation = result.model.explain(result.cohort.X)
    names = list(explanation.feature_names)
    pipeline = result.model.pipeline
    # the rows are the features by their labels, the strongest driver on top
    rows = [t.get_text() for t in ax.get_yticklabels()]
    top = next(iter(result.importance))  # the arm term too, where it is the strongest
    assert rows[-1] == feature_label(pipeline, top)
    assert rows[0].startswith("Sum of") and rows[0].endswith("other features")
    # the top row's dots are the explanation's values of that feature, in percentage points
    dots = [o for o in scatter_offsets(ax) if len(o) == len(result.cohort)]
    expected = np.sort(explanation.values[:, names.index(top)] * 100)
    assert any(np.allclose(np.sort(o[:, 0]), expected, rtol=0, atol=1e-9) for o in dots), (
        "no row of dots holds the top driver's contributions"
    )
    assert "percentage points" in ax.get_xlabel()
    assert "favours MBT" in ax.get_xlabel() and "favours CBT" in ax.get_xlabel()
    base = float(np.mean(explanation.base_values)) * 100
    assert f"average benefit ({base:+.2f} pp)" in ax.get_title()
    assert f"all {len(result.cohort)} training patients" in ax.get_title()


def test_dependence_plots_show_each_top_drivers_contribution_against_its_value(
    result: training.TrainResult,
) -> None:
    figs = report.figures(result)
    explanation = result.model.explain(result.cohort.X)
    names = list(explanation.feature_names)
    pipeline = result.model.pipeline
    for name in top_drivers(result):
        ax = figs[f"shap_dependence_{name}.png"].axes[0]
        label = feature_label(pipeline, name)
        assert ax.get_xlabel().startswith(f"{label}: the patient's value")
        assert "percentage points" in ax.get_ylabel() and "favours MBT" in ax.get_ylabel()
        j = names.index(name)
        given = ~np.isnan(explanation.data[:, j])
        dots = scatter_offsets(ax)[0]
        # y: each patient's contribution (pp); x: their value (jittered for categoricals)
        np.testing.assert_allclose(
            np.sort(dots[:, 1]), np.sort(explanation.values[given, j] * 100), rtol=0, atol=1e-9
        )
        spec = pipeline.features[name]
        if hasattr(spec, "levels"):
            assert [t.get_text() for t in ax.get_xticklabels()] == [str(v) for v in spec.levels]
        else:  # SHAP jitters values that repeat, by at most half the gap between them
            values = np.sort(explanation.data[given, j])
            gap = float(np.diff(np.unique(values)).min())
            np.testing.assert_allclose(np.sort(dots[:, 0]), values, rtol=0, atol=gap / 2)


def test_shap_figures_explain_a_sample_of_a_large_cohort(
    result: training.TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figures_module, "SHAP_SAMPLE", 150)
    figs = figures_module.shap_figures(result)
    ax = figs["shap_beeswarm.png"].axes[0]
    assert "a random sample of 150 of the 400 training patients" in ax.get_title()
    assert max(len(o) for o in scatter_offsets(ax)) == 150
    again = figures_module.shap_figures(result)["shap_beeswarm.png"].axes[0]
    for a, b in zip(scatter_offsets(ax), scatter_offsets(again), strict=True):
        np.testing.assert_array_equal(a, b)  # the same sample, the same jitter, every run


def test_continuous_shap_figures_are_in_points(continuous: training.TrainResult) -> None:
    figs = report.figures(continuous)
    for name, fig in figs.items():
        if name.startswith("shap_"):
            labels = fig.axes[0].get_xlabel() + fig.axes[0].get_ylabel()
            assert "points" in labels and "percentage" not in labels, name


# --------------------------------------------------------------------------- model card


def test_card_dict_is_json_without_nan(result: training.TrainResult) -> None:
    card = report.model_card_dict(result, **card_args())
    text = json.dumps(card, allow_nan=False)
    assert no_nan(json.loads(text))
    assert card["synthetic"] is True
    assert card["model"]["name"] == "personalize-stamp"
    assert card["model"]["version"] == "7"
    assert card["model"]["run_id"] == "run-abc123"
    assert card["learners"]["chosen"] == result.chosen
    assert set(card["calibration"]["arms"]) == {"MBT", "CBT"}
    assert card["population"]["n_patients"] == 400
    assert {f["name"] for f in card["population"]["features"]} == set(
        result.model.pipeline.features
    )
    assert len(card["subgroups"]["rows"]) == len(result.subgroups)


def test_card_has_no_individual_rows(result: training.TrainResult) -> None:
    text = json.dumps(report.model_card_dict(result, **card_args()))
    for patient in result.cohort.ids[:20]:
        assert f'"{patient}"' not in text


def test_nan_becomes_none_and_n_a(result: training.TrainResult) -> None:
    odd = dataclasses.replace(result, share_either=float("nan"))
    card = report.model_card_dict(odd, **card_args())
    assert card["decision_rule"]["share_either_training"] is None
    json.dumps(card, allow_nan=False)
    assert "given 'either': n/a" in report.render_model_card(card)


def test_markdown_is_rendered_from_the_dict(result: training.TrainResult) -> None:
    card = report.model_card_dict(result, **card_args())
    markdown = report.model_card(result, **card_args())
    assert report.render_model_card(json.loads(json.dumps(card))) == markdown


def test_markdown_card_contents(result: training.TrainResult) -> None:
    md = report.model_card(result, **card_args())
    (ARTIFACTS / "binary").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "binary" / "model_card.md").write_text(md)
    lines = md.splitlines()
    assert lines[0] == "# Model card: personalize-stamp"
    first = next(line for line in lines[1:] if line.strip())
    assert first == report.SYNTHETIC_BANNER
    pipeline = result.model.pipeline
    assert pipeline.outcome.describe() in md
    for section in (
        "## Intended use",
        "## Population",
        "## Outcome",
        "## Data source",
        "## Missing outcomes",
        "## Learners compared",
        "## Calibration",
        "## Heterogeneity evidence",
        "## Decision rule",
        "## Explanations",
        "## Subgroup performance",
        "## Limitations",
    ):
        assert section in md
    assert "not a substitute for clinical judgment" in md
    for arm, cal in result.calibration.items():
        assert cal.brier is not None
        assert f"| {arm} | {cal.method} | {cal.n} | {cal.brier:.3f} |" in md
    assert f"**Chosen: `{result.chosen}`**" in md
    for name in result.candidates:
        assert f"| `{name}` |" in md
    assert "| Sex | female |" in md and "| Sex | male |" in md
    assert "| Age | < 50 |" in md and "| Age | >= 65 |" in md
    assert result.model.rule.evidence_reason in md
    assert "Inverse probability of censoring weighting" in md
    assert f"{result.ipcw.effective_sample_size:.0f}" in md
    assert "run-abc123" in md and "| Version | 7 |" in md
    # the limitations say what the interval covers: the expected benefit of patients with
    # this patient's measured characteristics (posterior) or the average benefit of similar
    # patients (bootstrap), with how often and where it covered
    learner = result.model.learner
    measured = coverage.measured(learner.name, learner.kind, result.model.individual_interval)
    assert measured is not None  # the shipped default's figures were measured
    if result.model.individual_interval:
        assert "the expected benefit of patients with this patient's measured" in md
        assert f"covered the true benefit for {measured.said()}" in md
    else:
        assert "bootstrap" in md and f"covered that average for {measured.group:.0%}" in md
    assert measured.where() in md
    figure = measured.said() if result.model.individual_interval else f"{measured.own:.0%}"
    assert figure in result.model.interval_covers


def test_unregistered_card(result: training.TrainResult) -> None:
    md = report.model_card(result, model_name=None, version=None, run_id=None)
    assert md.startswith(f"# Model card: {result.model.pipeline.registry.model_name}\n")
    assert "| Version | not registered |" in md


def test_real_data_card_has_no_banner(result: training.TrainResult) -> None:
    real = with_pipeline(result, synthetic=False)
    card = report.model_card_dict(real, **card_args())
    assert card["synthetic"] is False
    md = report.render_model_card(card)
    assert report.SYNTHETIC_BANNER not in md
    assert "SYNTHETIC" not in md
    assert not any("synthetic" in item.lower() for item in card["limitations"])


def test_complete_case_is_stated(result: training.TrainResult) -> None:
    cc = dataclasses.replace(result, ipcw=dataclasses.replace(result.ipcw, method="complete_case"))
    md = report.model_card(cc, **card_args())
    assert "Complete-case analysis" in md
    assert "missing completely at random" in md


def test_no_subgroups_configured(result: training.TrainResult) -> None:
    bare = dataclasses.replace(with_pipeline(result, subgroups={}), subgroups=[])
    assert "No subgroups are configured" in report.model_card(bare, **card_args())


def test_continuous_outcome_renders(continuous: training.TrainResult) -> None:
    figs = report.figures(continuous)
    paths = report.save_figures(figs, ARTIFACTS / "continuous")
    assert all(p.stat().st_size > 20_000 for p in paths)
    dist = figs["benefit_distribution.png"].axes[0]
    assert "points" in dist.get_xlabel() and "percentage" not in dist.get_xlabel()
    card = report.model_card_dict(continuous, **card_args())
    json.dumps(card, allow_nan=False)
    md = report.render_model_card(card)
    assert "improvement from bpi_severity to bpi_severity_m6" in md
    assert "| Arm | Method | n | RMSE |" in md
    assert " pp" not in md  # points, not percentage points
    assert card["decision_rule"]["margin_display"] == "0.50 points"
    assert f"**Chosen: `{continuous.chosen}`**" in md


# --------------------------------------------------------------------------- HTML card


class _Blocks(HTMLParser):
    """The text of each block of an HTML fragment in document order: headings, paragraphs,
    list items (without their nested lists) and table rows (cells joined by " | ")."""

    BLOCKS = frozenset({"h1", "h2", "h3", "p", "li", "tr"})

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[list[str]] = []
        self.open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.open.append(len(self.blocks))
            self.blocks.append([])
        elif tag in ("td", "th") and self.open:
            self.blocks[self.open[-1]].append("\x00")  # a cell starts

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open:
            self.blocks[self.open[-1]].append(data)


class _Tags(HTMLParser):
    """The element and attribute names an HTML fragment uses."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes.update(name for name, _ in attrs)


def _words(text: str) -> str:
    return " ".join(text.split())


def html_blocks(html: str) -> list[str]:
    parser = _Blocks()
    parser.feed(html)
    parser.close()
    out = []
    for parts in parser.blocks:
        text = "".join(parts)
        if "\x00" in text:
            text = " | ".join(_words(cell) for cell in text.split("\x00")[1:])
        out.append(_words(text))
    return out


def markdown_blocks(markdown: str) -> list[str]:
    """The same blocks read from the Markdown card, inline marks (bold, italics, code)
    dropped; table separator rows and empty header rows skipped."""
    out = []
    for line in markdown.splitlines():
        text = line.strip()
        if not text or re.fullmatch(r"\|( --- \|)+", text):
            continue
        if text.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", text)[1:-1]]
            if not any(cells):
                continue
            text = " | ".join(cells)
        else:
            text = re.sub(r"^(#+|>|-) ", "", text)
            if text.startswith("*") and text.endswith("*") and not text.startswith("**"):
                text = text[1:-1]  # a paragraph in italics
        out.append(_words(text.replace("**", "").replace("`", "")))
    return out


def test_html_card_says_what_the_markdown_says(
    result: training.TrainResult, continuous: training.TrainResult
) -> None:
    for run in (result, continuous, with_pipeline(result, synthetic=False)):
        card = report.model_card_dict(run, **card_args())
        html = report.render_model_card_html(card)
        blocks = html_blocks(html)
        assert blocks == markdown_blocks(report.render_model_card(card))
        assert blocks[0] == "Model card: personalize-stamp"
    (ARTIFACTS / "binary").mkdir(parents=True, exist_ok=True)
    card = report.model_card_dict(result, **card_args())
    (ARTIFACTS / "binary" / "model_card.html").write_text(report.render_model_card_html(card))


def test_html_card_is_a_safe_fragment(result: training.TrainResult) -> None:
    card = report.model_card_dict(result, **card_args())
    card["model"]["name"] = "<script>alert(1)</script>"
    card["limitations"].append('<img src=x onerror="alert(1)"> & more')
    html = report.render_model_card_html(card)
    assert html.startswith('<article class="model-card">')
    assert html.rstrip().endswith("</article>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; more" in html
    tags = _Tags()
    tags.feed(html)
    # plain content elements only: no document, script, style, image or handler
    assert tags.names <= {
        "article", "section", "h2", "h3", "p", "ul", "li", "strong", "em", "code",
        "blockquote", "div", "table", "thead", "tbody", "tr", "th", "td",
    }  # fmt: skip
    assert tags.attributes <= {"class", "scope", "tabindex"}
    sections = re.findall(r"<h3>([^<]+)</h3>", html)
    assert sections[0] == "Intended use" and sections[-1] == "Limitations"
    assert '<blockquote class="synthetic-warning">' in html
    real = report.model_card_dict(with_pipeline(result, synthetic=False), **card_args())
    assert "SYNTHETIC" not in report.render_model_card_html(real)
