"""README claims reachable over /sdapi: script listing, arg forms, disabled = absent, infotext, png-info, bad
args (HTTP 200, normal image, the reason in the response), what extra args do, batches, AND-prompts, long
negative prompts, hires fix, interrupt / skip."""
from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

import pytest

# ASAG "on" is `webui.on()`: every layer ("all": on a UNet every attn1, an effect well above PNG rounding at 64 px),
# with an explicit start/end on diffusion transformers (e2e_client.DIT_WINDOW).


def _asag_keys(params: dict) -> dict:
    return {k: v for k, v in params.items() if k.startswith("ASAG")}


# --- listing -------------------------------------------------------------------------------------------------

def test_listed_in_scripts_and_script_info(webui):
    scripts = webui.get("/sdapi/v1/scripts")
    assert "asag" in scripts["txt2img"] and "asag" in scripts["img2img"]
    info = [s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "asag"]
    assert sorted(s["is_img2img"] for s in info) == [False, True]
    from lib_asag.params import ARG_ORDER, DEFAULTS
    for s in info:
        assert s["is_alwayson"]
        assert len(s["args"]) == len(ARG_ORDER) == 11
        values = [a["value"] for a in s["args"]]
        assert values == [False, 3.0, "", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image"]  # README's API table
        assert values == [getattr(DEFAULTS, name) for name in ARG_ORDER]


def test_the_plain_image_is_not_blank(webui, plain):
    """Every comparison below needs an image with content: a one-colour plain image (a NaN latent: e.g. a flow model
    sampled with Forge's "Automatic" schedule, which ends on sigma 0 twice) makes "ASAG changes the image" fail for the
    host's reason. Random weights give noise-like images, so more than one colour is all that is asked."""
    got = plain()
    assert len(set(got.pixels())) > 1, f"the plain image is one colour: {got.infotexts[0][-300:]}"


# --- disabled / enabled --------------------------------------------------------------------------------------

@pytest.mark.parametrize("off", [[False, 5.0, "all"], [{"enabled": False, "scale": 5.0}]])
def test_disabled_is_byte_identical_to_no_alwayson_scripts(webui, plain, off):
    got = webui.txt2img(off)
    assert got.status == 200
    assert got.images == plain().images  # the whole PNG: pixels and infotext
    assert got.infotexts == plain().infotexts


def test_enabled_changes_the_image_and_writes_the_infotext(webui, plain, asag):
    got = asag()
    assert got.status == 200, got.body
    assert got.pixels() != plain().pixels()
    assert _asag_keys(got.params()) == webui.on_keys()
    assert got.info["extra_generation_params"]["ASAG scale"] == 3.0


def test_enabled_with_defaults_runs(webui, unet, plain):
    """`[true]`: the default preset (middle) at the defaults; at 128 px the SD1.x middle block has 4 tokens.
    (Diffusion transformers: test_dit.py, where the default preset may name blocks a test model lacks.)"""
    got = webui.txt2img([True], width=128, height=128)
    assert got.status == 200
    assert _asag_keys(got.params()) == {"ASAG scale": "3.0"}
    assert got.pixels() != plain(width=128, height=128).pixels()


PNG_INFO_FIELDS = dict(scale=2.5, iterations=4, epsilon=0.5, adaptive="linear", rescale=0.25, hires="off")


def _png_info_args(webui) -> tuple[list, dict[str, str]]:
    """Args with every field but start/end (the DiT window, e2e_client.DIT_WINDOW) away from its default, and
    the ASAG infotext fields they must give."""
    from lib_asag.params import ARG_ORDER
    fields = dict(PNG_INFO_FIELDS)
    if "scope" in ARG_ORDER and webui.is_dit:
        fields["scope"] = "joint"
    args = webui.args(**fields)
    want = {**webui.on_keys(scale="2.5"), **{f"ASAG {k}": str(v) for k, v in fields.items() if k != "scale"}}
    return args, want


def _png_info(webui, image: str):
    info = webui.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + image})
    assert info.status == 200, info.body
    return info


def test_png_info_returns_the_asag_fields(webui):
    args, want = _png_info_args(webui)
    got = webui.txt2img(args)
    assert got.status == 200
    info = _png_info(webui, got.images[0])
    items = info.body.get("parameters") or {}
    assert {k: str(v) for k, v in items.items() if k.startswith("ASAG")} == want
    assert "ASAG scale: 2.5" in info.body["info"]


