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

Which Forge of the `backend/` era (lllyasviel's, ersatzForge, Forge Neo) and which commit: forks.py, from
files too; `startup_line()` says it once when the extension loads.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from . import forks

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


_HOST_NAMES = {"forge_backend": "Forge", "forge": "Forge / reForge (ldm_patched)", "a1111": "AUTOMATIC1111"}
_ROOT_PACKAGE = {"forge_backend": "backend", "forge": "ldm_patched", "a1111": "modules"}


def webui_root(host: str) -> str | None:
    """The WebUI folder: the parent of the host's marker package."""
    dirs = _package_dirs(_ROOT_PACKAGE[host])
    return os.path.dirname(os.path.abspath(dirs[0])) if dirs else None


def describe_host(host: str | None = None) -> str:
    """"ersatzForge fca12a28", "Forge Neo (commit unknown: no .git)", "AUTOMATIC1111 82a973c0", ... or why not."""
    host = detect_host() if host is None else host
    if host is None:
        return "no WebUI found (lib_asag outside a WebUI)"
    root = webui_root(host)
    if host == "forge_backend" and root is not None:
        return forks.describe(root)
    commit = forks.commit(root) if root is not None else None
    return f"{_HOST_NAMES[host]} {commit[:8]}" if commit else f"{_HOST_NAMES[host]} (commit unknown: no .git)"


def startup_line() -> str:
    """What the extension says when it loads: the host, the fork and its commit, and what that means."""
    host = detect_host()
    text = f"ASAG: host {describe_host(host)}"
    if host == "forge_backend" and text.find("unrecognised") >= 0:
        text += ("; SD1.x / SD2.x / SDXL and the model families ASAG knows are supported, any other model is "
                 "refused with a message")
    return text


def get_adapter() -> Any | None:
    """The adapter instance for the running host, or None outside a WebUI."""
    host = detect_host()
    if host is None:
        return None
    if host == "a1111":
        return importlib.import_module("lib_asag.hosts.a1111").Adapter()
    return importlib.import_module("lib_asag.hosts.forge").Adapter(host)
