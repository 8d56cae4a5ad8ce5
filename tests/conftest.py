"""Shared fixtures. The repository root is put on sys.path so `lib_asag` imports as in a WebUI."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "standins"
HOST_PACKAGES = ("modules", "modules_forge", "ldm", "sgm", "ldm_patched", "backend", "k_diffusion",
                 "scripts", "gradio")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _purge_host_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_PACKAGES or name.startswith("lib_asag.host_"):
            del sys.modules[name]


@pytest.fixture
def standins():
    """Put one host's stand-ins first on sys.path: `standins("a1111")` -> tests/standins/a1111.

    Host modules imported during the test are dropped afterwards, so hosts never mix."""
    added: list[str] = []

    def use(host: str) -> Path:
        root = STANDINS / host
        if not root.is_dir():
            raise FileNotFoundError(root)
        _purge_host_modules()
        sys.path.insert(0, str(root))
        added.append(str(root))
        return root

    yield use
    for path in added:
        while path in sys.path:
            sys.path.remove(path)
    _purge_host_modules()