def test_png_info_round_trip_regenerates_the_image(webui, asag):
    """What /sdapi/v1/png-info reads back from an ASAG image, sent again as named args: the same pixels."""
    from lib_asag.params import ARG_ORDER
    items = _png_info(webui, asag().images[0]).body.get("parameters") or {}
    fields = {name: items[f"ASAG {name}"] for name in ARG_ORDER if f"ASAG {name}" in items}
    assert "scale" in fields, items
    again = webui.txt2img([{"enabled": True, **fields}])
    assert again.status == 200, again.body
    assert _asag_keys(again.params()) == _asag_keys(asag().params())
    assert again.pixels() == asag().pixels()


@pytest.mark.parametrize("form", ["named", "all", "too many"])
def test_arg_forms_give_the_same_image(webui, asag, form):
    """The named object, every positional arg (11), and two more than the script has: both hosts' /sdapi copy at
    most the script's own number of args (modules/api/api.py init_script_args), so the 12th and 13th are dropped."""
    args = {"named": [webui.on_named()], "all": webui.args(), "too many": webui.args() + ["extra", 7]}[form]
    got = webui.txt2img(args)
    assert got.status == 200
    assert got.pixels() == asag().pixels()
    assert _asag_keys(got.params()) == webui.on_keys()


# --- bad arguments -------------------------------------------------------------------------------------------

