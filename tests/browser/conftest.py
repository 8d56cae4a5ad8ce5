"""Headless Chromium against a running WebUI (A1111 or Forge started with its UI).

Skipped unless ASAG_BROWSER_URL names the WebUI (e.g. http://127.0.0.1:7860) and Playwright's Python
package and a Chromium are installed. Playwright drives the system Chromium (ASAG_CHROMIUM, default
`chromium` on PATH); no browser is downloaded. tests/browser/run.sh installs what is needed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

URL_ENV = "ASAG_BROWSER_URL"
CHROMIUM_ENV = "ASAG_CHROMIUM"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 120_000   # first load of the full UI on a slow CPU machine
STEP_TIMEOUT_MS = 20_000  # one click or wait inside the loaded UI


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        pytest.skip(f"{URL_ENV} is not set (URL of a WebUI started with its UI)")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def browser_context() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests/browser/run.sh does)")
    exe = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe or not Path(exe).exists():
        pytest.skip(f"no Chromium found (install the chromium package or set {CHROMIUM_ENV})")
    with tempfile.TemporaryDirectory(prefix="asag-chromium-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1200}, device_scale_factor=1)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, base_url):
    """A fresh tab with the WebUI loaded and its own onUiLoaded scripts run."""
    page = browser_context.new_page()
    # Gradio 4 pages (Forge) load iframeResizer from a CDN in a blocking <script>; offline, that request
    # would hang the page's own scripts. Only the WebUI itself is reached.
    origin = urlsplit(base_url).netloc
    page.route("**/*", lambda route: route.continue_() if urlsplit(route.request.url).netloc in ("", origin)
               else route.abort())
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/", wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
    # The host's inputAccordion.js adds this checkbox to its own hires-fix accordion in onUiLoaded.
    page.wait_for_selector("#txt2img_hr-visible-checkbox", state="attached", timeout=UI_TIMEOUT_MS)
    page.js_errors = errors
    yield page
    page.close()
