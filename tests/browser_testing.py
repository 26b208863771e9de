"""Headless Chromium for the report tests: Debian's ``chromium`` driven by Playwright, with the network cut.

``make test`` installs Debian's chromium when it is missing (``make browser``); without it, or without
Playwright, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest


def chromium_path() -> str:
    """Chromium's executable, or skip the test saying how to get one."""
    path = os.environ.get("TL_FUNCNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no headless browser: Debian's chromium is not installed (`make browser` runs "
                    "`apt-get install chromium`; it failed or was not run here)")
    pytest.importorskip("playwright.sync_api", reason="Playwright (the dev extra) drives the browser")
    return path


@dataclass
class PageLog:
    """What the page said and asked for while it loaded."""

    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page tried to load besides the file


@contextmanager
def open_page(path):
    """Open ``path`` (a local HTML file) offline in headless Chromium; yield ``(page, log)``."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    log = PageLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1100, "height": 900})

            def route(r):
                if r.request.url.startswith(("file:", "data:")):
                    return r.continue_()
                log.requests.append(r.request.url)
                return r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: log.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: log.errors.append(f"page error: {e}"))
            page.goto(f"file://{os.path.abspath(path)}", wait_until="load")
            page.wait_for_timeout(500)  # plotly draws after load
            yield page, log
        finally:
            browser.close()


def rendered(page) -> dict:
    """Counts of what the page shows: plotly figures drawn, images decoded, inline SVG figures, cards."""
    return page.evaluate("""() => ({
        plotly_divs: document.querySelectorAll('.tlfn-plotly').length,
        plotly_drawn: Array.from(document.querySelectorAll('.tlfn-plotly .js-plotly-plot'))
                           .filter(d => d.querySelector('.main-svg') && d._fullData && d._fullData.length > 0).length,
        images: document.images.length,
        broken_images: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,
        svg_figures: document.querySelectorAll('.tlfn-svg svg').length,
        cards: document.querySelectorAll('.tlfn-card').length,
        sections: Array.from(document.querySelectorAll('section.tlfn-section > h2')).map(h => h.textContent),
    })""")