BAD = {
    "scale is text": ([True, "lots"], "scale"),
    "unknown name": ([{"enabled": True, "scael": 2}], "scael"),
    "NaN scale": ([True, math.nan], "scale"),
    "epsilon out of range": ([True, 2.0, "", 3, -1.0], "epsilon"),
    "start after end": ([True, 2.0, "", 3, 1.0, 0.8, 0.2], "start"),
    "unknown layer": ([True, 2.0, "output.99"], "output.99"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_args_give_a_normal_image_and_say_why(webui, plain, case):
    args, reason = BAD[case]
    got = webui.txt2img(args)
    if case == "NaN scale" and webui.host == "a1111":
        # A1111's response echoes the request's parameters, and its JSON encoder refuses NaN: an HTTP 500 from
        # the host after the (normal, ASAG-less) image was made. Forge answers 200.
        assert got.status == 500 and "JSON" in str(got.body), got.body
        return
    assert got.status == 200, got.body
    assert got.pixels() == plain().pixels()
    params = got.params()
    assert "ASAG scale" not in params
    assert reason in params.get("ASAG error", ""), params
    assert reason in got.info["extra_generation_params"]["ASAG error"]


def test_layers_the_model_lacks_are_reported(webui, plain):
    """SD1.x output blocks 0-2 have no attention (the README's old example); no SDXL block has 6 transformers; a
    DiT block number past the model's last (the generation that tells the suite which blocks the model has)."""
    if webui.is_dit:
        got, listed = webui.model_layers()
        assert listed, got.info.get("extra_generation_params")
        prefixes = {part.partition(".")[0] for part in listed.split("; ")}
        assert prefixes <= set(webui.block_prefixes), f"{webui.family} has {webui.block_prefixes}; server: {listed}"
    else:
        missing = "middle, output.0" if webui.family != "sdxl" else "input.1.5"
        got = webui.txt2img([True, 2.5, missing])
    assert got.status == 200
    assert got.pixels() == plain().pixels()
    assert "ASAG scale" not in got.params() and "ASAG error" in got.params()
    assert "does not exist" in got.info["extra_generation_params"]["ASAG error"]


def _readme_check() -> str:
    """The README's "did ASAG run?" expression, as its Python example writes it (`asag_ran = ...`)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return re.search(r"^asag_ran = (.+)$", readme, re.M).group(1)


@pytest.mark.parametrize("args,ran", [([True, "x"], False), ([True, 2.0, "", 3, 1.0, 0.8, 0.2], False),
                                      (None, True)], ids=["scale is text", "start after end", "on"])
def test_the_readme_check_tells_whether_asag_ran(webui, args, ran):
    """The error for `[true, "x"]` names the field; the README's check must still say no (issue 15.4)."""
    got = webui.txt2img(args or webui.on())
    assert got.status == 200, got.body
    assert eval(_readme_check(), {"info": got.info}) is ran, got.info.get("extra_generation_params")
    if not ran:
        assert "ASAG scale" not in got.infotexts[0], got.infotexts[0]


def test_args_as_an_object_is_a_host_error(webui):
    """`"args": {...}` (not a list) fails in the host before any extension runs; README shows the list form."""
    got = webui.post("/sdapi/v1/txt2img", {**webui.base(), "alwayson_scripts": {"ASAG": {"args": {"enabled": True}}}})
    assert got.status >= 400


# --- batches, prompts ----------------------------------------------------------------------------------------

def test_batch_size_and_count(webui, plain):
    kw = dict(batch_size=2, n_iter=2)
    base = plain(**kw)
    got = webui.txt2img(webui.on(), **kw)
    assert got.status == 200 and len(got.images) == 4 == len(base.images)
    for i in range(4):
        assert got.pixels(i) != base.pixels(i)
        assert got.params(i)["ASAG scale"] == "3.0"
        assert got.params(i)["Seed"] == base.params(i)["Seed"]


def test_and_prompts(webui, plain):
    kw = dict(prompt="a lighthouse AND a red boat :0.6 AND stormy sea :0.3")
    got = webui.txt2img(webui.on(), **kw)
    assert got.status == 200
    assert got.pixels() != plain(**kw).pixels()
    assert got.params()["ASAG scale"] == "3.0" and "ASAG error" not in got.params()


def test_long_negative_prompt(webui, plain):
    """A negative prompt over 75 tokens: cond and uncond of different lengths (pad_cond_uncond off)."""
    negative = ", ".join(f"blurry artifact number {i}" for i in range(40))
    kw = dict(negative_prompt=negative)
    got = webui.txt2img(webui.on(), **kw)
    assert got.status == 200
    assert got.pixels() != plain(**kw).pixels()
    assert got.params()["ASAG scale"] == "3.0" and "ASAG error" not in got.params()


# --- hires fix -----------------------------------------------------------------------------------------------

def _hires(webui) -> dict:
    modes = [m["name"] for m in webui.get("/sdapi/v1/latent-upscale-modes")]
    # "Latent" on A1111 and Forge; ersatzForge fca12a2 offers only "Latent (antialiased)" and "Latent (NeuralNet)"
    upscaler = "Latent" if "Latent" in modes else next((m for m in modes if "antialiased" in m), modes[0])
    kw = dict(width=64, height=64, enable_hr=True, hr_scale=2, hr_upscaler=upscaler, hr_second_pass_steps=2,
              denoising_strength=0.6)
    if webui.host == "forge":  # Forge's API 500s without it, with or without extensions (shared/hosts README)
        kw["hr_additional_modules"] = ["Use same choices"]
    return kw


def test_hires_fix_same_and_off(webui, plain):
    kw = _hires(webui)
    base = plain(**kw)
    same = webui.txt2img(webui.on(), **kw)
    off = webui.txt2img(webui.args(hires="off"), **kw)
    assert same.status == 200 and off.status == 200, (same.body, off.body)
    assert same.images and len(same.pixels()) == 128 * 128 * 3  # 64 px, hires x2
    assert same.pixels() != base.pixels() and off.pixels() != base.pixels()
    assert same.pixels() != off.pixels()  # "off" left the second pass alone
    assert "ASAG hires" not in same.params() and off.params()["ASAG hires"] == "off"
    assert "ASAG error" not in same.params()


# --- interrupt / skip ----------------------------------------------------------------------------------------

def _stop_midway(webui, endpoint: str, **kw):
    """Start a long ASAG run, call /sdapi/v1/<endpoint> once sampling has begun, return the result."""
    out = {}

    def run():
        out["r"] = webui.txt2img(webui.on(), **kw)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline:
        state = webui.get("/sdapi/v1/progress?skip_current_image=true")["state"]
        if state.get("sampling_step", 0) >= 1:
            break
        time.sleep(0.2)
    webui.session.post(webui.url + f"/sdapi/v1/{endpoint}", timeout=60)
    t.join(600)
    return out["r"]


def test_interrupt_and_skip_leave_nothing_behind(webui, plain, asag):
    """Interrupt, then Skip, in the middle of an ASAG run; afterwards plain and ASAG runs are as before."""
    before_plain, before_asag = plain(), asag()
    for endpoint in ("interrupt", "skip"):
        stopped = _stop_midway(webui, endpoint, steps=12)
        assert stopped.status == 200, (endpoint, stopped.body)
    assert webui.txt2img(None).images == before_plain.images
    assert webui.txt2img(webui.on()).pixels() == before_asag.pixels()
