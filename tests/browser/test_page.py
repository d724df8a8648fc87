"""The clinician page in a real browser: Debian's Chromium driven by Playwright for
Python (no browser download), against a real `personalize serve` on loopback serving the
session's trained STAMP champion (the demo cohort, tests/support/registry.py).

Screenshots go to test-artifacts/page/ (git-ignored). PERSONALIZE_UPDATE_SCREENSHOT=1
also copies the result screenshot to docs/img/clinician.png (the README's picture) and the
drivers' waterfall to docs/img/page-waterfall.png (docs/page.md's).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from personalize.service.audit import Database
from personalize.service.auth import create_key, revoke_key
from support.registry import STAMP_MODEL, TrainedRegistry
from support.servers import serve

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "page"
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "clinician.png"
DOCS_WATERFALL = ROOT / "docs" / "img" / "page-waterfall.png"
MODEL = STAMP_MODEL

# A STAMP-shaped patient; the form is filled from this (the preference separately).
PATIENT: dict[str, Any] = {
    "age": 58,
    "sex": "female",
    "bpi_severity": 6.25,
    "bpi_interference": 5.5,
    "odi": 44,
    "mme": 30,
    "pain_duration_years": 12,
    "phq8": 4,
    "gad7": 7,
    "pcs": 24,
    "ffmq_nonjudging": 9,
    "expectancy": 6,
    "sf12_mcs": 42,
    "sf12_pcs": 33,
    "delivery": "remote",
}
PREFERENCE = ("treatment_preference", "CBT")
CARD_SECTIONS = [
    "Intended use",
    "Population",
    "Outcome",
    "Data source",
    "Missing outcomes",
    "Learners compared",
    "Calibration and discrimination per arm",
    "Heterogeneity evidence",
    "Decision rule",
    "Explanations",
    "Subgroup performance",
    "Model checks",
    "Limitations",
]


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Service:
    url: str
    database_url: str
    key: str  # a clinician key

    def api(self, path: str, body: Any = None, key: str | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {key or self.key}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("page")
    page_dir = ROOT / "src" / "personalize" / "service" / "page"
    with serve(root, trained_registry, env={"PERSONALIZE_PAGE_DIR": str(page_dir)}) as server:
        database_url = server.env["PERSONALIZE_DATABASE_URL"]
        db = Database(database_url)
        _, key = create_key(db, "clinician", note="page tests")
        db.dispose()
        yield Service(server.url, database_url, key)


# --------------------------------------------------------------------------- the browser


@dataclass
class Tab:
    """A page in a fresh browser context (its own sessionStorage), with what went wrong."""

    page: Any
    errors: list[str]
    external: list[str]


def open_tab(browser: Any, service: Service, width: int = 1280, height: int = 1000) -> Tab:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    tab = Tab(page, [], [])
    page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            tab.errors.append(msg.text)
            if msg.type == "error" and "401" not in msg.text and "422" not in msg.text
            else None
        ),
    )

    def guard(route: Any) -> None:
        # everything the page loads must come from the service itself
        url = route.request.url
        if urlsplit(url).netloc != urlsplit(service.url).netloc and not url.startswith(
            ("data:", "blob:")
        ):
            tab.external.append(url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", guard)
    page.set_default_timeout(15_000)
    page.goto(service.url + "/")
    return tab


@pytest.fixture
def tab(browser: Any, service: Service) -> Iterator[Tab]:
    opened = open_tab(browser, service)
    yield opened
    try:
        assert opened.errors == [], opened.errors
        assert opened.external == [], f"requests outside the service: {opened.external}"
    finally:
        opened.page.context.close()


def enter_key(page: Any, key: str) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use this key").click()


def fill_patient(page: Any, patient: dict[str, Any], preference: str | None = None) -> None:
    for name, value in patient.items():
        control = page.locator(f'#fields [name="{name}"]')
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(str(value))
        else:
            control.fill(str(value))
    if preference is not None:
        page.locator(f'input[type="radio"][value="{preference}"]').check()


def result_ready(page: Any) -> None:
    page.locator("#result:not([hidden]) #rec-headline").wait_for()


def no_horizontal_scroll(page: Any) -> bool:
    return bool(
        page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        and page.evaluate("document.body.scrollWidth <= window.innerWidth")
    )


def screenshot(page: Any, name: str) -> Path:
    """The whole page, with the viewport as tall as the page so nothing sticky floats."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_timeout(150)  # charts redraw on resize
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


