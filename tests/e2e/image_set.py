"""A fixed set of ASAG images from a running WebUI, saved to a folder, and the comparison of two such folders.

For checking that a change of the extension changed no result (issue 16: the lib_asag redesign): save the set
with the old checkout linked as the WebUI's extension, then with the new one (same server build, same
checkpoints, same `ASAG_BATCH`), then compare. Every call sends all 11 ASAG args; an older extension that takes
10 drops the 11th (the host passes the list, the script reads what it knows).

    python tests/e2e/image_set.py save URL FOLDER [--models random-sd15,tiny-sd3]
    python tests/e2e/image_set.py compare FOLDER_A FOLDER_B [--levels 1] [--ignore "ASAG scope"]

`compare` prints, per image, the largest and mean per-channel difference in 8-bit levels and whether the ASAG
infotext fields are equal; it exits 1 when any image differs by more than --levels (default 1) or any ASAG
field differs.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import requests
from PIL import Image, ImageChops

BASE = {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "seed": 77, "steps": 4, "cfg_scale": 5,
        "width": 128, "height": 128, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False,
        "override_settings": {"s_min_uncond": 0, "CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True}

# name -> (payload changes, ASAG args). DiT cases name an explicit window (start 0, end 0.99: before issue 18
# start 0 / end 1 meant every step, after it the family's window) and scope "joint" (the only scope before).
UNET_CASES = {
    "unet-all": ({}, [True, 3.0, "all", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image"]),
    "unet-default": ({}, [True, 3.0, "", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image"]),
    "unet-cosine-rescale": ({}, [True, 5.0, "all", 5, 0.5, 0.0, 0.8, "cosine", 0.5, "same", "image"]),
    "unet-batch2-and": ({"batch_size": 2, "prompt": "a lighthouse AND a ship :0.6"},
                        [True, 3.0, "all", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image"]),
}
DIT_CASES = {
    "dit-all": ({}, [True, 3.0, "all", 3, 1.0, 0.0, 0.99, "constant", 0.0, "same", "joint"]),
    "dit-joint0": ({}, [True, 3.0, "joint.0", 3, 1.0, 0.0, 0.99, "constant", 0.0, "same", "joint"]),
    "dit-batch2-and": ({"batch_size": 2, "prompt": "a lighthouse AND a ship :0.6"},
                       [True, 3.0, "all", 3, 1.0, 0.0, 0.99, "linear", 0.0, "same", "joint"]),
}


def _cases(checkpoint: str) -> dict:
    return DIT_CASES if "sd3" in checkpoint.lower() else UNET_CASES


def save(url: str, folder: Path, models: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": model}, timeout=1800).raise_for_status()
        for name, (changes, asag) in {"plain": ({}, None), **_cases(model)}.items():
            payload = json.loads(json.dumps(BASE))
            payload.update(changes)
            if asag is not None:
                payload["alwayson_scripts"] = {"ASAG": {"args": asag}}
            response = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=1800)
            response.raise_for_status()
            body = response.json()
            info = json.loads(body["info"])
            for i, image in enumerate(body["images"]):
                Image.open(io.BytesIO(base64.b64decode(image))).save(folder / f"{model}-{name}-{i}.png")
            asag_fields = {k: v for k, v in info["extra_generation_params"].items() if k.startswith("ASAG")}
            (folder / f"{model}-{name}.json").write_text(json.dumps(asag_fields, indent=1))
            print(model, name, asag_fields, flush=True)


def compare(a: Path, b: Path, levels: int, ignore: set[str]) -> int:
    bad = 0
    for image_a in sorted(a.glob("*.png")):
        image_b = b / image_a.name
        if not image_b.is_file():
            print(f"{image_a.name}: missing in {b}")
            bad += 1
            continue
        diff = ImageChops.difference(Image.open(image_a).convert("RGB"), Image.open(image_b).convert("RGB"))
        values = list(diff.getdata())
        worst = max(max(px) for px in values)
        mean = sum(sum(px) for px in values) / (3 * len(values))
        fields_a, fields_b = ({k: v for k, v in json.loads((folder / (image_a.name.rsplit("-", 1)[0] + ".json"))
                               .read_text()).items() if k not in ignore} for folder in (a, b))
        same_fields = fields_a == fields_b
        bad += worst > levels or not same_fields
        print(f"{image_a.name}: max {worst}, mean {mean:.3f} levels; ASAG fields "
              f"{'equal' if same_fields else f'differ: {fields_a} vs {fields_b}'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_save = sub.add_parser("save")
    p_save.add_argument("url")
    p_save.add_argument("folder", type=Path)
    p_save.add_argument("--models", default="random-sd15,tiny-sd3")
    p_compare = sub.add_parser("compare")
    p_compare.add_argument("a", type=Path)
    p_compare.add_argument("b", type=Path)
    p_compare.add_argument("--levels", type=int, default=1)
    p_compare.add_argument("--ignore", default="", help="comma-separated infotext keys left out of the comparison "
                           "(e.g. a key the newer extension adds: 'ASAG scope')")
    args = parser.parse_args()
    if args.command == "save":
        save(args.url.rstrip("/"), args.folder, [m for m in args.models.split(",") if m])
        return 0
    return compare(args.a, args.b, args.levels, {k.strip() for k in args.ignore.split(",") if k.strip()})


if __name__ == "__main__":
    sys.exit(main())
