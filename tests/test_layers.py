"""Layer grammar and resolution against the real SD1.x / SDXL module layouts."""
from __future__ import annotations

import pytest

from lib_asag.layers import (LayerRef, LayerSpecError, find_self_attention, format_layers, layer_from_module_name,
                             layers_from_module_names, model_family, preset_spec, resolve_layers)
from unet_layouts import SD1_LAYOUT, SDXL_LAYOUT, skeleton


@pytest.fixture(scope="module")
def sd1():
    return list(find_self_attention(skeleton(SD1_LAYOUT)))


@pytest.fixture(scope="module")
def sdxl():
    return list(find_self_attention(skeleton(SDXL_LAYOUT)))


def test_found_layers_match_layouts(sd1, sdxl):
    assert len(sd1) == 16  # 6 input + 1 middle + 9 output transformer blocks
    assert len(sdxl) == 2 * 2 + 2 * 10 + 10 + 3 * 10 + 3 * 2
    assert LayerRef("middle", 0, 0) in sd1 and LayerRef("middle", 0, 9) in sdxl


def test_module_path_round_trips(sdxl):
    model = skeleton(SDXL_LAYOUT)
    names = dict(model.named_modules())
    for ref in sdxl:
        assert ref.module_path in names
        assert layer_from_module_name(ref.module_path) == ref
        assert layer_from_module_name("model.diffusion_model." + ref.module_path) == ref


def test_attn2_and_other_modules_are_ignored():
    assert layer_from_module_name("input_blocks.1.1.transformer_blocks.0.attn2") is None
    assert layer_from_module_name("input_blocks.1.1.transformer_blocks.0.attn1.to_q") is None
    assert layers_from_module_names(["middle_block.1.transformer_blocks.0.attn1", "x.attn1"]) == [
        LayerRef("middle", 0, 0)]


def test_patch_keys_and_names():
    ref = LayerRef("output", 2, 7)
    assert ref.patch_key == ("output", 2, 7)
    assert str(ref) == "output.2.7"
    assert str(LayerRef("middle", 0, 3)) == "middle.3"
    with pytest.raises(ValueError):
        LayerRef("upper", 0, 0)


@pytest.mark.parametrize("spec,expected", [
    ("middle", ["middle.0"]),
    ("mid", ["middle.0"]),
    ("input.7", ["input.7.0"]),
    ("output.3-5", ["output.3.0", "output.4.0", "output.5.0"]),
    ("output.0-4", ["output.3.0", "output.4.0"]),  # 0-2 have no self-attention in SD1.x
    ("input.1, middle ;output.11", ["input.1.0", "middle.0", "output.11.0"]),
    ("input_blocks.8.1.transformer_blocks.0.attn1", ["input.8.0"]),
    ("MIDDLE, middle", ["middle.0"]),
])
def test_resolve_sd1(sd1, spec, expected):
    assert [str(r) for r in resolve_layers(spec, sd1)] == expected


def test_resolve_sdxl_transformer_ranges(sdxl):
    assert [str(r) for r in resolve_layers("middle.2-4", sdxl)] == ["middle.2", "middle.3", "middle.4"]
    assert [str(r) for r in resolve_layers("input.7.9", sdxl)] == ["input.7.9"]
    assert len(resolve_layers("middle", sdxl)) == 10
    assert len(resolve_layers("all", sdxl)) == len(sdxl)


@pytest.mark.parametrize("spec,fragment", [
    ("input.3", "does not exist"),       # SD1.x input block 3 is a downsample
    ("output.12", "does not exist"),
    ("middle.1", "does not exist"),
    ("center", "cannot read"),
    ("input.7.x", "cannot read"),
    ("output.5-3", "backwards"),
    ("middle.0.1", "one number"),
    ("", "no layers given"),
])
def test_bad_specs_have_clear_messages(sd1, spec, fragment):
    with pytest.raises(LayerSpecError, match=fragment):
        resolve_layers(spec, sd1)


def test_unknown_layer_message_lists_what_exists(sd1):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers("input.3", sd1)
    assert "input.1-2,4-5,7-8; middle; output.3-11" in str(err.value)


def test_format_layers_sdxl(sdxl):
    assert format_layers(sdxl) == "input.4-5,7-8; middle; output.0-5"


def test_presets_resolve_in_their_family(sd1, sdxl):
    from lib_asag.layers import PRESETS
    for family, layers in (("sd1", sd1), ("sd2", sd1), ("sdxl", sdxl)):
        for name in PRESETS[family]:
            assert resolve_layers(preset_spec(family, name), layers)
    assert preset_spec("sdxl", "") == "middle"
    assert preset_spec("sd1", "input.7") == "input.7"


def test_model_family_from_host_flags_then_layout(sd1, sdxl):
    class Model:
        def __init__(self, **flags):
            self.__dict__.update(flags)

    assert model_family(Model(is_sdxl=True, is_sd2=False, is_sd1=False), sd1) == "sdxl"  # flags win
    assert model_family(Model(is_sdxl=False, is_sd2=True), sd1) == "sd2"
    assert model_family(Model(is_sd1=True), sdxl) == "sd1"
    assert model_family(Model(), sdxl) == "sdxl"  # no flags (e.g. Forge backend): ten middle blocks
    assert model_family(Model(), sd1) == "sd1"


# --- diffusion transformers --------------------------------------------------------------------------------
# Block names as in the hosts' DiT classes: MMDiT `joint_blocks` (A1111 modules/models/sd3/mmdit.py MMDiT,
# Forge backend/nn/mmditx.py MMDiTX), Flux/Chroma `double_blocks` / `single_blocks` (Forge backend/nn/flux.py
# IntegratedFluxTransformer2DModel, backend/nn/chroma.py IntegratedChromaTransformer2DModel).

