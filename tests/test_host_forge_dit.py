"""Forge's diffusion transformers (lib_asag/perturb/dit.py via hosts/forge.py Adapter) on stand-ins of Forge
dfdcbab6's backend/nn/flux.py, chroma.py and mmditx.py: tiny random models, the host's sampling path.

The reference is independent of the adapter and of lib_asag.sinkhorn: the chosen blocks' instance `forward`
is wrapped to raise a flag, the module's `attention` global is replaced by a float64 Sinkhorn (from
tests/sinkhorn_reference.py; RoPE applied first with the module's own apply_rope for Flux/Chroma) while the flag
is up, and D = D_u + w (D_c - D_u) + s (D_c - D_asag) (D_c + s (D_c - D_asag) at CFG 1)."""
from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

from asag_modes import float_tolerance, record_marks, use_batch_mode
from lib_asag.params import ASAGParams
from sinkhorn_reference import image_only_attention_reference, sinkhorn_attention_reference

B, SIGMA, CFG = 2, 2.5, 5.0
TEXT_TOKENS, IMAGE_TOKENS = 5, 16  # inputs(): 5 context tokens; an 8x8 latent in 2x2 patches
MODULES = {"flux": "backend.nn.flux", "chroma": "backend.nn.chroma", "sd3": "backend.nn.mmditx"}


@pytest.fixture
def forge(standins):
    standins("forge_backend")
    adapter_module = importlib.import_module("lib_asag.hosts.forge")
    yield adapter_module
    adapter_module.Adapter("forge_backend").teardown()


def processing(family: str, seed: int = 0, **kwargs):
    sd_model = importlib.import_module("backend.diffusion_engine.base").tiny_sd_model(family, seed=seed, **kwargs)
    processing_module = importlib.import_module("modules.processing")
    sampler = importlib.import_module("modules.sd_samplers_cfg_denoiser").Sampler(sd_model)
    return processing_module.StableDiffusionProcessing(sd_model, sampler)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g) * SIGMA
    return x, torch.full((B,), SIGMA), torch.randn(B, 5, 8, generator=g), [torch.randn(B, 5, 8, generator=g)]


def run_step(p, cond_scale=CFG, step=1, total=10):
    """One model evaluation at progress step / total (0.1: inside a DiT's default window 0.01-0.15 and 0-1)."""
    denoiser = p.sampler.model_wrap_cfg
    denoiser.step, denoiser.total_steps = step, total
    x, sigma, uncond, cond = inputs()
    with torch.no_grad():
        return denoiser.forward(x, sigma, uncond, cond, cond_scale)


def setup(forge, p, **fields):
    params = ASAGParams(enabled=True, **fields)
    return params, forge.Adapter("forge_backend").setup(p, params)


def blocks_of(model, names):
    tree = dict(model.named_modules())
    return {name: tree[name] for name in names}


def reference_sinkhorn(q, k, v, heads, iterations, epsilon, scope):
    """Float64 on flat (B, N, heads*d): the whole plan, or (scope "image") on a joint text+image call the
    image-only scope with the TEXT_TOKENS text tokens first; an image-only call (MMDiT-X attn2) is whole."""
    if scope == "image" and q.shape[1] == TEXT_TOKENS + IMAGE_TOKENS:
        return image_only_attention_reference(q, k, v, heads, TEXT_TOKENS, iterations, epsilon)
    assert scope == "joint" or q.shape[1] == IMAGE_TOKENS, q.shape
    return sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon)


def reference_attention(module, iterations, epsilon, scope="joint"):
    """Float64 Sinkhorn with the host module's own call convention."""
    if module.__name__ == "backend.nn.mmditx":
        def attention(q, k, v, heads, mask=None):
            k, v = (t.reshape(q.shape[0], -1, q.shape[-1]) for t in (k, v))  # v is (B, N, heads, d) here
            return reference_sinkhorn(q, k, v, heads, iterations, epsilon, scope).to(q.dtype)
        return attention
    apply_rope = sys.modules["backend.nn.flux"].apply_rope

    def attention(q, k, v, pe):
        q, k = apply_rope(q, k, pe)
        b, h, n, d = q.shape
        flat = [t.transpose(1, 2).reshape(b, t.shape[2], h * d) for t in (q, k, v)]
        return reference_sinkhorn(*flat, h, iterations, epsilon, scope).to(q.dtype)

    return attention


