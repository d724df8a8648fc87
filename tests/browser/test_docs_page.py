"""The API documentation and the framing rule in a real browser (Debian's Chromium driven by
Playwright, as test_page.py): `/docs` renders Swagger UI from the service's own files under
its Content-Security-Policy, with no request elsewhere and no policy violation; neither the
clinician page nor the documentation can be put in a frame."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from support.registry import TrainedRegistry
from support.servers import Server, serve

pytestmark = pytest.mark.slow

# every violation of the Content-Security-Policy, as the page reports it
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, trained_registry: TrainedRegistry
) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("docs"), trained_registry) as running:
        yield running


def test_docs_render_from_the_service_alone_under_its_policy(browser: Any, server: Server) -> None:
    context = browser.new_context()
    external: list[str] = []
    errors: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc != urlsplit(server.url).netloc and not url.startswith("data:"):
            external.append(url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", guard)
    page = context.new_page()
    page.add_init_script(WATCH_CSP)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.set_default_timeout(30_000)
    try:
        page.goto(server.url + "/docs")
        path = page.locator(".opblock-summary-path", has_text="/v1/recommendations").first
        path.wait_for()
        assert page.locator(".opblock").count() >= 8  # every operation is listed
        path.click()  # an operation opens: its parameters and responses render
        page.locator(".opblock-body .responses-wrapper").first.wait_for()
        page.locator("section.models").first.wait_for()  # the schemas, Patient among them
        assert "Patient" in page.locator("section.models").inner_text()
        # try an operation: the request goes to the service, its answer is highlighted
        health = page.locator(
            ".opblock", has=page.locator(".opblock-summary-path", has_text="/healthz")
        )
        health.locator(".opblock-summary").click()
        health.locator("button.try-out__btn").click()
        health.locator("button.execute").click()
        health.locator(".responses-wrapper .live-responses-table .highlight-code").wait_for()
        assert '"ok"' in health.locator(".live-responses-table").inner_text()
        assert page.evaluate("window.__violations") == []
        assert external == [], f"requests outside the service: {external}"
        assert errors == [], errors
    finally:
        context.close()


def framed(browser: Any, url: str, *, strip: bool) -> tuple[str, int]:
    """Frame `url` in a document of another origin (data:): the frame's URL and how many
    elements its body shows. `strip`: the service's answer with its framing headers
    removed (the control: what a frame shows when nothing forbids it)."""
    context = browser.new_context()
    if strip:

        def without_framing_rules(route: Any) -> None:
            response = route.fetch()
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower() not in ("content-security-policy", "x-frame-options")
            }
            route.fulfill(response=response, headers=headers)

        context.route(url, without_framing_rules)
    page = context.new_page()
    try:
        page.goto(f"data:text/html,<iframe src='{url}' width=800 height=600></iframe>")
        page.wait_for_timeout(2000)
        (child,) = [f for f in page.frames if f is not page.main_frame]
        return child.url, child.locator("body *").count()
    finally:
        context.close()


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_page_and_the_docs_cannot_be_framed(browser: Any, server: Server, path: str) -> None:
    url = server.url + path
    shown_url, shown = framed(browser, url, strip=True)
    assert shown_url == url and shown > 0  # without the rules, the frame shows the page
    refused_url, refused = framed(browser, url, strip=False)
    assert refused_url != url or refused == 0, (refused_url, refused)