def _dit(**counts: int):
    from torch import nn
    model = nn.Module()
    for kind, n in counts.items():
        setattr(model, f"{kind}_blocks", nn.ModuleList(nn.Sequential(nn.Identity()) for _ in range(n)))
    return model


def test_dit_blocks_are_found_by_name():
    sd3 = find_self_attention(_dit(joint=24))
    assert list(sd3) == [LayerRef("joint", i, 0) for i in range(24)]
    flux = find_self_attention(_dit(double=19, single=38))
    assert len(flux) == 57 and LayerRef("single", 37, 0) in flux
    assert layer_from_module_name("model.diffusion_model.joint_blocks.3") == LayerRef("joint", 3, 0)
    assert layer_from_module_name("joint_blocks.3.context_block.attn") is None  # only the block itself
    assert str(LayerRef("double", 4, 0)) == "double.4" and LayerRef("single", 2, 0).module_path == "single_blocks.2"
    with pytest.raises(ValueError):
        LayerRef("joint", 1, 1)


@pytest.mark.parametrize("spec,expected", [
    ("joint.7-9", ["joint.7", "joint.8", "joint.9"]),
    ("joint.0, joint.23", ["joint.0", "joint.23"]),
    ("JOINT.5;joint.5", ["joint.5"]),
    ("joint_blocks.2", ["joint.2"]),
    ("joint", [f"joint.{i}" for i in range(24)]),
])
def test_dit_grammar_mmdit(spec, expected):
    assert [str(r) for r in resolve_layers(spec, find_self_attention(_dit(joint=24)))] == expected


def test_dit_grammar_flux():
    flux = list(find_self_attention(_dit(double=19, single=38)))
    assert [str(r) for r in resolve_layers("double.7-9, single.0", flux)] == ["double.7", "double.8", "double.9",
                                                                             "single.0"]
    assert len(resolve_layers("all", flux)) == 57
    assert len(resolve_layers("single", flux)) == 38


@pytest.mark.parametrize("spec,fragment", [
    ("joint.30", "joint.0-23"),       # out of range: the message lists what the model has
    ("double.1", "joint.0-23"),       # a Flux name on an MMDiT
    ("middle", "joint.0-23"),         # a UNet name on a DiT
    ("joint.1.0", "one number"),      # DiT blocks take no transformer index
])
def test_dit_bad_names_list_the_blocks(spec, fragment):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers(spec, find_self_attention(_dit(joint=24)))
    assert fragment in str(err.value)


def test_unet_names_on_dit_and_dit_names_on_unet_are_refused(sd1):
    with pytest.raises(LayerSpecError, match="middle"):
        resolve_layers("joint.1", sd1)


def test_dit_family_and_default_presets():
    class Model:
        def __init__(self, **flags):
            self.__dict__.update(flags)

    sd3 = list(find_self_attention(_dit(joint=24)))
    flux = list(find_self_attention(_dit(double=19, single=38)))
    assert model_family(Model(), sd3) == "sd3"
    assert model_family(Model(is_sd3=True, is_sdxl=False), []) == "sd3"  # A1111 sd_models.py sets is_sd3
    assert model_family(Model(), flux) == "flux"
    assert model_family(Model(is_chroma=True), flux) == "chroma"
    assert preset_spec("sd3", "") == "joint.7-9"
    assert preset_spec("flux", "") == "double.7-9"
    assert preset_spec("sd1", "") == "middle"
    for family, available in (("sd3", sd3), ("flux", flux), ("chroma", flux)):
        from lib_asag.layers import PRESETS
        for name in PRESETS[family]:
            assert resolve_layers(preset_spec(family, name), available)


# --- what a spec names and the model lacks is reported, not silently clipped (issue 15.3) ---------------------

@pytest.mark.parametrize("spec,chosen,skipped", [
    ("output.0-5", ["output.3.0", "output.4.0", "output.5.0"], ["output.0-2"]),  # SD1.x: no attention in 0-2
    ("input.0-12", ["input.1.0", "input.2.0", "input.4.0", "input.5.0", "input.7.0", "input.8.0"],
     ["input.0,3,6,9-12"]),
    ("input.7.0-2", ["input.7.0"], ["input.7.1-2"]),
    ("middle.0-1, output.11-13", ["middle.0", "output.11.0"], ["output.12-13", "middle.1"]),
    ("middle, output.3-5", ["middle.0", "output.3.0", "output.4.0", "output.5.0"], []),
    ("all", None, []), ("input", None, []), ("input_blocks.8.1.transformer_blocks.0.attn1", ["input.8.0"], []),
])
def test_resolve_reports_what_it_skipped_sd1(sd1, spec, chosen, skipped):
    from lib_asag.layers import resolve
    got = resolve(spec, sd1)
    if chosen is not None:
        assert [str(r) for r in got.layers] == chosen
    assert got.skipped == skipped


def test_resolve_reports_what_it_skipped_sdxl_and_dit(sdxl):
    from lib_asag.layers import resolve
    assert resolve("middle.8-12", sdxl).skipped == ["middle.10-12"]
    assert resolve("input.4-8.1-2", sdxl).skipped == ["input.6", "input.4.2", "input.5.2"]
    flux8 = list(find_self_attention(_dit(double=8, single=38)))  # a Flux variant with 8 double blocks
    got = resolve("double.7-9, single.36-40", flux8)
    assert [str(r) for r in got.layers] == ["double.7", "single.36", "single.37"]
    assert got.skipped == ["double.8-9", "single.38-40"]
    assert resolve("double.7-9", list(find_self_attention(_dit(double=19)))).skipped == []