def reference_prediction(p, family, params, block_names, cond_scale=CFG):
    unet = p.sd_model.forge_objects_original.unet
    model = unet.model
    calc = importlib.import_module("backend.sampling.sampling_function").calc_cond_uncond_batch
    x, sigma, uncond, cond = inputs()
    cond_list = [{"model_conds": {"c_crossattn": cond[0]}}]
    with torch.no_grad():
        d_c, d_u = calc(model, cond_list, [{"model_conds": {"c_crossattn": uncond}}], x, sigma, unet.model_options)
        module = sys.modules[MODULES[family]]
        original, flag = module.attention, []
        perturbed = reference_attention(module, params.iterations, params.epsilon, params.scope)
        module.attention = lambda *a, **k: (perturbed if flag else original)(*a, **k)
        chosen = blocks_of(model.diffusion_model, block_names).values()
        for block in chosen:
            def forward(*a, _block=block, **k):
                flag.append(1)
                try:
                    return type(_block).forward(_block, *a, **k)
                finally:
                    flag.pop()
            block.forward = forward
        try:
            d_asag, _ = calc(model, cond_list, None, x, sigma, unet.model_options)
        finally:
            module.attention = original
            for block in chosen:
                del block.forward
    guided = d_c if math.isclose(cond_scale, 1.0) else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), guided


def sinkhorn_calls(monkeypatch, model):
    """Record, per model call, in which blocks lib_asag's Sinkhorn attention ran (blocks seen via hooks)."""
    from lib_asag import sinkhorn
    running, seen, handles = [], [], []
    tree = dict(model.diffusion_model.named_modules())
    for name, module in tree.items():
        if name.count(".") == 1 and name.split(".")[0] in ("double_blocks", "single_blocks", "joint_blocks"):
            handles.append(module.register_forward_pre_hook(lambda *_, n=name: running.append(n)))
            handles.append(module.register_forward_hook(lambda *_: None if running.pop() else None))
    for owner, fn in SINKHORN_ENTRIES:
        original = getattr(owner, fn)

        def recording(*a, _original=original, **k):
            seen.append((len(model.calls) - 1, running[-1] if running else None))
            return _original(*a, **k)

        monkeypatch.setattr(owner, fn, recording)
    return seen, handles


def _sinkhorn_entries():
    from lib_asag import joint_scope, sinkhorn
    return ((sinkhorn, "adversarial_sinkhorn_attention"), (sinkhorn, "adversarial_sinkhorn_attention_heads"),
            (joint_scope, "image_only_sinkhorn_attention"), (joint_scope, "image_only_sinkhorn_attention_heads"))


SINKHORN_ENTRIES = _sinkhorn_entries()
"""Every Sinkhorn attention the DiT dispatcher can call: whole joint, and the image-only scope's."""


def patch_sinkhorn(monkeypatch, replacement):
    for owner, fn in SINKHORN_ENTRIES:
        monkeypatch.setattr(owner, fn, replacement)


batch_mode = use_batch_mode


def assert_plain_cfg(got: torch.Tensor, plain: torch.Tensor, mode: str, family: str) -> None:
    """No ASAG term. Separate: the host's own call is the same call, so bit-identical. Batched: the host call ran
    with the perturbed rows appended (3 rows, not 2), so equal within float32 noise."""
    if mode == "separate":
        assert torch.equal(got, plain)
    else:
        torch.testing.assert_close(got, plain, rtol=0, atol=float_tolerance(plain, family))


def assert_host_untouched(p, family):
    module = sys.modules[MODULES[family]]
    assert not getattr(module.attention, "asag", False)
    flux = sys.modules["backend.nn.flux"]
    assert not getattr(flux.attention, "asag", False)
    for block in p.sd_model.forge_objects_original.unet.model.diffusion_model.modules():
        assert not block._forward_hooks and not block._forward_pre_hooks


# ----------------------------------------------------------------------------------------------- selection

