"""XYZ plot of ASAG axes through /sdapi (script_name "x/y/z plot"), the axis index looked up in
/sdapi/v1/script-info, in whatever start-up mode the server runs (run the suite once with --nowebui and once
with the UI): one cell per value, the cells differ, each cell's infotext carries its value."""
from __future__ import annotations

import pytest

AXES = {"ASAG scale": ["1", "6"], "ASAG layers": ["middle", "all"], "ASAG iterations": ["0", "5"],
        "ASAG epsilon": ["0.1", "10"], "ASAG scope": ["image", "joint"]}


def _values(webui, axis: str) -> list[str]:
    """The axis values; a DiT's layers axis names two of its blocks ("joint.0, joint.1"), which every model of
    the family has (a cell per block, the cells must differ)."""
    if axis == "ASAG layers" and webui.is_dit:
        prefix = webui.block_prefixes[0]
        return [f"{prefix}.0", f"{prefix}.1"]
    return AXES[axis]


def _xyz(webui, tab: str):
    for script in webui.get("/sdapi/v1/script-info"):
        if script["name"] == "x/y/z plot" and script["is_img2img"] == (tab == "img2img"):
            return script
    pytest.skip("no X/Y/Z plot script on this server")


def test_asag_axes_offered(webui):
    for tab in ("txt2img", "img2img"):
        choices = _xyz(webui, tab)["args"][0]["choices"]
        assert set(AXES) <= set(choices), f"{tab} X type choices lack ASAG axes (ui={webui.ui}): {choices[-6:]}"


def _script_args(info, axis: str, values: list[str]) -> list:
    labels = [a["label"] for a in info["args"]]
    args = [a.get("value") for a in info["args"]]
    # The type dropdowns are type="index": script-info shows their default as a label, the run wants an index.
    args[labels.index("Y type")] = args[labels.index("Z type")] = 0   # "Nothing"
    args[0] = info["args"][0]["choices"].index(axis)                    # X type
    args[1] = ", ".join(f'"{v}"' if "," in v else v for v in values)  # X values
    args[labels.index("Include Sub Images")] = True           # return every cell, not only the grid
    args[labels.index("Draw legend")] = False
    return args


@pytest.mark.parametrize("axis", ["ASAG scale", "ASAG layers", "ASAG scope"])  # all are checked as offered above
def test_xyz_sweep(webui, plain, axis):
    if axis == "ASAG scope" and not webui.has_scope:
        pytest.skip(f"the scope changes only a joint text+image attention; on {webui.family} both scopes are the same "
                    "(README: no effect on UNets, Anima and Wan; Lumina 2 runs joint)")
    info = _xyz(webui, "txt2img")
    if axis not in info["args"][0]["choices"]:
        pytest.fail(f"{axis} not offered by the XYZ script (ui={webui.ui})")
    values = _values(webui, axis)
    base = webui.on("all" if axis != "ASAG layers" else "")
    base[0] = False  # the axis turns ASAG on for its cells
    # A UNet's layers axis runs with no ASAG args at all (the UI's defaults); a DiT needs its window (DIT_WINDOW).
    scripts = {} if axis == "ASAG layers" and not webui.is_dit else {"ASAG": {"args": base}}
    got = webui.txt2img(None, script_name="x/y/z plot", script_args=_script_args(info, axis, values),
                        prompt="a lighthouse at dusk", alwayson_scripts=scripts)
    assert got.status == 200, got.body
    # images: [grid, cell 1, cell 2]; infotexts alike
    cells = list(range(1, len(got.images)))
    assert len(cells) == len(values), (len(got.images), got.infotexts)
    pix = [got.pixels(i) for i in cells]
    assert len(set(pix)) == len(values), "cells are identical"
    if webui.is_dit or axis != "ASAG layers":  # at 64 px an SD1.x "middle" cell is the plain image (one token)
        assert plain().pixels() not in pix, "a cell is the image without ASAG"
    key = axis
    for i, value in zip(cells, values):
        params = got.params(i)
        assert "ASAG error" not in params, params
        if axis == "ASAG scale":
            assert float(params[key]) == float(value)
        elif axis == "ASAG layers":
            assert params[key] == value
        elif axis == "ASAG scope":
            assert params.get(key, "image") == value  # the default (image) is not written
        else:
            assert float(params[key]) == float(value)
            assert params["ASAG layers"] == "all"
