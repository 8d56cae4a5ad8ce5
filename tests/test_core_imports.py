"""The core imports, and the host adapters load, with no WebUI and no gradio importable."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys
    BLOCKED = {"modules", "modules_forge", "ldm", "sgm", "ldm_patched", "backend", "gradio", "k_diffusion"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import lib_asag
    names = [m.name for m in pkgutil.walk_packages(lib_asag.__path__, "lib_asag.")]
    for name in names:
        importlib.import_module(name)
    names = [name.removeprefix("lib_asag.") for name in names]
    from lib_asag.hosts import detect_host, get_adapter
    assert detect_host() is None and get_adapter() is None
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(",".join(sorted(names)))
""")


def test_every_lib_asag_module_imports_without_a_webui():
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT)], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    imported = set(out.stdout.strip().split(","))
    assert {"sinkhorn", "guidance", "params", "layers", "hosts", "hosts.a1111", "hosts.forge", "perturb.dit",
            "perturb.unet", "perturb.families"} <= imported


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (inside functions too), as written (relative: '.name')."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            sep = "" if base.endswith(".") else "."
            found.add(base)
            found.update(f"{base}{sep}{alias.name}" for alias in node.names)
    return found


def test_the_two_axes_stay_apart():
    """What is perturbed (lib_asag/perturb/) never imports a host; where it runs (lib_asag/hosts/) never
    computes attention: no host file reaches the Sinkhorn code or the row split directly."""
    hosts = {"modules", "modules_forge", "ldm", "sgm", "ldm_patched", "backend", "k_diffusion", "gradio"}
    for path in sorted((ROOT / "lib_asag" / "perturb").glob("*.py")):
        leaked = {name for name in _imports(path) if name.split(".")[0] in hosts}
        assert not leaked, (path.name, leaked)
    for path in sorted((ROOT / "lib_asag" / "hosts").glob("*.py")):
        computing = {name for name in _imports(path) if name.endswith(("sinkhorn", "mixed_rows"))}
        assert not computing, (path.name, computing)