@pytest.mark.parametrize("family, spec, expected", [
    ("flux", "all", ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"]),
    ("flux", "double.1, single.0", ["double_blocks.1", "single_blocks.0"]),
    ("chroma", "single.0-1", ["single_blocks.0", "single_blocks.1"]),
    ("sd3", "joint.0", ["joint_blocks.0", "joint_blocks.0"]),  # joint attention and the x-block's attn2
    ("sd3", "joint.1-2", ["joint_blocks.1", "joint_blocks.2"]),
])
@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_chosen_blocks_are_perturbed_on_the_perturbed_rows_only(forge, family, spec, expected, mode, monkeypatch):
    """Separate: Sinkhorn in the extra call only, never in the host's normal call. Batched: one call with the
    cond rows appended, Sinkhorn in the chosen blocks once per attention call (on the appended rows)."""
    batch_mode(monkeypatch, mode)
    p = processing(family)
    _, messages = setup(forge, p, layers=spec)
    assert messages == []
    model = p.sd_model.forge_objects.unet.model
    seen, handles = sinkhorn_calls(monkeypatch, model)
    run_step(p)
    for handle in handles:
        handle.remove()
    if mode == "separate":
        assert [c["cond_or_uncond"] for c in model.calls] == [[0, 1], [0]]
        assert {call for call, _ in seen} == {1}  # the perturbed call only, never the host's normal call
    else:
        assert [c["cond_or_uncond"] for c in model.calls] == [[0, 1, 0]]
        assert {call for call, _ in seen} == {0}
    assert sorted(block for call, block in seen) == sorted(expected)
    assert_host_untouched(p, family)


@pytest.mark.parametrize("family, spec, cond_scale", [
    ("flux", "double.1, single.0", CFG), ("flux", "all", 1.0), ("chroma", "double.0-1", CFG),
    ("chroma", "single.1", 1.0), ("sd3", "joint.0-1", CFG), ("sd3", "joint.2", CFG),
])
@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("scope", ["image", "joint"])
def test_guided_prediction_equals_the_float64_reference(forge, family, spec, cond_scale, mode, scope, caplog,
                                                        monkeypatch):
    batch_mode(monkeypatch, mode)
    caplog.set_level("INFO", logger="asag")
    p = processing(family)
    params, messages = setup(forge, p, layers=spec, scale=2.5, iterations=3, epsilon=0.7, scope=scope)
    assert messages == []
    got = run_step(p, cond_scale=cond_scale)
    model = p.sd_model.forge_objects.unet.model
    calls = [c["cond_or_uncond"] for c in model.calls]
    from lib_asag.layers import find_self_attention, resolve_layers
    refs = resolve_layers(spec, find_self_attention(model.diffusion_model))
    expected, plain = reference_prediction(p, family, params, [r.module_path for r in refs], cond_scale)
    atol = float_tolerance(expected, family)
    assert float((expected - plain).abs().max()) > 100 * atol
    torch.testing.assert_close(got, expected.float(), atol=atol, rtol=1e-4)
    # CFG 1 (Flux dev / schnell): the host computes no uncond, ASAG guides D_c + s (D_c - D_asag); batched,
    # cond and perturbed rows run in one call
    normal = [0] if cond_scale == 1.0 else [0, 1]
    assert calls == ([normal + [0]] if mode == "batched" else [normal, [0]])
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "perturbed pass" in r.getMessage()] == [
        ("INFO", "ASAG: perturbed pass batched with cond/uncond" if mode == "batched"
         else "ASAG: perturbed pass in a separate call (ASAG_BATCH=0)")]
    assert_host_untouched(p, family)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_chroma_swaps_its_own_module_global_not_fluxs(forge, mode, monkeypatch):
    batch_mode(monkeypatch, mode)
    p = processing("chroma")
    setup(forge, p, layers="double.0")
    chroma, flux = sys.modules["backend.nn.chroma"], sys.modules["backend.nn.flux"]
    seen = []
    model = p.sd_model.forge_objects.unet.model
    hook = model.diffusion_model.double_blocks[0].register_forward_pre_hook(
        lambda *_: seen.append((getattr(chroma.attention, "asag", False), getattr(flux.attention, "asag", False))))
    run_step(p)
    hook.remove()
    # separate: the host's call untouched, then ASAG's; batched: the one call with the appended rows
    assert seen == ([(False, False), (True, False)] if mode == "separate" else [(True, False)])


def test_scale_zero_inactive_steps_and_disabled_are_bit_identical(forge):
    plain_p = processing("flux")
    plain = [run_step(plain_p, step=i, total=4) for i in range(4)]
    p = processing("flux")
    setup(forge, p, layers="all", start=0.5)
    got = [run_step(p, step=i, total=4) for i in range(4)]
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1]) and not torch.equal(got[2], plain[2])
    off = processing("flux")
    assert forge.Adapter("forge_backend").setup(off, ASAGParams(enabled=False)) == []
    assert off.sd_model.forge_objects.unet is off.sd_model.forge_objects_original.unet
    assert torch.equal(run_step(off), plain[0])