# WCAG 2.x contrast of every visible text node (HTML and SVG) against its backdrop.
CONTRAST_JS = """
() => {
  const parse = (c) => {
    const m = c && c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = (c) => 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  const backdrop = (el) => {
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let out = { r: 255, g: 255, b: 255 };
    for (const c of layers.reverse()) {
      out = { r: c.r * c.a + out.r * (1 - c.a), g: c.g * c.a + out.g * (1 - c.a),
              b: c.b * c.a + out.b * (1 - c.a) };
    }
    return out;
  };
  const failures = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || !el.checkVisibility({ opacityProperty: true })) continue;
    const box = el.getBoundingClientRect();
    if (box.width < 2 || box.height < 2 || el.closest(".visually-hidden, .stale")) continue;
    const style = getComputedStyle(el);
    const svg = el instanceof SVGElement;
    const fg = parse(svg ? style.fill : style.color);
    if (!fg) continue;
    const bg = backdrop(svg ? el.closest("div") : el);
    const [a, b] = [lum(fg), lum(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (parseInt(style.fontWeight, 10) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) {
      failures.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
    }
  }
  return failures;
}
"""


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_without_a_key_the_page_asks_for_one(tab: Tab) -> None:
    page = tab.page
    prompt = page.get_by_role("heading", name="Enter your API key")
    prompt.wait_for()
    assert page.locator("#workspace").is_hidden()
    # the synthetic-data banner needs no key (it comes from the open /readyz)
    banner = page.locator("#synthetic-banner")
    banner.wait_for()
    assert "simulated cohort" in banner.inner_text() and "not for clinical use" in (
        banner.inner_text()
    )
    # the key field has focus; submitting it empty says what is missing, at the field
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.get_by_role("button", name="Use this key").click()
    key_input = page.get_by_label("API key", exact=True)
    assert page.locator("#api-key-error").inner_text() == "Enter the API key."
    assert key_input.get_attribute("aria-invalid") == "true"
    assert "api-key-error" in (key_input.get_attribute("aria-describedby") or "")
    assert page.evaluate("sessionStorage.getItem('personalize.apiKey')") is None
    assert page.evaluate(CONTRAST_JS) == []


@pytest.mark.slow
def test_a_wrong_key_is_explained_and_another_can_be_entered(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, "pz_0123456789abcdef_not-a-real-secret")
    problem = page.locator("#key-problem")
    problem.wait_for()
    text = problem.inner_text()
    assert "did not accept this API key" in text and "revoked" in text
    assert page.get_by_label("API key", exact=True).get_attribute("aria-invalid") == "true"
    assert page.evaluate("sessionStorage.getItem('personalize.apiKey')") is None
    assert page.locator("#workspace").is_hidden()

    enter_key(page, service.key)
    page.locator("#workspace").wait_for()
    assert page.locator("#key-panel").is_hidden()
    assert page.evaluate("sessionStorage.getItem('personalize.apiKey')") == service.key
    # the key is kept for the browser session: a reload goes straight to the form
    page.reload()
    page.locator("#fields input").first.wait_for()
    assert page.locator("#key-panel").is_hidden()


