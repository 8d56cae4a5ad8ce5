"""End-to-end tests against a running WebUI (AUTOMATIC1111 or Forge) with this extension installed.

Skipped unless ASAG_E2E_URL names the WebUI, e.g. `tests/e2e/run.sh http://127.0.0.1:7860`. The suite asks
the server what it offers (host, checkpoint family, UI or --nowebui, ControlNet) and skips what does not
apply there, saying why.
"""
from __future__ import annotations

import os

import pytest

URL = os.environ.get("ASAG_E2E_URL", "")


def pytest_collection_modifyitems(config, items):
    if URL:
        return
    skip = pytest.mark.skip(reason="set ASAG_E2E_URL to a running WebUI (tests/e2e/run.sh URL)")
    for item in items:
        needs_server = {"webui", "api", "plain", "asag", "dit", "unet"} & set(getattr(item, "fixturenames", ()))
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/") and needs_server:
            item.add_marker(skip)


def client():
    """tests/e2e/e2e_client.py, imported only when a WebUI is given (it needs requests and Pillow)."""
    import e2e_client  # tests/e2e is on sys.path: pytest's default "prepend" import mode, no __init__.py
    return e2e_client


@pytest.fixture(scope="session")
def api():
    if not URL:
        pytest.skip("set ASAG_E2E_URL to a running WebUI")
    return client()


@pytest.fixture(scope="session")
def webui():
    if not URL:
        pytest.skip("set ASAG_E2E_URL to a running WebUI")
    server = client().WebUI(URL)
    print(f"\nASAG e2e: {server.url} host={server.host} ui={server.ui} checkpoint={server.checkpoint!r} "
          f"family={server.family} dit={server.is_dit} payload={server.extra} controlnet={server.controlnet_models}")
    return server


def _cached(webui, asag):
    cache = {}

    def get(endpoint: str = "txt2img", **kwargs):
        key = (endpoint, repr(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = getattr(webui, endpoint)(asag, **kwargs)
            assert cache[key].status == 200, cache[key].body
        return cache[key]

    return get


@pytest.fixture(scope="session")
def plain(webui):
    """The reference generation without ASAG (no alwayson_scripts), cached per payload."""
    return _cached(webui, None)


@pytest.fixture(scope="session")
def asag(webui):
    """The generation with ASAG on every layer (`webui.on()`: "all", plus an explicit window on DiTs), cached per
    payload: on a UNet every attn1, an effect well above PNG rounding at 64 px with random weights."""
    return _cached(webui, webui.on())


@pytest.fixture(scope="session")
def dit(webui):
    """The server's model is a diffusion transformer (else the test is skipped)."""
    if not webui.is_dit:
        pytest.skip(f"UNet checkpoint {webui.checkpoint!r} ({webui.family}); this test is for diffusion transformers")
    return webui


@pytest.fixture(scope="session")
def unet(webui):
    """The server's model is a UNet (else the test is skipped)."""
    if webui.is_dit:
        pytest.skip(f"{webui.family} checkpoint {webui.checkpoint!r}: a UNet-only test (UNet layer names or the UNet "
                    "default preset; the DiT counterparts are in test_dit.py)")
    return webui