# ----------------------------------------------------------------------------------------------- failures

@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_failure_inside_the_perturbed_call_restores_the_host_and_falls_back(forge, family, mode, monkeypatch):
    batch_mode(monkeypatch, mode)
    plain = run_step(processing(family))
    p = processing(family)
    p.extra_generation_params["ASAG scale"] = 3.0
    setup(forge, p, layers="all")
    from lib_asag import sinkhorn

    def failing(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    patch_sinkhorn(monkeypatch, failing)
    assert_plain_cfg(run_step(p), plain, mode, family)
    assert_host_untouched(p, family)
    assert "ASAG scale" not in p.extra_generation_params and any("out of memory" in c for c in p.comments)


def test_an_interrupt_inside_the_perturbed_call_propagates_and_restores_the_host(forge, monkeypatch):
    class InterruptProcessingException(Exception):
        pass

    p = processing("chroma")
    setup(forge, p, layers="single.0")
    from lib_asag import sinkhorn

    def interrupted(*a, **k):
        raise InterruptProcessingException()

    patch_sinkhorn(monkeypatch, interrupted)
    with pytest.raises(InterruptProcessingException):
        run_step(p)
    assert_host_untouched(p, "chroma")


def test_perturbed_attention_undoes_everything_on_exceptions(forge):
    from lib_asag.layers import LayerRef
    from lib_asag.perturb import dit
    p = processing("sd3")
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    mmditx = sys.modules["backend.nn.mmditx"]
    original = mmditx.attention
    with pytest.raises(KeyError):
        with dit.perturbed_blocks({LayerRef("joint", 0, 0): model.joint_blocks[0]}, iterations=2,
                                 epsilon=1.0):
            assert mmditx.attention is not original and model.joint_blocks[0]._forward_pre_hooks
            raise KeyError("anything")
    assert mmditx.attention is original
    assert not model.joint_blocks[0]._forward_pre_hooks and not model.joint_blocks[0]._forward_hooks


# ----------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("family, spec, listing", [
    ("flux", "double.7-9", "double.0-1; single.0-1"),  # the Flux preset on a model with 2 + 2 blocks
    ("chroma", "joint.1", "double.0-1; single.0-1"),
    ("sd3", "double.0", "joint.0-2"),
    ("sd3", "middle", "joint.0-2"),
])
def test_bad_layer_names_list_the_models_blocks_and_install_nothing(forge, family, spec, listing):
    p = processing(family)
    shared = p.sd_model.forge_objects.unet
    _, messages = setup(forge, p, layers=spec)
    assert len(messages) == 1 and listing in messages[0] and "without ASAG" in messages[0], messages
    assert p.sd_model.forge_objects.unet is shared and "sampler_post_cfg_function" not in shared.model_options
    assert_host_untouched(p, family)


def test_unknown_transformer_variants_are_refused_with_a_message(forge):
    class OtherBlock(torch.nn.Module):
        def forward(self, x):
            return x

    class OtherDiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.double_blocks = torch.nn.ModuleList([OtherBlock()])

    p = processing("flux", diffusion_model=OtherDiT())
    shared = p.sd_model.forge_objects.unet
    _, messages = setup(forge, p)
    assert len(messages) == 1 and "OtherDiT" in messages[0] and "without ASAG" in messages[0], messages
    assert p.sd_model.forge_objects.unet is shared

    flux_model = processing("flux").sd_model.forge_objects.unet.model.diffusion_model
    flux_model.single_blocks[0] = OtherBlock()  # a known model class with a block ASAG does not know
    p = processing("flux", diffusion_model=flux_model)
    _, messages = setup(forge, p)
    assert len(messages) == 1 and "OtherBlock" in messages[0], messages


# ----------------------------------------------------------------------------------------------- proof of perturbation

