"""A real headless Chromium (Debian's ``chromium``, driven by Playwright) for the inspector tests.

Import the ``page`` fixture into a test module to use it.  Every test's page is saved as
``tests/artifacts/inspector/<test name>.png`` when the test ends, passed or failed, so a failure
can be looked at; an uncaught error in the page's scripts fails the test.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "inspector"

#: how long an expectation waits for the page (joins, fan-out and a stats poll take far less)
UI_WAIT_MS = 10_000

expect.set_options(timeout=UI_WAIT_MS)


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed (scripts/test installs Debian's chromium package)")
    return path


def inspector_url(server: Any, **params: str) -> str:
    from urllib.parse import urlencode

    query = f"?{urlencode(params)}" if params else ""
    return f"{server.http_url}/inspector{query}"


@pytest.fixture
async def page(request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser page; screenshotted into ``tests/artifacts/inspector/`` at the end."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1280, "height": 960})
        pg = await context.new_page()
        page_errors: list[str] = []
        pg.on("pageerror", lambda exc: page_errors.append(str(exc)))
        try:
            yield pg
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            await pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            await browser.close()
        assert page_errors == [], f"uncaught errors in the page: {page_errors}"


def log_entry(pg: Page, kind: str, event: str | None = None) -> Any:
    """The log entries of one kind (and event), newest first."""
    entries = pg.locator(f'[data-testid="log-entry"][data-kind="{kind}"]')
    if event is not None:
        exact = re.compile(f"^{re.escape(event)}$")
        entries = entries.filter(has=pg.locator('[data-testid="log-event"]', has_text=exact))
    return entries
