"""A small client for a running WebUI's /sdapi, and what the server offers (host, model, UI, ControlNet).

Used by the end-to-end tests only; `requests` and Pillow are imported here, so CI (no WebUI) never needs them.
"""
from __future__ import annotations

import base64
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image

TIMEOUT = 900  # seconds for one generation request on a slow CPU

# Small, fast, deterministic generations: 64 px, 2 steps, Euler, fixed seed (a full-size random SD1.5 takes
# 20-40 s a step on 2 busy CPU cores). At 64 px the SD1.x middle block has a single token, where any
# attention is the identity: tests that need an effect use "all".
BASE = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1234, "steps": 2, "cfg_scale": 5,
        "width": 64, "height": 64, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False,
        # override_settings persist across calls on these hosts: pin what the images depend on every time.
        "override_settings": {"s_min_uncond": 0, "CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True}

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass
class Result:
    status: int
    body: dict
    info: dict = field(default_factory=dict)

    @property
    def images(self) -> list[str]:
        return self.body.get("images") or []

    @property
    def infotexts(self) -> list[str]:
        return self.info.get("infotexts") or []

    def pixels(self, i: int = 0) -> bytes:
        return pixels(self.images[i])

    def params(self, i: int = 0) -> dict[str, str]:
        return parse_infotext(self.infotexts[i])


def pixels(b64: str) -> bytes:
    """Decoded RGB pixels (the PNG bytes also carry the infotext)."""
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def image_b64(size: int = 64, seed: int = 0, *, mask: bool = False) -> str:
    """A deterministic test picture (or a mask: white = repaint the right half) as base64 PNG."""
    if mask:
        img = Image.new("L", (size, size), 0)
        img.paste(255, (size // 2, 0, size, size))
    else:
        img = Image.new("RGB", (size, size))
        img.putdata([((x * 7 + seed) % 256, (y * 5) % 256, ((x ^ y) * 3) % 256) for y in range(size) for x in range(size)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def parse_infotext(text: str) -> dict[str, str]:
    """Last line of an infotext as modules/infotext_utils.py parse_generation_parameters reads it."""
    last = text.strip().split("\n")[-1]
    out = {}
    for k, v in RE_PARAM.findall(last):
        out[k.strip()] = json.loads(v) if v.startswith('"') else v.strip()
    return out


class WebUI:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        r = self._wait_for("/sdapi/v1/cmd-flags")
        flags = r.json()
        if r.status_code != 200:  # Forge dfdcbab6: a ResponseValidationError (500) that still carries the flags
            flags = flags.get("body") or {}
        self.flags = flags
        self.ui = not flags.get("nowebui", False)
        # Forge's cmd-flags include its own backend options; A1111's do not.
        self.host = "forge" if any(k in flags for k in ("always_cpu", "forge_ref_a1111_home", "pin_shared_memory")) else "a1111"
        options = self.get("/sdapi/v1/options")
        self.checkpoint = str(options.get("sd_model_checkpoint") or "")
        self.family = "sdxl" if "xl" in self.checkpoint.lower() else "sd1"
        self.controlnet_models = self._controlnet_models()

    def _wait_for(self, path: str, seconds: float = 600) -> requests.Response:
        """GET, retrying while the server is still starting or busy with an earlier generation."""
        deadline = time.time() + seconds
        while True:
            try:
                # Not the session: Forge answers cmd-flags with a 500 after which its connection is dead.
                return requests.get(self.url + path, timeout=120, headers={"Connection": "close"})
            except requests.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(5)

    def _controlnet_models(self) -> list[str] | None:
        """None when no ControlNet API is served; else the model list (may be empty)."""
        try:
            r = self.session.get(self.url + "/controlnet/model_list", timeout=60)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        return [m for m in r.json().get("model_list", []) if m and m.lower() != "none"]

    def get(self, path: str) -> Any:
        r = self.session.get(self.url + path, timeout=120, headers={"Connection": "close"})
        r.raise_for_status()
        return r.json()

    def post(self, path: str, payload: dict, timeout: float = TIMEOUT) -> Result:
        # json.dumps, not requests' json= (allow_nan=False): NaN must reach the server as Python clients send it.
        r = self.session.post(self.url + path, data=json.dumps(payload), timeout=timeout,
                              headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            body = r.json()
        except ValueError:
            body = {"text": r.text}
        info = {}
        if isinstance(body.get("info"), str):
            try:
                info = json.loads(body["info"])
            except ValueError:
                pass
        return Result(r.status_code, body, info)

    def txt2img(self, asag: list | None = None, **kwargs) -> Result:
        return self.post("/sdapi/v1/txt2img", payload(asag, **kwargs))

    def img2img(self, asag: list | None = None, **kwargs) -> Result:
        kwargs.setdefault("width", BASE["width"])
        kwargs.setdefault("init_images", [image_b64(kwargs.get("width", BASE["width"]))])
        kwargs.setdefault("denoising_strength", 0.6)
        return self.post("/sdapi/v1/img2img", payload(asag, **kwargs))


def payload(asag: list | None = None, **kwargs) -> dict:
    """BASE + kwargs; `asag` becomes `alwayson_scripts.ASAG.args` (None = no ASAG key at all)."""
    body = {**BASE, **kwargs}
    scripts = dict(body.pop("alwayson_scripts", {}) or {})
    if asag is not None:
        scripts["ASAG"] = {"args": asag}
    if scripts:
        body["alwayson_scripts"] = scripts
    return body
