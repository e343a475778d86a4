"""The rendered report opens from a file:// URL in headless Chromium: no errors, no network, figures shown.

Uses playwright to drive the system Chromium (Debian ``chromium``; ``.ci/run`` installs it).
The test is skipped only when no Chromium binary can be found.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    explicit = os.environ.get("ANALYSIS_CHROMIUM")
    if explicit:
        return explicit
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary found (apt-get install chromium, "
                                                "or set ANALYSIS_CHROMIUM to its path)"),
]


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    title: str = ""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def _open(browser, path: Path) -> PageLoad:
    out = PageLoad()
    context = browser.new_context(offline=True)
    page = context.new_page()
    page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: out.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: out.failed.append(f"{r.url} ({r.failure})"))
    page.on("request", lambda r: out.requested.append(r.url))

    def block(route) -> None:  # anything not on disk would be a request to another host
        out.blocked.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith(("file://", "data:")), block)
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    out.title = page.title()
    out.images = page.evaluate(
        """() => Array.from(document.images).map(i => {
               const r = i.getBoundingClientRect(); const s = getComputedStyle(i);
               return {complete: i.complete, naturalWidth: i.naturalWidth, width: r.width, height: r.height,
                       visible: s.visibility !== 'hidden' && s.display !== 'none'}; })"""
    )
    out.links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    context.close()
    return out


def _assert_clean(load: PageLoad) -> None:
    assert load.console_errors == [], load.console_errors
    assert load.page_errors == [], load.page_errors
    assert load.failed == [], load.failed
    assert load.blocked == [], load.blocked
    assert all(u.startswith(("file://", "data:")) for u in load.requested), load.requested


def test_index_opens_offline_and_links_every_notebook(browser, small_report: Path) -> None:
    from analysis.report.run import NOTEBOOKS

    load = _open(browser, small_report / "reports" / "index.html")
    NOTEBOOKS = [n for n in NOTEBOOKS if n != "05_spines"]  # the small study has no two-photon images
    _assert_clean(load)
    assert "synapse and microglia report" in load.title.lower()
    for name in NOTEBOOKS:  # reviewer and auditor versions, both on disk
        for target in (small_report / "reports" / f"{name}.html", small_report / "reports" / "audit" / f"{name}.html"):
            assert target.resolve().as_uri() in load.links, target
            assert target.exists()


@pytest.mark.parametrize("html", ["02_synapse_dose_duration.html", "audit/04_validation.html"])
def test_notebook_html_opens_offline_with_visible_figures(browser, small_report: Path, html: str) -> None:
    load = _open(browser, small_report / "reports" / html)
    _assert_clean(load)
    figures = [i for i in load.images if i["width"] > 50]
    assert len(figures) >= 2, load.images
    # the tab shows the notebook's first heading (nbconvert's default title is "Notebook")
    import nbformat

    from analysis.report.run import notebook_title

    source = nbformat.read(Path(__file__).parents[1] / "notebooks" / f"{Path(html).stem}.ipynb", as_version=4)
    expected = notebook_title(source, "")
    assert expected and load.title.startswith(expected), (load.title, expected)
    assert load.title.endswith("(with code)") == html.startswith("audit/")
    for img in load.images:  # every embedded figure decoded and laid out
        assert img["complete"] and img["naturalWidth"] > 0 and img["visible"], img
        assert img["width"] > 0 and img["height"] > 0, img
