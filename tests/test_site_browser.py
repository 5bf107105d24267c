"""The generated site in headless Chromium (Debian's package, driven by Playwright; no browser download).

Opens the index from disk (file://), filters, opens a model, picks two versions and reads their
config diff, while every request that is not file:// is aborted and recorded (there must be none)
and console errors are collected (there must be none, CSP violations included).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_site import build_registry

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install -y chromium)")


def test_site_in_a_browser(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    from playwright import sync_api  # a test dependency: only a missing chromium skips this test

    from gitops.backends.local import LocalBackend
    from gitops.site.render import build_site

    registry = build_registry(tmp_path_factory.getbasetemp())
    site = tmp_path / "site"
    build_site(registry, LocalBackend(registry), site)

    outside: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def route(r):
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto((site / "index.html").as_uri())
            rows = page.locator("#models tbody tr")
            assert rows.count() == 2
            assert page.locator("#count").inner_text() == "2 of 2 models shown"
            # the stylesheet applied (a CSP or path mistake would leave the default font and colours)
            assert page.evaluate("getComputedStyle(document.querySelector('.badge')).borderRadius") != "0px"

            page.fill("#filter", "digits")
            assert page.locator("#count").inner_text() == "1 of 2 models shown"
            assert page.locator("#models tbody tr:visible").count() == 1
            assert page.locator("#models tbody tr:visible a").first.inner_text() == "digits-mlp"
            page.fill("#filter", "production")  # stages are searchable too
            assert page.locator("#models tbody tr:visible").count() == 2
            page.fill("#filter", "no-such-model")
            assert page.locator("#models tbody tr:visible").count() == 0
            page.fill("#filter", "wine")
            page.screenshot(path=str(tmp_path / "index.png"))

            page.click("a[href='models/wine-mlp.html']")
            page.wait_for_load_state()
            assert page.url.endswith("/models/wine-mlp.html")
            assert page.locator("h1").inner_text().startswith("wine-mlp")
            assert page.locator("#diff-controls").is_visible()
            # defaults: the two newest versions
            assert page.input_value("#diff-a") == "v1.1.0" and page.input_value("#diff-b") == "v2.0.0"
            assert _diff_keys(page) == {"model.hidden_sizes": ("[32]", "[48, 24]", "changed")}

            page.select_option("#diff-a", "v1.0.0")
            page.select_option("#diff-b", "v1.1.0")
            assert _diff_keys(page) == {"train.optimizer.learning_rate": ("0.01", "0.02", "changed")}
            assert "1 key(s) differ between v1.0.0 and v1.1.0" in page.inner_text("#diff-summary")
            page.select_option("#diff-b", "v2.0.0")
            assert set(_diff_keys(page)) == {"model.hidden_sizes", "train.optimizer.learning_rate"}
            page.click("#diff-swap")
            assert page.input_value("#diff-a") == "v2.0.0"
            assert _diff_keys(page)["model.hidden_sizes"][:2] == ("[48, 24]", "[32]")
            page.select_option("#diff-b", "v2.0.0")
            assert "Choose two different versions" in page.inner_text("#diff-summary")
            assert not page.locator("#diff-table").is_visible()

            # charts render as inline SVG with text labels; an old version opens from its link
            assert page.locator("#metrics svg").count() >= 4
            assert page.locator("details[id='v1.0.0']").get_attribute("open") is None
            page.click("#versions a[href='#v1.0.0']")
            page.wait_for_function("document.getElementById('v1.0.0').open")
            assert page.locator("details[id='v1.0.0'] svg").count() == 2
            page.select_option("#diff-a", "v1.0.0")
            page.locator("#compare").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
        finally:
            browser.close()

    assert outside == []
    assert errors == []
    assert (tmp_path / "model.png").stat().st_size > 10_000


def _diff_keys(page) -> dict[str, tuple[str, str, str]]:
    rows = page.locator("#diff-table tbody tr")
    out = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        out[cells.nth(0).inner_text()] = (cells.nth(1).inner_text(), cells.nth(2).inner_text(), cells.nth(3).inner_text())
    return out
