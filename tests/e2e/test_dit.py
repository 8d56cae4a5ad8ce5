"""End to end: ASAG on a diffusion transformer through /sdapi, on any host and DiT family (SD3 in A1111 1.10; SD3.5,
Flux, Chroma in Forge; Anima and the other families of ersatzForge), next to the generic suite (test_api.py etc.,
which runs on DiTs too).

Skipped unless ASAG_E2E_URL names the WebUI and its checkpoint is a DiT (e2e_client.family_from_checkpoint, or
ASAG_E2E_FAMILY). Made for the random-weight test models of ../shared/hosts (2-block SD3 / SD3.5 / Anima, full-depth
Flux / Chroma): the blocks used are the ones the server says the model has (`WebUI.model_layers`, the `ASAG error`
of a block number no model has), so nothing here assumes a depth.

    ../shared/hosts/a1111/run-api.sh <A1111_ROOT> --ckpt <A1111_ROOT>/webui/models/Stable-diffusion/tiny-sd3.safetensors &
    tests/e2e/run.sh http://127.0.0.1:7861 -k dit
"""
from __future__ import annotations

import pytest


def _guided_steps_at_defaults(webui, steps: int) -> bool:
    """Whether the family's default window (lib_asag.params.defaults_for) holds a step of a `steps`-step run."""
    from lib_asag import guidance, params
    defaults = params.defaults_for(webui.family)
    return any(guidance.is_active(i, steps, start=defaults.start, end=defaults.end) for i in range(steps))


def _blocks(webui) -> dict[str, list[int]]:
    """prefix -> block numbers the model has, from the server."""
    out: dict[str, list[int]] = {}
    for ref in webui.dit_blocks():
        out.setdefault(ref.block, []).append(ref.block_id)
    assert out, f"the server named no DiT blocks: {webui.model_layers()[1]!r}"
    return out


def _error(got) -> str:
    return str(got.info.get("extra_generation_params", {}).get("ASAG error", ""))


@pytest.fixture(scope="module")
def blocks(dit):
    return _blocks(dit)


def test_scale_zero_and_disabled_are_the_plain_image(dit, plain):
    """[false, ...] is no ASAG at all; scale 0 runs ASAG (recorded) and adds nothing."""
    prefix = dit.block_prefixes[0]
    off = dit.txt2img([False, 3.0, f"{prefix}.0"])
    assert off.images == plain().images
    zero = dit.txt2img(dit.on(f"{prefix}.0", scale=0.0))
    assert zero.pixels() == plain().pixels()
    assert zero.params().get("ASAG scale") == "0.0", zero.params()


def _layer_cases(webui) -> list[str]:
    """Every block of each kind, the last block alone, and "all"."""
    blocks = _blocks(webui)
    cases = [f"{prefix}.{ids[0]}-{ids[-1]}" for prefix, ids in blocks.items()]
    prefix, ids = next(iter(blocks.items()))
    return cases + [f"{prefix}.{ids[-1]}", "all"]


def test_enabled_on_blocks_changes_the_image(dit, plain, asag):
    for layers in _layer_cases(dit):
        got = asag() if layers == "all" else dit.txt2img(dit.on(layers))
        assert got.status == 200, got.body
        params = got.params()
        assert "ASAG error" not in params, params
        assert {k: v for k, v in params.items() if k.startswith("ASAG")} == dit.on_keys(layers), layers
        assert got.pixels() != plain().pixels(), layers


def test_defaults_alone(dit, plain):
    """`[true]`: the family's default preset and window. A test model too shallow for the preset (SD3's joint.7-9 on a
    2-block MMDiT, Anima's block.7-9 on a 2-block one) gets `ASAG error` naming the preset and the blocks it has, and
    the plain image; a model that has the blocks is guided if the default window holds a step of this run, else says
    that no step was guided."""
    from lib_asag import layers, params as asag_params
    got = dit.txt2img([True])
    assert got.status == 200, got.body
    preset = layers.preset_spec(dit.family, "")
    try:
        layers.resolve(preset, dit.dit_blocks())
        has_preset = True
    except layers.LayerSpecError:
        has_preset = False
    error = _error(got)
    if not has_preset:
        assert got.pixels() == plain().pixels()
        assert "ASAG scale" not in got.params()
        assert "does not exist" in error and f"the {dit.family} default {preset}" in error, error
        assert dit.model_layers()[1] in error, (error, dit.model_layers()[1])
    elif _guided_steps_at_defaults(dit, 2):
        assert "ASAG error" not in got.params() and got.params()["ASAG scale"] == str(asag_params.defaults_for(dit.family).scale)
        assert got.pixels() != plain().pixels()
    else:
        assert got.pixels() == plain().pixels()
        assert "ASAG scale" not in got.params() and "no sampling step" in error, error


