"""Where the perturbed pass runs: one adapter per host (a1111.py, forge.py), chosen by what is importable.

The adapters translate host calls only: they decide where the perturbed rows go (batched into the host's
call or in a call of their own), call a perturbation from lib_asag/perturb/ and add the term where the host
combines CFG. Which WebUI is running is decided without importing it:

Only top-level packages are looked up (`importlib.util.find_spec("pkg")` imports nothing; a dotted name
would import its parent), then the package folders are checked for the files each adapter relies on, so
an unrelated package that happens to be called `backend` or `modules` is not mistaken for a WebUI:

- Forge 2024-08+ (`backend/` era, HEAD dfdcbab6): `modules_forge/` and `backend/patcher/base.py`,
  `backend/sampling/sampling_function.py`.
- Forge 2024-02..07 (33e381f1) and reForge: `ldm_patched/modules/model_patcher.py`, `ldm_patched/modules/samplers.py`.
- AUTOMATIC1111: `modules/processing.py` and `modules/sd_samplers_cfg_denoiser.py`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

_MARKERS: dict[str, dict[str, tuple[str, ...]]] = {
    "forge_backend": {"modules_forge": (), "backend": ("patcher/base.py", "sampling/sampling_function.py")},
    "forge": {"ldm_patched": ("modules/model_patcher.py", "modules/samplers.py")},
    "a1111": {"modules": ("processing.py", "sd_samplers_cfg_denoiser.py")},
}


def _package_dirs(name: str) -> list[str]:
    """Folders of a top-level package, from sys.modules if already imported, else from its spec."""
    module = sys.modules.get(name)
    if module is not None:
        return list(getattr(module, "__path__", None) or [])
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return list(spec.submodule_search_locations or [])


def _has_package(name: str, files: tuple[str, ...]) -> bool:
    dirs = _package_dirs(name)
    if not dirs:
        return False
    return all(any(os.path.isfile(os.path.join(d, f)) for d in dirs) for f in files)


def detect_host() -> str | None:
    """"forge_backend" (Forge 2024-08+), "forge" (Forge/reForge with ldm_patched), "a1111", or None."""
    for host, packages in _MARKERS.items():
        if all(_has_package(name, files) for name, files in packages.items()):
            return host
    return None


def get_adapter() -> Any | None:
    """The adapter instance for the running host, or None outside a WebUI."""
    host = detect_host()
    if host is None:
        return None
    if host == "a1111":
        return importlib.import_module("lib_asag.hosts.a1111").Adapter()
    return importlib.import_module("lib_asag.hosts.forge").Adapter(host)
