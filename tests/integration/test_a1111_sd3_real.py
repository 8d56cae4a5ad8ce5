"""The SD3 patch (lib_asag/perturb/dit.py) on A1111's real MMDiT code: modules/models/sd3/mmdit.py (MMDiT,
JointBlock, block_mixing, the module-level `attention` from other_impls.py) and sd3_impls.py (BaseModel,
ModelSamplingDiscreteFlow). Skipped unless ASAG_A1111_PATH names an A1111 1.10 checkout (the folder holding
modules/models/sd3/mmdit.py). Needs einops and PIL (imported by those files).

other_impls.py also imports `transformers` (CLIP/T5 tokenizers) and `modules.sd_hijack` (textual inversion in
the CLIP embeddings), which pull in the whole WebUI; neither is used by the MMDiT, so `modules.sd_hijack` is an
empty module here and `transformers` one too when it is not installed. Everything the MMDiT runs is real.

A tiny real BaseModel (depth 3: hidden 192, 3 heads of 64) with random weights runs with the chosen blocks
perturbed; the expected output comes from a deep copy whose chosen JointBlocks re-do block mixing with the
float64 Sinkhorn of tests/sinkhorn_reference.py (tests/standins/a1111/asag_harness.py).
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
pytestmark = pytest.mark.skipif(not os.environ.get(ENV), reason=f"set {ENV} to an A1111 1.10 checkout")

_HARNESS = Path(__file__).resolve().parents[1] / "standins" / "a1111" / "asag_harness.py"
DEPTH, CONTEXT_DIM, ADM = 3, 24, 12


def _purge() -> None:
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        del sys.modules[name]


@pytest.fixture
def real_sd3():
    pytest.importorskip("einops")
    pytest.importorskip("PIL")
    root = Path(os.environ[ENV])
    if not (root / "modules" / "models" / "sd3" / "mmdit.py").is_file():
        pytest.skip(f"{ENV}={root} holds no modules/models/sd3/mmdit.py (A1111 before 1.10?)")
    _purge()
    stubs = {"modules.sd_hijack": types.ModuleType("modules.sd_hijack")}
    if importlib.util.find_spec("transformers") is None:
        stubs["transformers"] = types.ModuleType("transformers")
        stubs["transformers"].CLIPTokenizer = stubs["transformers"].T5TokenizerFast = None
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        from modules.models.sd3 import mmdit, other_impls, sd3_impls
        assert Path(mmdit.__file__).is_relative_to(root)
        yield types.SimpleNamespace(mmdit=mmdit, other_impls=other_impls, sd3_impls=sd3_impls)
    finally:
        sys.path.remove(str(root))
        _purge()
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _harness():
    spec = importlib.util.spec_from_file_location("asag_harness_sd3_real", _HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """The real init zeroes gates and the final layer; make every part matter, with sharp attention."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            std = 0.15 if ".attn.qkv." in name else 2.0 if ".attn.ln_" in name else 0.05
            t.copy_(torch.randn(t.shape, generator=g) * std)


def _base_model(sd3_impls, seed=0):
    """Real BaseModel, configured from state-dict shapes as A1111's loader does (values unused)."""
    hidden, prefix = 64 * DEPTH, "model.diffusion_model."
    shapes = {f"{prefix}x_embedder.proj.weight": (hidden, 16, 2, 2), f"{prefix}pos_embed": (1, 64, hidden),
              f"{prefix}y_embedder.mlp.0.weight": (hidden, ADM), f"{prefix}context_embedder.weight": (hidden, CONTEXT_DIM)}
    model = sd3_impls.BaseModel(shift=3.0, state_dict={k: torch.empty(s) for k, s in shapes.items()}, prefix=prefix,
                                device="cpu", dtype=torch.float32).eval()
    _randomise(model.diffusion_model, seed)
    return model


def _mmdit_qk_norm(mmdit, seed=0):
    """The real MMDiT with RMS QK-norm (the SD3.5 variant of the same file), called directly."""
    model = mmdit.MMDiT(input_size=None, pos_embed_max_size=8, patch_size=2, in_channels=16, depth=DEPTH,
                        num_patches=64, adm_in_channels=ADM, qk_norm="rms",
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": CONTEXT_DIM, "out_features": 64 * DEPTH}},
                        device="cpu", dtype=torch.float32).eval()
    _randomise(model, seed)
    return model


def _inputs(batch=2):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(batch, 16, 8, 8, generator=g), torch.tensor([0.9, 0.4])[:batch],
            torch.randn(batch, 7, CONTEXT_DIM, generator=g), torch.randn(batch, ADM, generator=g))


def test_real_mmdit_block_names_family_and_support(real_sd3):
    from lib_asag import layers
    from lib_asag.perturb import dit
    mmdit = _base_model(real_sd3.sd3_impls).diffusion_model
    available = layers.find_self_attention(mmdit)
    assert [str(ref) for ref in available] == ["joint.0", "joint.1", "joint.2"]
    assert all(isinstance(m, real_sd3.mmdit.JointBlock) for m in available.values())
    assert layers.model_family(object(), available) == "sd3"
    assert dit.refusal(mmdit, available) is None
    assert real_sd3.mmdit.attention is real_sd3.other_impls.attention