@pytest.mark.slow
def test_a_key_revoked_mid_session_is_explained_and_the_entries_are_kept(
    tab: Tab, service: Service
) -> None:
    db = Database(service.database_url)
    try:
        key_id, key = create_key(db, "clinician", note="revoked in a test")
        page = tab.page
        enter_key(page, key)
        page.locator("#fields input").first.wait_for()
        fill_patient(page, PATIENT, PREFERENCE[1])
        revoke_key(db, key_id)
        page.get_by_role("button", name="Estimate response").click()
        problem = page.locator("#key-problem")
        problem.wait_for()
        assert "revoked" in problem.inner_text()
        assert "entries are kept" in problem.inner_text()
        enter_key(page, service.key)
        page.locator("#workspace").wait_for()
        assert page.locator('#fields [name="age"]').input_value() == "58"
        page.get_by_role("button", name="Estimate response").click()
        result_ready(page)
    finally:
        db.dispose()


@pytest.mark.slow
def test_the_form_comes_from_the_models_schema(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    schema = service.api("/v1/schema")
    fields = [f for f in schema["fields"] if not f["preference"]]
    rendered = page.locator("#fields [name]").evaluate_all("els => els.map(e => e.name)")
    assert rendered == [f["name"] for f in fields]
    for f in fields:
        control = page.get_by_label(f["label"], exact=False).first
        assert control.get_attribute("name") == f["name"]
        if f["type"] == "numeric":
            assert control.get_attribute("type") == "number"
            assert float(control.get_attribute("min")) == f["min"]
            assert float(control.get_attribute("max")) == f["max"]
            assert control.get_attribute("step") == "any"
            hint = page.locator(f"#{control.get_attribute('aria-describedby')}").inner_text()
            assert "Range" in hint and "training data" in hint
        else:
            values = control.locator("option").evaluate_all("os => os.map(o => o.value)")
            assert values == ["", *f["levels"]]
    # the preference is its own group, with the arms and "no preference"
    group = page.get_by_role("group", name="Patient's stated preference")
    assert group.is_visible()
    radios = group.get_by_role("radio")
    assert radios.evaluate_all("rs => rs.map(r => r.value)") == ["", "MBT", "CBT", "none"]
    assert group.get_by_role("radio", name="No preference").get_attribute("value") == "none"
    assert page.get_by_label("Age").get_attribute("aria-describedby") == "field-age-hint"


@pytest.mark.slow
def test_fill_submit_and_read_the_recommendation(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    fill_patient(page, PATIENT, PREFERENCE[1])
    page.get_by_label("Patient reference").fill("MRN-PAGE-0001")
    page.get_by_role("button", name="Estimate response").click()
    result_ready(page)

    expected = service.api("/v1/recommendations", {"patient": dict([*PATIENT.items(), PREFERENCE])})
    headline = page.locator("#rec-headline").inner_text()
    if expected["recommendation_role"] == "either":
        assert headline == "No reliable difference: follow the patient's preference"
    else:
        assert headline == f"{expected['recommendation']} is favoured for this patient"
    assert page.locator(".rationale").inner_text().lower() == expected["rationale"].lower()
    assert "Stated preference: CBT" in page.locator(".recommendation").inner_text()
    assert expected["better_bet"] is None and page.locator(".rec-bet").count() == 0

    # per-arm chart: one bar per arm, the numbers the API gives
    arms_chart = page.locator("#arms-chart svg")
    assert arms_chart.get_attribute("role") == "img"
    assert arms_chart.locator("rect[data-arm]").count() == 2
    label = arms_chart.get_attribute("aria-label") or ""
    for arm, values in expected["arms"].items():
        assert f"{arm} {round(values['probability'] * 100)}%" in label
    # the benefit and its interval
    benefit = expected["benefit"]
    figure = page.locator(".benefit-figure").inner_text()
    assert f"{abs(benefit['estimate']) * 100:.1f} pp" in figure
    assert f"{round(benefit['level'] * 100)}% interval" in figure
    assert page.locator("#benefit-chart svg circle").count() == 1
    # drivers: a signed bar per driver, with the patient's values
    bars = page.locator("#drivers-chart rect[data-feature]")
    assert bars.evaluate_all("rs => rs.map(r => r.dataset.feature)") == [
        d["feature"] for d in expected["drivers"]
    ]
    drivers_label = page.locator("#drivers-chart svg").get_attribute("aria-label") or ""
    for d in expected["drivers"]:
        assert d["direction"] in drivers_label
    # the model block, synthetic, and the live announcement
    model = page.locator("section.model").inner_text()
    assert f"{MODEL}, version" in model and "770 patients" in model and "Synthetic" in model
    assert page.locator("#synthetic-banner").is_visible()
    assert page.locator(".synthetic-inline").is_visible()
    live = page.locator("#result-live")
    assert live.get_attribute("aria-live") == "polite"
    assert live.inner_text().startswith("Estimate ready.")
    assert page.evaluate(CONTRAST_JS) == []

    path = screenshot(page, "clinician-result.png")
    if os.environ.get("PERSONALIZE_UPDATE_SCREENSHOT") or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOT)

    # changing a value marks the estimate as out of date
    # (the field by its role: a label search for "Age" also finds the waterfall's "Average")
    page.get_by_role("spinbutton", name="Age").fill("59")
    assert page.locator("#stale-note").is_visible()


@pytest.mark.slow
def test_a_patient_without_a_preference_is_shown_the_better_bet(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    fill_patient(page, PATIENT, "none")
    page.get_by_role("button", name="Estimate response").click()
    result_ready(page)
    expected = service.api("/v1/recommendations", {"patient": {**PATIENT, PREFERENCE[0]: "none"}})
    assert page.locator(".rationale").inner_text().lower() == expected["rationale"].lower()
    bet = expected["better_bet"]
    if bet is None:  # a recommendation, or no arm favoured with the rule's probability
        assert expected["better_bet_probability"] is None
        assert page.locator(".rec-bet").count() == 0
    else:
        percent = round(expected["better_bet_probability"] * 100)
        article = "an" if str(percent).startswith("8") or percent in (11, 18) else "a"
        assert page.locator(".rec-bet").inner_text() == (
            f"Without a preference, {bet} is the better bet: {article} {percent}% probability "
            "that it "
            "is the better programme for this patient, though not a reliable difference."
        )


def with_a_missing_driver(service: Service) -> tuple[dict[str, Any], dict[str, Any]]:
    """PATIENT without one of their values, chosen so that the value not given is among the
    top drivers, and the API's answer for that patient."""
    for name in PATIENT:
        patient = {k: v for k, v in PATIENT.items() if k != name}
        answer = service.api(
            "/v1/recommendations", {"patient": dict([*patient.items(), PREFERENCE])}
        )
        if any(d["feature"] == name and d["value"] is None for d in answer["drivers"]):
            return patient, answer
    raise AssertionError("no value of PATIENT, left out, is among the top drivers")


# CSP violations as the page sees them (a policy blocks inline styles and scripts)
WATCH_POLICY_JS = """
() => {
  window.__violations = [];
  document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(`${e.violatedDirective}: ${e.blockedURI}`));
}
"""


@pytest.mark.slow
def test_the_waterfall_builds_the_benefit_up_from_the_average(tab: Tab, service: Service) -> None:
    page = tab.page
    page.evaluate(WATCH_POLICY_JS)
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    patient, expected = with_a_missing_driver(service)
    fill_patient(page, patient, PREFERENCE[1])
    page.get_by_role("button", name="Estimate response").click()
    result_ready(page)

    # the API's numbers add up: base value + drivers + other features = benefit
    parts = expected["benefit_parts"]
    drivers = expected["drivers"]
    estimate = expected["benefit"]["estimate"]
    total = parts["base_value"] + sum(d["contribution"] for d in drivers)
    assert abs(total + parts["other_features"] - estimate) <= 1e-9

    chart = page.locator("#drivers-chart svg.waterfall")
    assert chart.get_attribute("role") == "img"
    bars = chart.locator("rect[data-part]")
    assert bars.evaluate_all("rs => rs.map(r => r.dataset.part)") == [
        "base",
        *["driver"] * len(drivers),
        "other",
        "benefit",
    ]
    assert chart.locator("rect[data-feature]").evaluate_all(
        "rs => rs.map(r => r.dataset.feature)"
    ) == [d["feature"] for d in drivers]
    values = [float(v) for v in bars.evaluate_all("rs => rs.map(r => r.dataset.value)")]
    contributions = [d["contribution"] for d in drivers]
    assert values == [parts["base_value"], *contributions, parts["other_features"], estimate]
    # each step starts where the one before ended (a bar under 2 px is drawn 2 px wide)
    boxes = bars.evaluate_all(
        "rs => rs.map(r => [r.x.baseVal.value, r.x.baseVal.value + r.width.baseVal.value])"
    )

    def edges(box: list[float], value: float) -> tuple[float, float]:
        return (box[0], box[1]) if value >= 0 else (box[1], box[0])

    zero, carried = edges(boxes[0], values[0])
    for box, value in zip(boxes[1:-1], values[1:-1], strict=True):
        start, end = edges(box, value)
        assert abs(start - carried) < 2.5
        carried = end
    start, end = edges(boxes[-1], values[-1])
    assert abs(start - zero) < 0.5 and abs(end - carried) < 2.5
    # the rows say what they are, with the numbers
    texts = chart.locator("text").evaluate_all("ts => ts.map(t => t.textContent)")
    for label in ("Average benefit (base value)", "Other features, together"):
        assert label in texts
    assert "Benefit for this patient" in texts
    pp = [f"{v * 100:+.1f} pp".replace("-", "\u2212") for v in values]
    for number in pp:
        assert number.replace("+0.0", "0.0").replace("\u22120.0", "0.0") in texts
    # the driver of a value not given is marked, and the page says what it means
    missing = next(d for d in drivers if d["value"] is None)
    bar = chart.locator(f'rect[data-feature="{missing["feature"]}"]')
    assert bar.get_attribute("data-missing") == "true"
    assert any(t.endswith(": not given") for t in texts)
    note = page.locator("#missing-driver-note")
    assert note.is_visible()
    assert "left empty" in note.inner_text()
    assert "how the model handles a missing value, not a value of this patient" in (
        note.inner_text()
    )
    reading = page.locator("#waterfall-reading").inner_text()
    assert "average benefit" in reading and "other features" in reading
    label = chart.get_attribute("aria-label") or ""
    assert label.startswith("From the average benefit to this patient's: Average benefit")
    # no policy violation, and readable
    assert page.evaluate("window.__violations") == []
    assert page.evaluate(CONTRAST_JS) == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "page-waterfall.png"
    page.locator("section.block:has(#drivers-chart)").screenshot(path=str(path))
    if os.environ.get("PERSONALIZE_UPDATE_SCREENSHOT") or not DOCS_WATERFALL.exists():
        DOCS_WATERFALL.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_WATERFALL)


@pytest.mark.slow
def test_values_outside_the_training_data_are_flagged(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    fill_patient(page, {**PATIENT, "mme": 900})
    page.get_by_label("Age").focus()  # blur the dose field: the client-side hint appears
    note = page.locator("#field-mme-note")
    assert "Outside the training data" in note.inner_text()
    page.get_by_role("button", name="Estimate response").click()
    result_ready(page)
    warnings = page.locator(".warnings").inner_text()
    assert "Opioid dose = 900 MME/day is outside the training data's range" in warnings
    # no preference given: the page says so rather than guessing
    assert "missing" in page.locator(".missing").inner_text()


@pytest.mark.slow
def test_an_invalid_value_shows_the_services_message_at_the_field(
    tab: Tab, service: Service
) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    fill_patient(page, PATIENT, PREFERENCE[1])
    severity = page.get_by_label("BPI pain severity")
    severity.fill("12")
    severity.blur()
    error = page.locator("#field-bpi_severity-error")
    assert error.inner_text() == "Above the highest allowed value, 10."
    assert error.get_attribute("data-source") == "client"

    # the client only hints; the service judges, and its 422 lands at the field
    with page.expect_response(lambda r: r.url.endswith("/v1/recommendations")) as answer:
        page.get_by_role("button", name="Estimate response").click()
    assert answer.value.status == 422
    page.locator('#field-bpi_severity-error[data-source="server"]').wait_for()
    assert error.inner_text() == "Input should be less than or equal to 10."
    assert severity.get_attribute("aria-invalid") == "true"
    assert "field-bpi_severity-error" in (severity.get_attribute("aria-describedby") or "")
    assert page.evaluate("document.activeElement.id") == "field-bpi_severity"
    summary = page.locator("#error-summary")
    assert summary.get_attribute("role") == "alert"
    assert "BPI pain severity (mean of 4 items): Input should be less than or equal to 10" in (
        summary.inner_text()
    )
    assert page.locator("#result").is_hidden()
    assert page.evaluate(CONTRAST_JS) == []
    screenshot(page, "clinician-invalid.png")

    # a value that is not a number never leaves the browser
    age = page.get_by_label("Age")
    age.fill("")
    age.press_sequentially("1e")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.get_by_role("button", name="Estimate response").click()
    assert "Enter a number" in page.locator("#field-age-error").inner_text()
    assert age.get_attribute("aria-invalid") == "true"
    assert not [u for u in requests if u.endswith("/v1/recommendations")]

    # fixed: the errors go, the estimate comes
    age.fill("58")
    severity.fill("6.25")
    page.get_by_role("button", name="Estimate response").click()
    result_ready(page)
    assert page.locator("#error-summary").is_hidden()
    assert severity.get_attribute("aria-invalid") is None
    assert page.locator("#field-bpi_severity-error").is_hidden()


@pytest.mark.slow
def test_phone_width_has_no_horizontal_scroll(browser: Any, service: Service) -> None:
    tab = open_tab(browser, service, width=375, height=812)
    page = tab.page
    try:
        page.get_by_label("API key", exact=True).wait_for()
        assert no_horizontal_scroll(page)
        enter_key(page, service.key)
        page.locator("#fields input").first.wait_for()
        assert no_horizontal_scroll(page)
        fill_patient(page, {**PATIENT, "mme": 900}, PREFERENCE[1])
        page.get_by_role("button", name="Estimate response").click()
        result_ready(page)
        page.wait_for_timeout(400)  # the smooth scroll to the result
        assert no_horizontal_scroll(page)
        # the charts fit the column they are drawn in
        widths = page.evaluate(
            "[...document.querySelectorAll('.chart svg')].map(s => s.getBoundingClientRect().right)"
        )
        assert widths and max(widths) <= 375
        assert page.locator("#result-panel").bounding_box()["width"] <= 375
        screenshot(page, "clinician-phone.png")
        page.get_by_role("button", name="Read the model card").click()
        page.locator("#card-body h3").first.wait_for()
        assert no_horizontal_scroll(page)
        assert tab.errors == [] and tab.external == []
    finally:
        page.context.close()


@pytest.mark.slow
def test_keyboard_only_use(tab: Tab, service: Service) -> None:
    page = tab.page
    keyboard = page.keyboard
    # the key prompt has focus; type the key and press Enter
    page.get_by_label("API key", exact=True).wait_for()
    keyboard.type(service.key)
    keyboard.press("Enter")
    page.locator("#fields input").first.wait_for()
    # focus moves to the first field
    assert page.evaluate("document.activeElement.name") == "age"

    # the tab order follows the form: every field once, in the schema's order
    schema = service.api("/v1/schema")
    names = [f["name"] for f in schema["fields"] if not f["preference"]]
    seen = [page.evaluate("document.activeElement.name")]
    for _ in range(len(names) - 1):
        keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.name"))
    assert seen == names
    # the focus is visible
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement); "
        "return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()"
    )
    assert outline[0] != "none" and outline[1] >= 2

    # fill by keyboard only: numbers typed, choices by arrow keys
    page.get_by_label("Age").focus()
    for name in names:
        value = PATIENT[name]
        if isinstance(value, str):
            keyboard.press("ArrowDown")  # the first choice
        else:
            keyboard.type(str(value))
        keyboard.press("Tab")
    assert page.evaluate("document.activeElement.type") == "radio"  # the preference group
    keyboard.press("ArrowRight")  # Not asked -> MBT
    keyboard.press("ArrowRight")  # -> CBT
    assert page.locator('input[type="radio"][value="CBT"]').is_checked()
    # Enter in a field submits the form
    page.get_by_label("Expected improvement from the programmes").focus()
    keyboard.press("Enter")
    result_ready(page)
    assert page.locator("#result-live").inner_text().startswith("Estimate ready.")

    # onwards to the model card with the keyboard; Escape closes it and focus returns
    for _ in range(10):
        keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "open-card":
            break
    assert page.evaluate("document.activeElement.id") == "open-card"
    keyboard.press("Enter")
    card = page.locator("#card-body")
    card.get_by_role("heading", name=f"Model card: {MODEL}", level=2).wait_for()
    assert "SYNTHETIC DATA" in card.locator("blockquote").first.inner_text()
    assert card.locator("table").count() >= 3
    # the card's sections, as the service's HTML card gives them
    assert card.get_by_role("heading", level=3).all_inner_texts() == CARD_SECTIONS
    assert card.locator("script, style, [style]").count() == 0
    screenshot(page, "model-card.png")
    assert (page.locator("#card-download").get_attribute("href") or "").startswith("blob:")
    assert page.evaluate("document.activeElement.id") == "card-close"
    keyboard.press("Escape")
    assert page.locator("#card-dialog").is_hidden()
    assert page.evaluate("document.activeElement.id") == "open-card"