def _bad_names(webui) -> dict[str, str]:
    """name -> what the error must say"""
    blocks = _blocks(webui)
    prefix, ids = next(iter(blocks.items()))
    return {f"{prefix}.{ids[-1] + 3}": "does not exist",  # past the last block (a range past it would be a note)
            "middle": "does not exist",  # a UNet name on a DiT
            f"{prefix}.1.0": "one number",  # a DiT block has one attention: no transformer index
            "nonsense.1": "cannot read"}


def test_bad_dit_layer_names_give_the_plain_image_and_the_reason(dit, plain):
    for name, says in _bad_names(dit).items():
        got = dit.txt2img(dit.on(name))
        assert got.status == 200, got.body
        assert got.pixels() == plain().pixels(), name
        assert "ASAG scale" not in got.params(), (name, got.params())
        error = _error(got)
        assert says in error, (name, error)
        if says == "does not exist":
            assert dit.model_layers()[1] in error, (name, error)


def test_range_past_the_last_block_is_a_note(dit, plain, blocks):
    """`<prefix>.<last>-<last+2>`: the existing block runs, the rest is named in `ASAG note`."""
    prefix, ids = next(iter(blocks.items()))
    spec = f"{prefix}.{ids[-1]}-{ids[-1] + 2}"
    got = dit.txt2img(dit.on(spec))
    assert got.status == 200, got.body
    params = got.params()
    assert params.get("ASAG scale") == "3.0" and "ASAG error" not in params, params
    assert f"{prefix}.{ids[-1] + 1}-{ids[-1] + 2}" in params.get("ASAG note", ""), params
    alone = dit.txt2img(dit.on(f"{prefix}.{ids[-1]}"))
    assert got.pixels() == alone.pixels() != plain().pixels()


def test_semicolon_list_in_the_named_form(dit, plain, blocks):
    """The object form of the args, and a ';'-separated list as XYZ cells pass it."""
    prefix, ids = next(iter(blocks.items()))
    spec = "; ".join(f"{prefix}.{i}" for i in ids[:2])
    got = dit.txt2img([dit.on_named(layers=spec)])
    assert got.status == 200, got.body
    assert got.params().get("ASAG layers") == spec, got.params()
    assert got.pixels() != plain().pixels()


@pytest.mark.parametrize("changes", [
    {"batch_size": 2, "sampler_name": "DPM++ 2M"},
    {"sampler_name": "DDIM"},  # A1111: a timesteps sampler (same CFGDenoiser.forward, another inner model)
], ids=["batch 2, DPM++ 2M", "DDIM"])
def test_batch_and_samplers(dit, plain, changes):
    off, on = plain(**changes), dit.txt2img(dit.on(), **changes)
    assert on.status == 200, on.body
    assert len(on.images) == len(off.images) == changes.get("batch_size", 1)
    for i in range(len(on.images)):
        assert on.pixels(i) != off.pixels(i), i
        assert on.params(i).get("ASAG scale") == "3.0" and "ASAG error" not in on.params(i), on.params(i)


def test_scope_image_and_joint(dit, plain, asag):
    """Scope `image` (default: Sinkhorn on the image x image block of the joint attention) and `joint` (all of it)
    both guide; they differ where the family has a joint text+image attention (SD3, Flux, Chroma, ...), and are the
    same image where the perturbed self-attention has image tokens only (Anima, Wan: README, Use)."""
    from lib_asag.params import ARG_ORDER
    if "scope" not in ARG_ORDER:
        pytest.skip("this checkout has no scope arg")
    joint = dit.txt2img(dit.args(scope="joint"))
    assert joint.status == 200, joint.body
    params = joint.params()
    assert params.get("ASAG scope") == "joint" and "ASAG error" not in params, params
    assert "ASAG scope" not in asag().params()  # the default is not written
    assert joint.pixels() != plain().pixels()
    if dit.has_scope:
        assert joint.pixels() != asag().pixels()
    else:
        assert joint.pixels() == asag().pixels()
