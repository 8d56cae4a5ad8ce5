"""ASAG together with ControlNet units over /sdapi: Mikubill's sd-webui-controlnet on A1111, Forge's built-in
one (Forge fills its model list only when started with its UI). One and two units, a random-weight model."""
from __future__ import annotations

import pytest

# ASAG on = webui.on(): every attn1 layer (conftest.asag)


@pytest.fixture(scope="module")
def cn(webui):
    if webui.controlnet_models is None:
        pytest.skip("no ControlNet API on this server (/controlnet/model_list)")
    if not webui.controlnet_models:
        pytest.skip("ControlNet has no model here (Forge lists models only when started with its UI)")
    if webui.family != "sd1":
        pytest.skip(f"the ControlNet model here is an SD1.5 one; the checkpoint is {webui.family}")
    model = next((m for m in webui.controlnet_models if "controlnet" in m.lower()), webui.controlnet_models[0])
    module = "None" if webui.host == "forge" else "none"
    return model, module


def _unit(api, model, module, seed):
    return {"enabled": True, "module": module, "model": model, "weight": 1.0, "image": api.image_b64(seed=seed),
            "resize_mode": "Just Resize", "control_mode": "Balanced", "pixel_perfect": False,
            "guidance_start": 0.0, "guidance_end": 1.0}


@pytest.mark.parametrize("units", [1, 2])
def test_asag_with_controlnet_units(webui, api, plain, cn, units):
    model, module = cn
    scripts = {"controlnet": {"args": [_unit(api, model, module, seed) for seed in range(units)]}}
    base = plain()
    control = webui.txt2img(None, alwayson_scripts=scripts)
    both = webui.txt2img(webui.on(), alwayson_scripts=scripts)
    assert control.status == 200 and both.status == 200, (control.body, both.body)
    assert control.pixels() != base.pixels(), "the ControlNet unit had no effect"
    assert both.pixels() != control.pixels(), "ASAG had no effect with ControlNet"
    params = both.params()
    assert params["ASAG scale"] == "3.0" and "ASAG error" not in params, params
    assert sum(k.startswith("ControlNet") for k in params) >= units, params
