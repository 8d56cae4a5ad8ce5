"""The A1111 attention patch on the real ldm UNet code (Stability-AI/stablediffusion, which A1111 clones into
repositories/stable-diffusion-stability-ai). Skipped unless ASAG_A1111_PATH names an A1111 checkout or a
stablediffusion checkout (a folder holding ldm/modules/attention.py directly or under that repositories/ path).

A small real UNetModel with random weights is built; the chosen attn1 layers are perturbed with
lib_asag.perturb.unet.patched_attention and compared with an independent float64 Sinkhorn forward installed on
a deep copy. Needs einops (ldm imports it).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

ENV = "ASAG_A1111_PATH"
pytestmark = pytest.mark.skipif(not os.environ.get(ENV), reason=f"set {ENV} to an A1111 or stablediffusion checkout")

_HARNESS = Path(__file__).resolve().parents[1] / "standins" / "a1111" / "asag_harness.py"


def _ldm_root() -> Path:
    base = Path(os.environ[ENV])
    for candidate in (base, base / "repositories" / "stable-diffusion-stability-ai"):
        if (candidate / "ldm" / "modules" / "attention.py").is_file():
            return candidate
    pytest.skip(f"{ENV}={base} holds no ldm/modules/attention.py")


def _purge_ldm() -> None:
    for name in [n for n in sys.modules if n == "ldm" or n.startswith("ldm.")]:
        del sys.modules[name]


@pytest.fixture
def real_ldm():
    pytest.importorskip("einops")
    root = str(_ldm_root())
    _purge_ldm()
    sys.path.insert(0, root)
    try:
        from ldm.modules import attention
        from ldm.modules.diffusionmodules import openaimodel
        assert Path(attention.__file__).is_relative_to(root)
        yield types.SimpleNamespace(attention=attention, openaimodel=openaimodel)
    finally:
        sys.path.remove(root)
        _purge_ldm()


def _harness():
    spec = importlib.util.spec_from_file_location("asag_harness_real", _HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _unet(openaimodel, seed=0):
    torch.manual_seed(seed)
    unet = openaimodel.UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32,
                                 attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=(1, 2),
                                 num_head_channels=8, use_spatial_transformer=True, transformer_depth=1,
                                 context_dim=32, use_linear_in_transformer=True, legacy=False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # the real init zeroes proj_out and the output conv; make every layer matter
        for name, param in unet.named_parameters():
            std = 0.5 if ".attn1.to_" in name else 0.1  # sharp self-attention, so its replacement shows
            param.copy_(torch.randn(param.shape, generator=g) * std)
    return unet


def _sdp_forward(self, x, context=None, mask=None, **kwargs):
    """Shaped like A1111's scaled_dot_product_attention_forward (modules/sd_hijack_optimizations.py)."""
    ctx = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
    b, n, inner = q.shape
    split = lambda t: t.reshape(b, -1, self.heads, inner // self.heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return self.to_out(out.transpose(1, 2).reshape(b, n, inner))


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 20.0]), torch.randn(2, 7, 32, generator=g)


def test_real_ldm_layer_paths_and_attributes(real_ldm):
    from lib_asag import layers
    found = layers.find_self_attention(_unet(real_ldm.openaimodel))
    assert found and {ref.block for ref in found} == {"input", "middle", "output"}
    for ref, module in found.items():
        assert isinstance(module, real_ldm.attention.CrossAttention), ref.module_path
        assert module.heads * (module.to_q.out_features // module.heads) == module.to_q.out_features
        assert isinstance(module.to_out, torch.nn.Sequential)


@pytest.mark.parametrize("optimised", [False, True])
def test_real_ldm_perturbed_pass_matches_reference(real_ldm, monkeypatch, optimised):
    from lib_asag import layers
    from lib_asag.perturb import unet as perturb_unet
    H = _harness()
    if optimised:  # A1111 swaps CrossAttention.forward on the class (sd_hijack_optimizations.SdOptimization*)
        monkeypatch.setattr(real_ldm.attention.CrossAttention, "forward", _sdp_forward)
    unet = _unet(real_ldm.openaimodel)
    found = layers.find_self_attention(unet)
    chosen = layers.resolve_layers("middle, output.1", found)
    x, t, context = _inputs()
    with torch.no_grad():
        plain = unet(x, t, context=context)
        with perturb_unet.patched_attention({ref: found[ref] for ref in chosen}, iterations=3, epsilon=0.8):
            perturbed = unet(x, t, context=context)
        after = unet(x, t, context=context)

        reference_model = copy.deepcopy(unet)
        modules = dict(reference_model.named_modules())
        for ref in chosen:
            modules[ref.module_path].forward = types.MethodType(H.sinkhorn_reference_forward(3, 0.8),
                                                                 modules[ref.module_path])
        expected = reference_model(x, t, context=context)

    assert torch.equal(plain, after)
    assert not [n for n, m in unet.named_modules() if "forward" in m.__dict__]
    assert (perturbed - plain).abs().max() > 1e-3
    torch.testing.assert_close(perturbed, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimised", [False, True])
def test_real_ldm_batched_rows_match_separate_calls(real_ldm, monkeypatch, optimised):
    """The batched mode's patch on the real UNet: one call of rows [cond | perturbed | uncond] with rows [2, 4)
    perturbed gives what a plain call on the other rows and a fully perturbed call on rows [2, 4) give."""
    from lib_asag import layers
    from lib_asag.perturb import unet as perturb_unet
    if optimised:
        monkeypatch.setattr(real_ldm.attention.CrossAttention, "forward", _sdp_forward)
    unet = _unet(real_ldm.openaimodel)
    found = layers.find_self_attention(unet)
    modules = {ref: found[ref] for ref in layers.resolve_layers("middle, output.1", found)}
    x, t, context = _inputs()
    x, t, context = torch.cat([x, x, x]), torch.cat([t, t, t]), torch.cat([context, context, context])
    normal = torch.tensor([0, 1, 4, 5])
    with torch.no_grad():
        with perturb_unet.patched_attention(modules, iterations=3, epsilon=0.8, rows=(6, 2, 4)) as calls:
            batched = unet(x, t, context=context)
        plain = unet(x[normal], t[normal], context=context[normal])
        with perturb_unet.patched_attention(modules, iterations=3, epsilon=0.8):
            perturbed = unet(x[2:4], t[2:4], context=context[2:4])

    assert calls.problem(modules) is None
    assert not [n for n, m in unet.named_modules() if "forward" in m.__dict__]
    assert (perturbed - plain[:2]).abs().max() > 1e-3
    torch.testing.assert_close(batched[normal], plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[2:4], perturbed, rtol=1e-4, atol=1e-5)