@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("spec", ["joint.1", "joint.0-1"])
def test_a_chosen_block_in_skip_layers_is_an_error_not_a_zero_term(forge, spec, mode, monkeypatch, caplog):
    """MMDiT-X honours transformer_options["skip_layers"] (e.g. a skip-layer-guidance extension): a chosen block
    that is skipped runs no Sinkhorn attention, so the term would be 0 while the infotext says `ASAG scale`."""
    batch_mode(monkeypatch, mode)
    p = processing("sd3")
    p.sd_model.forge_objects.unet.model_options["transformer_options"] = {"skip_layers": [1]}
    plain = run_step(p)
    p.extra_generation_params["ASAG scale"] = 3.0  # what the script writes on success
    _, messages = setup(forge, p, layers=spec)
    assert messages == []
    assert_plain_cfg(run_step(p), plain, mode, "sd3")  # no term
    assert "ASAG scale" not in p.extra_generation_params
    error = p.extra_generation_params["ASAG error"]
    assert "joint.1 ran no Sinkhorn attention" in error and "joint.0" not in error, error
    assert any("joint.1" in c for c in p.comments)
    assert_host_untouched(p, "sd3")


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_a_chosen_block_served_from_a_cache_is_an_error(forge, mode, monkeypatch):
    """A first-block-cache / TeaCache-style extension answers a block without running it."""
    batch_mode(monkeypatch, mode)
    p = processing("flux")
    block = p.sd_model.forge_objects.unet.model.diffusion_model.double_blocks[1]
    block.forward = lambda img, txt, vec, pe: (img, txt)  # the cached residual: no attention call
    plain = run_step(p)
    p.extra_generation_params["ASAG scale"] = 3.0
    setup(forge, p, layers="double.1, single.0")
    assert_plain_cfg(run_step(p), plain, mode, "flux")
    assert "ASAG scale" not in p.extra_generation_params
    assert "double.1 ran no Sinkhorn attention" in p.extra_generation_params["ASAG error"]
    del block.forward
    assert_host_untouched(p, "flux")


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_asags_dit_calls_are_marked_for_caching_extensions(forge, mode, monkeypatch):
    batch_mode(monkeypatch, mode)
    p = processing("flux")
    setup(forge, p, layers="double.0")
    seen = record_marks(p.sd_model.forge_objects.unet.model)
    run_step(p)
    assert seen == ([(2 * B, False), (B, True)] if mode == "separate" else [(3 * B, True)])


def test_a_family_without_row_batching_logs_its_only_mode_at_info(forge, monkeypatch, caplog):
    """A family row may say its rows can never share the host's call (families.Family.only_separate): then the
    separate call is not a fallback and is logged at INFO (issue 15.5), and the result is still exact."""
    import dataclasses
    from lib_asag.perturb import families
    row = dataclasses.replace(families.FAMILIES["flux"], only_separate="flux blocks perturb whole calls")
    monkeypatch.setattr(families, "ROWS", tuple(row if r.name == "flux" else r for r in families.ROWS))
    caplog.set_level("INFO", logger="asag")
    p = processing("flux")
    params, messages = setup(forge, p, layers="double.1", scale=2.5, iterations=3, epsilon=0.7)
    assert messages == []
    got = run_step(p)
    assert [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls] == [[0, 1], [0]]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "perturbed pass" in r.getMessage()] == [
        ("INFO", "ASAG: perturbed pass in a separate call (flux blocks perturb whole calls)")]
    expected, _ = reference_prediction(p, "flux", params, ["double_blocks.1"])
    torch.testing.assert_close(got, expected.float(), atol=float_tolerance(expected, "flux"), rtol=1e-4)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_a_family_row_can_keep_some_attention_calls_of_a_chosen_block(forge, mode, monkeypatch):
    """Family.perturbs: where one global serves self- and cross-attention (Cosmos/Anima: only self_attn may
    change), a row says which calls to take over. A predicate that takes none leaves the block unperturbed,
    and the proof of perturbation turns that into an error rather than a zero term."""
    import dataclasses
    from lib_asag.perturb import families
    row = dataclasses.replace(families.FAMILIES["sd3"], perturbs=lambda args, kwargs: False)
    monkeypatch.setattr(families, "ROWS", tuple(row if r.name == "sd3" else r for r in families.ROWS))
    batch_mode(monkeypatch, mode)
    p = processing("sd3")
    plain = run_step(p)
    p.extra_generation_params["ASAG scale"] = 3.0
    setup(forge, p, layers="joint.0")
    assert_plain_cfg(run_step(p), plain, mode, "sd3")
    assert "joint.0 ran no Sinkhorn attention" in p.extra_generation_params["ASAG error"]
    assert_host_untouched(p, "sd3")