@pytest.mark.slow
def test_pasted_values_fill_the_form(tab: Tab, service: Service) -> None:
    page = tab.page
    enter_key(page, service.key)
    page.locator("#fields input").first.wait_for()
    page.get_by_text("Paste values instead").click()
    pasted = {**PATIENT, "treatment_preference": "CBT", "shoe_size": 9}
    page.get_by_label("Values to paste").fill(json.dumps(pasted))
    page.get_by_role("button", name="Fill the form").click()
    result = page.locator("#paste-result").inner_text()
    assert "Filled 16 fields." in result and "shoe_size" in result
    assert page.get_by_label("Oswestry Disability Index").input_value() == "44"
    assert page.locator('#fields [name="delivery"]').input_value() == "remote"
    assert page.locator('input[type="radio"][value="CBT"]').is_checked()
    # "label: value" lines work too
    page.get_by_label("Values to paste").fill("Age: 61\nSex: Male\nDepression (PHQ-8): 12")
    page.get_by_role("button", name="Fill the form").click()
    assert "Filled 3 fields." in page.locator("#paste-result").inner_text()
    assert page.get_by_label("Age").input_value() == "61"
    assert page.locator('#fields [name="sex"]').input_value() == "male"


def test_the_page_and_its_assets_are_local() -> None:
    """No CDN: the page references only its own files (the network guard in `tab` checks
    what the browser actually loads)."""
    page_dir = ROOT / "src" / "personalize" / "service" / "page"
    html = (page_dir / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    css = (page_dir / "style.css").read_text()
    assert "url(" not in css and "@import" not in css
    js = (page_dir / "app.js").read_text()
    assert "https://" not in js
    assert [u for u in ("http://",) if u in js.replace("http://www.w3.org/2000/svg", "")] == []
