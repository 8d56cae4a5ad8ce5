"""The Forge adapter on real Forge / reForge code. Skipped unless ASAG_FORGE_PATH names one or more checkouts
(os.pathsep-separated): a folder holding `ldm_patched/` + `modules_forge/` (Forge 2024-02..07, e.g. 33e381f1;
reForge, plus its `modules/`) or `backend/` + `modules_forge/` + `packages_3rdparty/` (Forge 2024-08+, e.g.
dfdcbab6). For example, from the Forge snapshot (`fetch github:lllyasviel/stable-diffusion-webui-forge`):

    git --git-dir=<mirror> archive 33e381f1 ldm_patched modules_forge | tar -x -C <forge-33e381f1>
    git --git-dir=<mirror> archive dfdcbab6 backend modules_forge packages_3rdparty \
        | tar -x -C <forge-dfdcbab6>

Each checkout runs in its own process (forge_real_driver.py): a small random-weight real UNet in the real
UnetPatcher, sampled through the host's real sampling function with ASAG's clone and post-CFG function, compared
with an independent float64 reference: 5 cases with another extension's model_function_wrapper installed (ASAG's
separate perturbed call) and 3 without (perturbed rows batched into the host's one model call); on `backend/`
checkouts also 7 cases on the real Flux, Chroma and SD3.5 (MMDiT-X) transformers, batched and separate, and the
proof-of-perturbation cases (skip_layers, a cached block) (forge_real_dit.py). Host dependencies (psutil, torchsde; reForge: torchdiffeq; backend:
diffusers, transformers, tokenizers, huggingface-hub, gguf's sentencepiece) come from the environment (e.g.
PYTHONPATH), or run the driver with the WebUI's own venv: ASAG_FORGE_PYTHON=/path/to/venv/bin/python. A missing
dependency skips that checkout and names it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = "ASAG_FORGE_PATH"
PYTHON_ENV = "ASAG_FORGE_PYTHON"  # optional: the interpreter for the driver, e.g. the WebUI's own venv python
DRIVER = Path(__file__).resolve().parent / "forge_real_driver.py"
ROOT = Path(__file__).resolve().parents[2]
CHECKOUTS = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]

pytestmark = pytest.mark.skipif(not CHECKOUTS, reason=f"set {ENV} to Forge/reForge checkout folder(s)")


@pytest.mark.parametrize("checkout", CHECKOUTS or ["-"])
def test_asag_on_real_forge_sampling(checkout):
    root = Path(checkout)
    if not ((root / "ldm_patched" / "modules" / "samplers.py").is_file()
            or (root / "backend" / "sampling" / "sampling_function.py").is_file()):
        pytest.skip(f"{root} holds neither ldm_patched/ nor backend/")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    python = os.environ.get(PYTHON_ENV) or sys.executable
    run = subprocess.run([python, str(DRIVER), str(root), str(ROOT)], capture_output=True, text=True,
                         env=env, cwd=str(root), timeout=900)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    if run.returncode == 3:
        pytest.skip(f"{root}: host dependency missing: {json.loads(last).get('missing')}")
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(last)
    assert [case["mode"] for case in report["cases"]] == ["separate"] * 5 + ["batched"] * 3
    if report["host"] == "forge_backend" and isinstance(report["dit"], dict):  # forge_real_dit.py (dfdcbab6)
        assert {case["model"] for case in report["dit"]["cases"]} == {
            "IntegratedFluxTransformer2DModel", "IntegratedChromaTransformer2DModel", "MMDiTX"}
        assert sorted({case["mode"] for case in report["dit"]["cases"]}) == ["batched", "separate"]
        # issue 15.2: skip_layers (MMDiT-X) and a cached block (Flux) turn into a visible ASAG error
        assert len(report["dit"]["not_perturbed"]) == 4
    print(json.dumps(report, indent=1))
