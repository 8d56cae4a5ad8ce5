"""ASAG on ersatzForge's own model classes. Skipped unless ASAG_ERSATZ_PATH names an ersatzForge webui folder
(DenOfEquity/ersatzForge @ fca12a2, e.g. built by ../shared/hosts/ersatzforge/setup.sh: `<root>/webui`).

forks_real_dit.py runs in its own process with the WebUI's interpreter (ASAG_ERSATZ_PYTHON, else
`<webui>/../venv/bin/python` when it exists, else this one): per family (Anima, Flux.2, Lumina 2, Wan, SD3.5,
Chroma, Flux) the real class with random weights in the real KModel / UnetPatcher / sampling_function_inner,
ASAG's clone and post-CFG function, against an independent float64 reference. ASAG_ERSATZ_FAMILIES (comma
separated) picks families; Flux and Chroma are built at full width (1.3 / 2.4 GB, see the driver).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV, PYTHON_ENV, FAMILIES_ENV = "ASAG_ERSATZ_PATH", "ASAG_ERSATZ_PYTHON", "ASAG_ERSATZ_FAMILIES"
DRIVER = Path(__file__).resolve().parent / "forks_real_dit.py"
ROOT = Path(__file__).resolve().parents[2]
WEBUI = os.environ.get(ENV, "")

pytestmark = pytest.mark.skipif(not WEBUI, reason=f"set {ENV} to an ersatzForge webui folder")


def interpreter(webui: Path) -> str:
    venv = webui.parent / "venv" / "bin" / "python"
    return os.environ.get(PYTHON_ENV) or (str(venv) if venv.is_file() else sys.executable)


def test_asag_on_ersatzforge_model_classes():
    webui = Path(WEBUI)
    if not (webui / "backend" / "nn" / "cosmos_predict2.py").is_file():
        pytest.skip(f"{webui} is not an ersatzForge webui folder (no backend/nn/cosmos_predict2.py)")
    families = [f for f in os.environ.get(FAMILIES_ENV, "").split(",") if f]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run = subprocess.run([interpreter(webui), str(DRIVER), str(webui), str(ROOT), *families], capture_output=True,
                         text=True, env=env, timeout=1800)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    if run.returncode == 3:
        pytest.skip(f"host dependency missing: {json.loads(last).get('missing')}")
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(last)
    assert report["cases"] and all(case["term_max"] > 0 for case in report["cases"])
    if any(case["family"] == "anima" for case in report["cases"]):  # ersatzForge's own First Block Cache
        assert report["block_cache"]["sinkhorn_per_step"] == [1, 1, 1]
    print(json.dumps(report, indent=1))