@pytest.mark.parametrize("chosen", [[0, 2], [1]])
@pytest.mark.parametrize("scope", ["image", "joint"])
def test_real_base_model_perturbed_output_matches_reference(real_sd3, chosen, scope):
    from lib_asag.perturb import dit
    H = _harness()
    model = _base_model(real_sd3.sd3_impls)
    blocks = model.diffusion_model.joint_blocks
    x, sigma, context, y = _inputs()
    reference = copy.deepcopy(model)
    for i in chosen:
        block = reference.diffusion_model.joint_blocks[i]
        block.forward = types.MethodType(H.joint_block_reference_forward(3, 0.6, scope), block)

    with torch.no_grad():
        plain = model.apply_model(x, sigma, c_crossattn=context, y=y)
        with dit.perturbed_blocks(dict(enumerate([blocks[i] for i in chosen])), iterations=3, epsilon=0.6,
                                  scope=scope, model=model.diffusion_model):
            got = model.apply_model(x, sigma, c_crossattn=context, y=y)
        after = model.apply_model(x, sigma, c_crossattn=context, y=y)
        expected = reference.apply_model(x, sigma, c_crossattn=context, y=y)

    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)
    assert (got - plain).abs().max() > 1e-2
    assert torch.equal(after, plain)  # nothing left behind
    assert real_sd3.mmdit.attention is real_sd3.other_impls.attention
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__] == []


def test_real_mmdit_with_qk_norm_and_other_blocks_untouched(real_sd3, monkeypatch):
    from lib_asag.perturb import dit
    H = _harness()
    model = _mmdit_qk_norm(real_sd3.mmdit)
    x, sigma, context, y = _inputs()
    t = sigma * 1000
    calls = []
    host_attention = real_sd3.mmdit.attention

    def recording(q, k, v, heads, mask=None):
        calls.append(q.shape[1])
        return host_attention(q, k, v, heads, mask=mask)
    monkeypatch.setattr(real_sd3.mmdit, "attention", recording)
    reference = copy.deepcopy(model)
    reference.joint_blocks[1].forward = types.MethodType(H.joint_block_reference_forward(3, 0.6),
                                                         reference.joint_blocks[1])
    with torch.no_grad():
        with dit.perturbed_blocks(dict(enumerate([model.joint_blocks[1]])), iterations=3, epsilon=0.6):
            got = model(x, t, y=y, context=context)
        assert calls == [7 + 16, 7 + 16]  # blocks 0 and 2 ran the host's attention, block 1 did not
        expected = reference(x, t, y=y, context=context)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)
    assert real_sd3.mmdit.attention is recording


def test_real_mmdit_patch_removed_on_exception(real_sd3):
    from lib_asag.perturb import dit
    model = _base_model(real_sd3.sd3_impls)
    x, sigma, context, y = _inputs()
    with pytest.raises(RuntimeError, match="simulated"):
        with torch.no_grad(), dit.perturbed_blocks(dict(enumerate(model.diffusion_model.joint_blocks)),
                                                   iterations=3, epsilon=0.6):
            model.apply_model(x, sigma, c_crossattn=context, y=y)
            raise RuntimeError("simulated failure in the perturbed call")
    assert real_sd3.mmdit.attention is real_sd3.other_impls.attention
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__] == []


def test_real_base_model_batched_rows_match_separate_calls(real_sd3):
    """The batched mode on the real MMDiT: one call of rows [cond | perturbed | uncond] with rows [2, 4) perturbed
    gives what a plain call on the other rows and a fully perturbed call on rows [2, 4) give."""
    from lib_asag.perturb import dit
    model = _base_model(real_sd3.sd3_impls)
    chosen = {i: model.diffusion_model.joint_blocks[i] for i in (0, 2)}
    x, sigma, context, y = (torch.cat([t, t, t]) for t in _inputs())
    normal = torch.tensor([0, 1, 4, 5])
    with torch.no_grad():
        with dit.perturbed_blocks(chosen, iterations=3, epsilon=0.6, rows=(6, 2, 4)) as calls:
            batched = model.apply_model(x, sigma, c_crossattn=context, y=y)
        plain = model.apply_model(x[normal], sigma[normal], c_crossattn=context[normal], y=y[normal])
        with dit.perturbed_blocks(chosen, iterations=3, epsilon=0.6):
            perturbed = model.apply_model(x[2:4], sigma[2:4], c_crossattn=context[2:4], y=y[2:4])
    assert calls.problem(chosen) is None and dict(calls.counts) == {0: 1, 2: 1}
    assert real_sd3.mmdit.attention is real_sd3.other_impls.attention
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert (perturbed - plain[:2]).abs().max() > 1e-3
    torch.testing.assert_close(batched[normal], plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[2:4], perturbed, rtol=1e-4, atol=1e-5)
