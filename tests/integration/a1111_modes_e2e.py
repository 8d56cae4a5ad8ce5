"""End to end through a real A1111 WebUI's /sdapi: the same small generations with ASAG, saved as PNGs, so the
batched perturbed pass (default) and the separate call (`ASAG_BATCH=0`, or an older build) can be compared.

    python tests/integration/a1111_modes_e2e.py run http://127.0.0.1:7865 OUT_DIR      # one server, one mode
    python tests/integration/a1111_modes_e2e.py compare DIR_A DIR_B [--max-level 2]    # exit 1 if they differ

Every request sets every setting it depends on (override_settings persist across calls in these builds).
Layouts: plain, AND prompt with weights + batch size 2, batch_cond_uncond off, a negative prompt longer than
the prompt (separate cond/uncond host calls), the same padded (pad_cond_uncond), NGMS (s_min_uncond, odd
steps skip uncond), skip-early-CFG, hires fix, img2img inpainting with a mask, and one without ASAG (the
reference for the size of ASAG's own effect). Which mode ran is in the server log (`ASAG: perturbed pass …`).
"""
from __future__ import annotations

import base64
import io
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = {"batch_cond_uncond": True, "pad_cond_uncond": False, "pad_cond_uncond_v0": False,
            "s_min_uncond": 0.0, "s_min_uncond_all": False, "skip_early_cond": 0.0}
LONG = ", ".join(["blurry, low quality, jpeg artefacts, watermark, text, signature"] * 12)  # > 75 tokens
ASAG = {"ASAG": {"args": [{"enabled": True, "scale": 3.0, "layers": "all"}]}}


def _base(**changes) -> dict:
    body = {"prompt": "a lighthouse on a cliff", "negative_prompt": "", "seed": 77, "width": 64, "height": 64,
            "steps": 4, "cfg_scale": 5.0, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
            "save_images": False, "send_images": True, "alwayson_scripts": ASAG,
            "override_settings": dict(SETTINGS), "override_settings_restore_afterwards": True}
    settings = changes.pop("settings", {})
    body.update(changes)
    body["override_settings"].update(settings)
    return body


def _mask() -> str:
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (0, 0, 64, 32))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _init_image() -> str:
    rng = np.random.default_rng(5)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


CASES = {
    "plain": ("txt2img", _base()),
    "and_weights_batch2": ("txt2img", _base(prompt="a lighthouse :1.0 AND a red boat :0.6", batch_size=2)),
    "no_batch_cond_uncond": ("txt2img", _base(batch_size=2, settings={"batch_cond_uncond": False})),
    "long_negative": ("txt2img", _base(negative_prompt=LONG)),
    "long_negative_padded": ("txt2img", _base(negative_prompt=LONG, settings={"pad_cond_uncond": True})),
    "ngms": ("txt2img", _base(steps=4, settings={"s_min_uncond": 100.0})),
    "skip_early_cfg": ("txt2img", _base(steps=4, settings={"skip_early_cond": 0.5})),
    "hires": ("txt2img", _base(steps=3, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                               hr_second_pass_steps=2, denoising_strength=0.6)),
    "inpaint": ("img2img", _base(init_images=[_init_image()], mask=_mask(), denoising_strength=0.75,
                                 inpainting_fill=1, inpaint_full_res=False)),
    "no_asag": ("txt2img", _base(alwayson_scripts={})),
}


def _post(url: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/sdapi/v1/{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=900) as response:
        return json.loads(response.read())


def run(url: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for name, (route, body) in CASES.items():
        start = time.perf_counter()
        reply = _post(url, route, body)
        infotexts = json.loads(reply["info"])["infotexts"]
        for i, image in enumerate(reply["images"][:body["batch_size"]]):
            (out / f"{name}.{i}.png").write_bytes(base64.b64decode(image))
        report[name] = {"seconds": round(time.perf_counter() - start, 1), "asag": "ASAG scale" in infotexts[0],
                        "infotext": infotexts[0][-160:]}
        print(name, report[name], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    missing = [n for n, r in report.items() if r["asag"] != (n != "no_asag")]
    return 1 if missing else 0


def compare(a: Path, b: Path, max_level: int) -> int:
    worst = 0
    for path in sorted(a.glob("*.png")):
        x = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(b / path.name).convert("RGB"), dtype=np.int16)
        diff = np.abs(x - y)
        case = path.name.split(".")[0]
        effect = ""
        ref = a / "no_asag.0.png"
        if case != "no_asag" and ref.exists() and case in ("plain", "long_negative", "ngms", "skip_early_cfg"):
            r = np.asarray(Image.open(ref).convert("RGB"), dtype=np.int16)
            effect = f"  (ASAG's own effect: max {int(np.abs(x - r).max())}, mean {np.abs(x - r).mean():.2f})"
        print(f"{path.name:28s} max {int(diff.max()):3d}  mean {diff.mean():.4f}  differing {(diff > 0).mean():.4f}{effect}")
        worst = max(worst, int(diff.max()))
    print(f"largest difference: {worst} levels (allowed {max_level})")
    return 0 if worst <= max_level else 1


if __name__ == "__main__":
    if sys.argv[1] == "run":
        sys.exit(run(sys.argv[2], Path(sys.argv[3])))
    level = int(sys.argv[sys.argv.index("--max-level") + 1]) if "--max-level" in sys.argv else 2
    sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3]), level))
