"""ASAG on Forge Neo's own model classes. Skipped unless ASAG_NEO_PATH names a Neo tree: a folder holding Neo's
`backend/` and `modules_forge/` (Haoming02/sd-webui-forge-classic, branch `neo`, which cannot be cloned here; how
such a tree is put together and from which files is in docs/hosts-forks.md).

neo_real_dit.py runs in its own process with the interpreter ASAG_NEO_PYTHON (else this one; it needs what Neo's
backend imports: torch, einops, psutil, rich, safetensors, diffusers, transformers, torchvision): per case (Flux,
Klein, Chroma, Anima, Lumina 2, Z-Image, Qwen-Image, Wan) the real class with random weights in the real KModel /
UnetPatcher / sampling_function_inner, ASAG's clone and post-CFG function, against an independent float64
reference, both scopes, batched and separate. ASAG_NEO_FAMILIES (comma separated case names) picks cases.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV, PYTHON_ENV, FAMILIES_ENV = "ASAG_NEO_PATH", "ASAG_NEO_PYTHON", "ASAG_NEO_FAMILIES"
DRIVER = Path(__file__).resolve().parent / "neo_real_dit.py"
ROOT = Path(__file__).resolve().parents[2]
TREE = os.environ.get(ENV, "")
CASES = ("flux", "klein", "chroma", "anima", "lumina2", "zimage", "qwen_image", "wan")  # neo_real_dit.CASES

pytestmark = pytest.mark.skipif(not TREE, reason=f"set {ENV} to a Forge Neo tree")


def test_asag_on_forge_neo_model_classes():
    tree = Path(TREE)
    nn = tree / "backend" / "nn"
    if not (nn / "lumina.py").is_file() or (nn / "cosmos_predict2.py").is_file():
        pytest.skip(f"{tree} is not a Forge Neo tree (backend/nn/lumina.py, no cosmos_predict2.py)")
    cases = [f for f in os.environ.get(FAMILIES_ENV, "").split(",") if f]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run = subprocess.run([os.environ.get(PYTHON_ENV) or sys.executable, str(DRIVER), str(tree), str(ROOT), *cases],
                         capture_output=True, text=True, env=env, timeout=1800)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    if run.returncode == 3:
        pytest.skip(f"host dependency missing: {json.loads(last).get('missing')}")
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(last)
    assert report["host"] == "Forge Neo" and report["host_file"].startswith(os.path.abspath(tree))
    assert report["cases"] and all(case["term_max"] > 0 for case in report["cases"])
    assert {case["family"] for case in report["cases"]} == set(cases or CASES)
    print(json.dumps(report, indent=1))
