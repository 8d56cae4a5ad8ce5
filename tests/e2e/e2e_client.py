"""A small client for a running WebUI's /sdapi, and what the server offers (host, model family, UI, ControlNet).

Used by the end-to-end tests only; `requests` and Pillow are imported here, so CI (no WebUI) never needs them.

Environment (all optional):
    ASAG_E2E_CHECKPOINT  checkpoint title sent in every call's override_settings (`sd_model_checkpoint`); the
                         loaded one (/sdapi/v1/options) otherwise
    ASAG_E2E_FAMILY      the model family (sd1, sdxl, sd3, flux, chroma, anima, ...) when the checkpoint name
                         does not say it
    ASAG_E2E_PAYLOAD     JSON object merged into every generation payload, e.g. '{"scheduler": "Simple"}'
    ASAG_E2E_TIMEOUT     seconds per generation request (default 900; Flux on CPU needs more)
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image

TIMEOUT = float(os.environ.get("ASAG_E2E_TIMEOUT") or 900)  # seconds for one generation request on a slow CPU

# Small, fast, deterministic generations: 64 px, 2 steps, Euler, fixed seed (a full-size random SD1.5 takes
# 20-40 s a step on 2 busy CPU cores). At 64 px the SD1.x middle block has a single token, where any
# attention is the identity: tests that need an effect use "all".
BASE = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1234, "steps": 2, "cfg_scale": 5,
        "width": 64, "height": 64, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False,
        # override_settings persist across calls on these hosts: pin what the images depend on every time.
        "override_settings": {"s_min_uncond": 0, "CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True}

# Checkpoint-name hints of each model family, tried in order (the random test models are named after theirs:
# random-sd15, tiny-sdxl, tiny-sd3, random-sd35-large, random-flux1-dev-fp8, random-chroma-fp8, random-anima).
FAMILY_HINTS = (("anima", ("anima", "cosmos")), ("flux2", ("flux2", "flux.2", "klein")), ("flux", ("flux",)),
                ("chroma", ("chroma",)), ("sd3", ("sd3", "stablediffusion3")), ("lumina2", ("lumina", "zimage")),
                ("wan", ("wan2", "wan-", "wan_")), ("qwen_image", ("qwen",)), ("sdxl", ("xl",)))

# What a family's generations need besides BASE (host quirks, not ASAG's). Flux dev is a guidance-distilled model
# run at CFG 1. On the Forge family every DiT (a flow model) gets the "Simple" scheduler: with "Automatic", Euler
# takes k_diffusion/external.py ForgeScheduleLinker.get_sigmas, linspace(t_max, 0, n) in timesteps, whose last
# timestep maps to sigma 0 before the appended 0 (SD3.5, PredictionDiscreteFlow shift 3, 2 steps: 0.9997, 0, 0;
# Anima on ersatzForge: 1.499 ... 0, 0, ../shared/hosts README section 6), so the last step divides by sigma 0 and
# the image is all black (NaN), with or without ASAG, whatever the weights.
FAMILY_PAYLOAD = {"flux": {"cfg_scale": 1, "distilled_cfg_scale": 3.5}}
FORGE_DIT_PAYLOAD = {"scheduler": "Simple"}

DIT_WINDOW = (0.0, 0.99)
"""Start / end sent with ASAG on a diffusion transformer. The family's default window (0.01-0.15 for DiTs in the
family table) holds no step of a 2-step generation, and start 0 with end 1 is read as "the default" (the API
fills those in), so the tests that need ASAG to act name a window of their own."""

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
        self.pinned_checkpoint = os.environ.get("ASAG_E2E_CHECKPOINT", "")
        self.checkpoint = self.pinned_checkpoint or str(options.get("sd_model_checkpoint") or "")
        self.family = os.environ.get("ASAG_E2E_FAMILY") or family_from_checkpoint(self.checkpoint)
        self.controlnet_models = self._controlnet_models()
        self.extra = {**(FORGE_DIT_PAYLOAD if self.host == "forge" and self.is_dit else {}),
                      **FAMILY_PAYLOAD.get(self.family, {}), **json.loads(os.environ.get("ASAG_E2E_PAYLOAD") or "{}")}
        self._layers: tuple[Result, str] | None = None

    # --- the model family and its layers -------------------------------------------------------------------

    @property
    def is_dit(self) -> bool:
        return _family_row(self.family).is_dit

    @property
    def has_scope(self) -> bool:
        """Whether ASAG's two scopes (image, joint) differ on this family (lib_asag.perturb.families)."""
        return bool(getattr(_family_row(self.family), "has_scope", False))

    @property
    def window(self) -> tuple[float, float] | None:
        """The explicit (start, end) sent with ASAG on this model (DIT_WINDOW for DiTs), None = the defaults."""
        return DIT_WINDOW if self.is_dit else None

    def on(self, layers: str = "all", scale: float = 3.0) -> list:
        """Positional args of ASAG on `layers` at `scale`, acting on every step of a short generation."""
        if self.window is None:
            return [True, scale, layers]
        return [True, scale, layers, 3, 1.0, *self.window]

    def args(self, **fields: Any) -> list:
        """Every positional arg (lib_asag.params.ARG_ORDER): `on()`, the defaults for the rest, then `fields`."""
        from lib_asag import params
        values = {name: getattr(params.DEFAULTS, name) for name in params.ARG_ORDER}
        values.update(zip(params.ARG_ORDER, self.on()))
        unknown = set(fields) - set(values)
        if unknown:
            raise KeyError(f"no ASAG args {sorted(unknown)} in this checkout (ARG_ORDER {params.ARG_ORDER})")
        values.update(fields)
        return [values[name] for name in params.ARG_ORDER]

    def on_named(self, **fields: Any) -> dict:
        """The named-object form of `on()`."""
        window = {} if self.window is None else {"start": self.window[0], "end": self.window[1]}
        return {"enabled": True, "scale": 3.0, "layers": "all", **window, **fields}

    def on_keys(self, layers: str = "all", scale: str = "3.0") -> dict[str, str]:
        """The ASAG keys the infotext of an `on(layers)` image carries (non-default fields only)."""
        keys = {"ASAG scale": scale, "ASAG layers": layers}
        if self.window is not None:
            from lib_asag import params
            for name, value in zip(("start", "end"), self.window):
                if value != getattr(params.DEFAULTS, name):
                    keys[params.INFOTEXT_KEYS[name]] = str(value)
        return keys

    @property
    def block_prefixes(self) -> tuple[str, ...]:
        """The family's DiT block prefixes ("joint", "double"/"single", "block", ...), () for UNets."""
        return tuple(_family_row(self.family).blocks)

    def missing_layer(self) -> str:
        """A layer name of this family's grammar that no model has."""
        return f"{(self.block_prefixes or ('input',))[0]}.999"

    def model_layers(self) -> tuple[Result, str]:
        """What the server says the loaded model has: one generation with a layer no model has, whose `ASAG error`
        lists the model's layers ("joint.0-1", "double.0-18; single.0-37", "input.1-2,4-5,7-8; middle; ..."),
        cached. Returns (that generation, the list)."""
        if self._layers is None:
            got = self.txt2img(self.on(self.missing_layer()))
            error = str(got.info.get("extra_generation_params", {}).get("ASAG error", ""))
            match = re.search(r"self-attention in: (.*?)(?:\. Generating| \(|$)", error)
            self._layers = (got, match.group(1) if match else "")
        return self._layers

    def dit_blocks(self) -> list[Any]:
        """The loaded DiT's blocks as lib_asag LayerRefs, from `model_layers()` (UNet layers are left out)."""
        from lib_asag.layers import DIT_BLOCKS, LayerRef
        refs = []
        for part in self.model_layers()[1].split("; "):
            prefix, _, runs = part.partition(".")
            if prefix not in DIT_BLOCKS or not runs:
                continue
            for run in runs.split(","):
                lo, _, hi = run.partition("-")
                refs += [LayerRef(prefix, n, 0) for n in range(int(lo), int(hi or lo) + 1)]
        return refs

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

    def base(self) -> dict:
        """BASE with this server's family payload and pinned checkpoint."""
        body = {**BASE, **self.extra}
        if self.pinned_checkpoint:
            body["override_settings"] = {**body["override_settings"], "sd_model_checkpoint": self.pinned_checkpoint}
        return body

    def payload(self, asag: list | None = None, **kwargs) -> dict:
        return payload(asag, base=self.base(), **kwargs)

    def txt2img(self, asag: list | None = None, **kwargs) -> Result:
        return self.post("/sdapi/v1/txt2img", self.payload(asag, **kwargs))

    def img2img(self, asag: list | None = None, **kwargs) -> Result:
        kwargs.setdefault("width", BASE["width"])
        kwargs.setdefault("init_images", [image_b64(kwargs.get("width", BASE["width"]))])
        kwargs.setdefault("denoising_strength", 0.6)
        return self.post("/sdapi/v1/img2img", self.payload(asag, **kwargs))


def payload(asag: list | None = None, base: dict | None = None, **kwargs) -> dict:
    """BASE (or `base`) + kwargs; `asag` becomes `alwayson_scripts.ASAG.args` (None = no ASAG key at all)."""
    body = {**(BASE if base is None else base), **kwargs}
    scripts = dict(body.pop("alwayson_scripts", {}) or {})
    if asag is not None:
        scripts["ASAG"] = {"args": asag}
    if scripts:
        body["alwayson_scripts"] = scripts
    return body


def family_from_checkpoint(title: str) -> str:
    """The model family a checkpoint title names (FAMILY_HINTS), "sd1" when it names none."""
    name = title.lower().split(" [")[0]  # A1111 titles: "name.safetensors [hash]"
    squeezed = re.sub(r"[\s._-]", "", name)
    for family, hints in FAMILY_HINTS:
        if any(hint in squeezed if hint.isalnum() else hint in name for hint in hints):
            return family
    return "sd1"


def _family_row(family: str) -> Any:
    from lib_asag.perturb.families import FAMILIES
    if family not in FAMILIES:
        raise ValueError(f"ASAG_E2E_FAMILY / checkpoint family {family!r} is none of {', '.join(FAMILIES)}")
    return FAMILIES[family]
