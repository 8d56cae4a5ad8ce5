"""Which WebUI are we running in? Decided by what is importable, without importing it."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def _has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_host() -> str | None:
    """"forge_backend" (Forge 2024-08+), "forge" (Forge/reForge with ldm_patched), "a1111", or None."""
    if _has("modules_forge") and _has("backend"):
        return "forge_backend"
    if _has("ldm_patched"):
        return "forge"
    if _has("modules"):
        return "a1111"
    return None


def get_adapter() -> Any | None:
    """The adapter instance for the running host, or None outside a WebUI."""
    host = detect_host()
    if host is None:
        return None
    module = importlib.import_module("lib_asag.host_a1111" if host == "a1111" else "lib_asag.host_forge")
    return module.Adapter(host) if host != "a1111" else module.Adapter()
