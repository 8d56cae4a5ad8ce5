"""SD3 in A1111: lib_asag/perturb/dit.py through lib_asag/hosts/a1111.py on the stand-ins of A1111 v1.10's
modules/models/sd3 (tests/standins/a1111/modules/models/sd3), checked against an independent reference.

The stand-in SD3 is a depth-3 MMDiT (hidden 192, 3 heads of 64, 16 image + 6 text tokens); its last block is
`pre_only` like the real one. Sampling goes through the stand-in CFGDenoiser.forward with SD3's own
create_denoiser() (denoised space, flow sigmas in (0, 1]). The reference (tests/standins/a1111/asag_harness.py)
re-does the chosen blocks' block mixing with the float64 Sinkhorn of tests/sinkhorn_reference.py.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from asag_modes import use_batch_mode
from lib_asag.params import ASAGParams

_HARNESS = Path(__file__).resolve().parent / "standins" / "a1111" / "asag_harness.py"
if "asag_harness" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("asag_harness", _HARNESS)
    sys.modules["asag_harness"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["asag_harness"])
H = sys.modules["asag_harness"]

LAYERS = "joint.0, joint.2"  # block 2 is the last, pre_only block (no text output)
PATHS = ["joint_blocks.0", "joint_blocks.2"]
SIGMAS = torch.tensor([1.0, 0.75, 0.45, 0.0])


@pytest.fixture
def env(standins):
    standins("a1111")
    from modules import script_callbacks, sd_samplers_common, shared
    shared.reset()
    script_callbacks.clear_callbacks()
    sd_samplers_common.refiner_hook = None
    import lib_asag.hosts.a1111 as host
    from modules.models.sd3 import mmdit
    yield types.SimpleNamespace(shared=shared, callbacks=script_callbacks, host=host, common=sd_samplers_common,
                                mmdit=mmdit)
    host.Adapter().teardown()
    script_callbacks.clear_callbacks()


def _model(env, seed=0, **kwargs):
    from modules.models.sd3.sd3_model import SD3Inferencer
    model = SD3Inferencer(seed=seed, **kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # sharp attention and non-zero gates, so that replacing it shows
        for name, param in model.model.diffusion_model.named_parameters():
            std = 0.15 if ".attn.qkv." in name else 2.0 if ".attn.ln_" in name else 0.05
            param.copy_(torch.randn(param.shape, generator=g) * std)
    env.shared.sd_model = model
    return model


def _case(model, **kwargs):
    case = H.make_case(model, in_channels=16, **kwargs)
    case.sigmas = SIGMAS[-(kwargs.get("steps", 3) + 1):].clone() if "steps" in kwargs else SIGMAS.clone()
    case.x = torch.randn(case.x.shape, generator=torch.Generator().manual_seed(11))
    return case


def _p(env, **kwargs):
    from modules.processing import StableDiffusionProcessingTxt2Img
    return StableDiffusionProcessingTxt2Img(**kwargs)


EVERY_STEP = dict(start=0.0, end=0.99)
"""A window holding every step of these short runs (start 0 with end 1 would mean SD3's default 0.01-0.15)."""


def _params(**kwargs):
    return ASAGParams(**{**dict(enabled=True, scale=2.0, layers=LAYERS, iterations=3, epsilon=0.6, **EVERY_STEP),
                         **kwargs})


def _asag_callbacks(env):
    return [cb for lst in env.callbacks.callback_map.values() for cb in lst
            if getattr(cb.callback, "__module__", "") == "lib_asag.hosts.a1111"]


def _assert_unpatched(env, model, original_attention):
    assert env.mmdit.attention is original_attention
    assert [name for name, m in model.named_modules() if "forward" in m.__dict__] == []
    hooks = [h for m in model.modules() for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]
    assert [h for h in hooks if h.__module__.startswith("lib_asag")] == []


_batch_mode = use_batch_mode


def _in_perturbed_call(env):
    return getattr(env.mmdit.attention, "asag", False)


def _run(env, model, case, params=None):
    p = _p(env, batch_size=len(case.conds))
    messages = env.host.Adapter().setup(p, params) if params is not None else []
    try:
        return H.run_sampler(p, case), messages, p
    finally:
        env.host.Adapter().teardown(p)


LAYOUTS = {
    "batch2_and": ({}, {}, {}),
    "batch1": ({"batch": 1, "and_prompt": False}, {}, {}),
    "no_batch_cond_uncond": ({}, {"batch_cond_uncond": False}, {}),
    "cond_longer_than_uncond": ({"cond_tokens": 9, "uncond_tokens": 6}, {}, {}),
    "padded_cond": ({"cond_tokens": 6, "uncond_tokens": 9}, {"pad_cond_uncond": True}, {"pad": True}),
    "qk_norm": ({}, {}, {"qk_norm": "ln"}),
}


@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scope", ["image", "joint"])
def test_sd3_guided_result_matches_independent_reference(env, layout, mode, scope, monkeypatch):
    _batch_mode(monkeypatch, mode)
    case_kw, opts, model_kw = LAYOUTS[layout]
    model = _model(env, qk_norm=model_kw.get("qk_norm"))
    original = env.mmdit.attention
    for key, value in opts.items():
        setattr(env.shared.opts, key, value)
    case = _case(model, **case_kw)
    params = _params(scope=scope)
    got, messages, _ = _run(env, model, case, params)
    assert messages == []
    expected = H.reference_run(model, case, scale=params.scale, layer_paths=PATHS, iterations=params.iterations,
                               epsilon=params.epsilon, pad="pad" in model_kw or "pad_cond_uncond" in opts,
                               scope=scope)
    without, _, _ = _run(env, model, case)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)
    assert (got - without).abs().max() > 1e-2  # ASAG really changed the result
    _assert_unpatched(env, model, original)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_only_chosen_blocks_are_perturbed_and_only_on_the_perturbed_rows(env, monkeypatch, mode):
    _batch_mode(monkeypatch, mode)
    model = _model(env)
    case = _case(model, and_prompt=False, steps=1)  # one step: main call 4 rows (+2 batched), extra call 2 rows
    sdpa_calls, running, sinkhorn_calls = [], [], []
    host_attention = env.mmdit.attention

    def recording_attention(q, k, v, heads, mask=None):  # the host's attention, as block_mixing reaches it
        sdpa_calls.append(q.shape[0])
        return host_attention(q, k, v, heads, mask=mask)
    monkeypatch.setattr(env.mmdit, "attention", recording_attention)
    for i, block in enumerate(model.model.diffusion_model.joint_blocks):
        block.register_forward_pre_hook(lambda module, args, i=i: running.append(i))
        block.register_forward_hook(lambda *_: (running.pop(), None)[1])
    from lib_asag import sinkhorn
    sink = sinkhorn.adversarial_sinkhorn_attention
    monkeypatch.setattr(sinkhorn, "adversarial_sinkhorn_attention",
                        lambda q, *a, **k: sinkhorn_calls.append((running[-1], q.shape[0])) or sink(q, *a, **k))

    got, _, _ = _run(env, model, case, _params(layers="joint.1", scope="joint"))
    assert sinkhorn_calls == [(1, 2)]  # block 1 only, on the 2 perturbed rows only
    if mode == "separate":
        # main call: all 3 blocks reach the host's attention; extra call: blocks 0 and 2 only
        assert sdpa_calls == [4, 4, 4, 2, 2]
    else:
        # one call of [cond 2 | perturbed 2 | uncond 2]: block 1 runs the host's attention on the 4 normal rows
        assert sdpa_calls == [6, 4, 6]
    _assert_unpatched(env, model, recording_attention)
    expected = H.reference_run(model, case, scale=2.0, layer_paths=["joint_blocks.1"], iterations=3, epsilon=0.6)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


def test_disabled_is_bit_identical(env):
    model = _model(env)
    case = _case(model)
    baseline, _, _ = _run(env, model, case)
    for params in (_params(enabled=False), _params(scale=0.0), _params(start=0.99, end=1.0)):
        got, messages, _ = _run(env, model, case, params)
        assert messages == [] and torch.equal(got, baseline)


@pytest.mark.parametrize("layers,needles", [
    ("joint.5", ["'joint.5' does not exist", "joint.0-2"]),
    ("middle", ["'middle' does not exist", "joint.0-2"]),
    ("double.0", ["'double.0' does not exist"]),
    ("joint.1.0", ["one number"]),
    ("", ["'joint.7-9' does not exist", "joint.0-2"]),  # the SD3 default preset needs SD3 medium's 24 blocks
])
def test_bad_dit_layer_names_give_a_message_and_a_normal_image(env, layers, needles):
    model = _model(env)
    original = env.mmdit.attention
    case = _case(model)
    baseline, _, _ = _run(env, model, case)
    p = _p(env, batch_size=2)
    messages = env.host.Adapter().setup(p, _params(layers=layers))
    assert len(messages) == 1 and all(n in messages[0] for n in needles), messages
    assert "Generating without ASAG" in messages[0] or "cannot read" in messages[0] or "one number" in messages[0]
    assert _asag_callbacks(env) == []
    assert torch.equal(H.run_sampler(p, case), baseline)
    _assert_unpatched(env, model, original)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_error_inside_perturbed_pass_turns_asag_off_and_unpatches(env, caplog, monkeypatch, mode):
    _batch_mode(monkeypatch, mode)
    model = _model(env)
    original = env.mmdit.attention
    case = _case(model)
    baseline, _, _ = _run(env, model, case)

    def explode(module, args):
        if _in_perturbed_call(env):
            raise RuntimeError("boom in the perturbed pass")

    def explode_sinkhorn(*args, **kwargs):
        raise RuntimeError("boom in the perturbed pass")
    if mode == "separate":  # anything failing in ASAG's own call
        model.model.diffusion_model.joint_blocks[2].register_forward_pre_hook(explode)
    else:  # in the host's call only ASAG's part can fail without failing the host: the Sinkhorn attention
        from lib_asag import joint_scope, sinkhorn
        monkeypatch.setattr(sinkhorn, "adversarial_sinkhorn_attention", explode_sinkhorn)
        monkeypatch.setattr(joint_scope, "image_only_sinkhorn_attention", explode_sinkhorn)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    if mode == "separate":
        assert torch.equal(got, baseline)
    else:  # the failing step's cond/uncond came from the host's 3-row call: same maths, other BLAS blocking
        torch.testing.assert_close(got, baseline, atol=1e-4, rtol=1e-4)
    assert "boom in the perturbed pass" in caplog.text
    assert any("ASAG turned off" in c for c in p.comments)
    _assert_unpatched(env, model, original)


def test_interrupt_during_perturbed_pass_unpatches(env):
    model = _model(env)
    original = env.mmdit.attention
    case = _case(model)

    def interrupt(module, args):
        if _in_perturbed_call(env):  # inside a call with perturbed rows
            env.shared.state.interrupted = True
            raise env.common.InterruptedException()
    model.model.diffusion_model.joint_blocks[1].register_forward_pre_hook(interrupt)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    H.run_sampler(p, case)  # the sampler's InterruptedException catch returns the last latent
    _assert_unpatched(env, model, original)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_exception_in_the_main_call_leaves_nothing_patched(env, monkeypatch, mode):
    _batch_mode(monkeypatch, mode)
    model = _model(env)
    original = env.mmdit.attention
    case = _case(model)
    calls = {"n": 0}
    main_rows = 5 if mode == "separate" else 8  # 3 cond rows (AND) + 2 uncond rows (+ 3 perturbed rows)

    def fail_second_main_call(module, args):
        if args[0].shape[0] == main_rows:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("out of memory (simulated)")
    model.model.diffusion_model.joint_blocks[0].register_forward_pre_hook(fail_second_main_call)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    with pytest.raises(RuntimeError, match="out of memory"):
        H.run_sampler(p, case)
    _assert_unpatched(env, model, original)


# ---------------------------------------------------------------------------------------------------------
# The patch itself

def test_patch_composes_with_another_instance_forward_and_restores_it(env):
    from lib_asag.perturb import dit
    model = _model(env)
    blocks = list(model.model.diffusion_model.joint_blocks)
    seen = []
    other = types.MethodType(lambda self, *a, **k: seen.append(1) or type(self).forward(self, *a, **k), blocks[0])
    blocks[0].forward = other  # another extension's instance forward
    original = env.mmdit.attention
    x, t = torch.randn(1, 16, 8, 8), torch.tensor([500.0])
    y, ctx = torch.randn(1, 12), torch.randn(1, 6, 24)
    with torch.no_grad():
        before = model.model.diffusion_model(x, t, y=y, context=ctx)
        with dit.perturbed_blocks(dict(enumerate(blocks[:1])), iterations=3, epsilon=0.6):
            inside = model.model.diffusion_model(x, t, y=y, context=ctx)
        after = model.model.diffusion_model(x, t, y=y, context=ctx)
    assert len(seen) == 3  # the other extension's forward ran every time
    assert blocks[0].__dict__["forward"] is other and env.mmdit.attention is original
    assert torch.equal(before, after) and not torch.allclose(before, inside)


def test_patch_is_removed_when_the_body_raises(env):
    from lib_asag.perturb import dit
    model = _model(env)
    original = env.mmdit.attention
    with pytest.raises(KeyboardInterrupt):
        with dit.perturbed_blocks(dict(enumerate(model.model.diffusion_model.joint_blocks)), iterations=3, epsilon=0.6):
            raise KeyboardInterrupt
    _assert_unpatched(env, model, original)


def test_unknown_mmdit_implementation_is_refused(env):
    from lib_asag.perturb import dit

    class JointBlock(torch.nn.Module):  # lives in this test module: no module-level block_mixing/attention
        def __init__(self):
            super().__init__()
            self.context_block, self.x_block = torch.nn.Identity(), torch.nn.Identity()

    model = _model(env)
    model.model.diffusion_model.joint_blocks = torch.nn.ModuleList([JointBlock(), JointBlock()])
    messages = env.host.Adapter().setup(_p(env), _params(layers="joint.0"))
    assert len(messages) == 1 and "does not know this SD3 implementation" in messages[0]
    assert _asag_callbacks(env) == []
    with pytest.raises(RuntimeError, match="JointBlock is not a transformer block of a known family"):
        with dit.perturbed_blocks(dict(enumerate(model.model.diffusion_model.joint_blocks)), iterations=3, epsilon=0.6):
            pass
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__ or m._forward_pre_hooks] == []


# ---------------------------------------------------------------------------------------------------------
# DiT layer names through infotext, paste-back and the args, unchanged

def _infotext_line(values: dict) -> str:
    """modules/processing.py create_infotext: 'k: v' joined by ', ', values quoted when they hold , : or \""""
    import json

    def quote(v):
        v = str(v)
        return json.dumps(v, ensure_ascii=False) if any(ch in v for ch in ",:\n\"") else v
    return ", ".join(f"{k}: {quote(v)}" for k, v in values.items())


def _parse_infotext(line: str) -> dict:
    """modules/infotext_utils.py parse_generation_parameters: regex re_param, then unquote."""
    import json
    import re
    return {k: json.loads(v) if v.startswith('"') else v
            for k, v in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)}


@pytest.mark.parametrize("layers", ["joint.0-1", "joint.0, joint.2", "joint.0; joint.2", "double.0-18, single.3",
                                    "joint.7-9", "all"])
def test_dit_layer_names_survive_infotext_paste_back_api_and_xyz(layers):
    from lib_asag import params as asag_params, ui
    params = ASAGParams(enabled=True, scale=2.5, layers=layers, iterations=4, epsilon=0.5)
    assert params.validate() == []
    pasted = _parse_infotext(_infotext_line({"Steps": 20, **asag_params.to_infotext(params)}))
    assert pasted["ASAG layers"] == layers
    restored, messages = asag_params.from_script_args(asag_params.from_infotext(pasted))
    assert messages == [] and restored == params
    assert ui.params_from_script(None, [True, 2.5, layers, 4, 0.5]) == (params, [])  # API positional args
    cell = types.SimpleNamespace(**{ui.XYZ_ATTR: {"layers": layers}})  # an XYZ "ASAG layers" cell, ASAG unticked
    from_xyz, messages = ui.params_from_script(cell, [False])
    assert messages == [] and from_xyz.enabled and from_xyz.layers == layers


# ---------------------------------------------------------------------------------------------------------
# Proof of perturbation (issue 15.2)

@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_a_chosen_block_that_ran_no_sinkhorn_is_an_error_not_a_zero_term(env, monkeypatch, mode):
    """The dispatcher leaves calls it cannot take over (here: a mask) to the host's attention; such a block is
    not perturbed, and ASAG must say so instead of reporting a term of 0 as ASAG."""
    _batch_mode(monkeypatch, mode)
    model = _model(env)
    case = _case(model)
    baseline, _, _ = _run(env, model, case)
    block_mixing = env.mmdit.block_mixing

    def masked_block_mixing(context, x, context_block, x_block, c):  # as if a host build passed a mask
        attention = env.mmdit.attention
        env.mmdit.attention = lambda q, k, v, heads: attention(q, k, v, heads, mask=torch.zeros(1, 1, 1, 1))
        try:
            return block_mixing(context, x, context_block, x_block, c)
        finally:
            env.mmdit.attention = attention
    monkeypatch.setattr(env.mmdit, "block_mixing", masked_block_mixing)
    original = env.mmdit.attention
    p = _p(env, batch_size=2)
    p.extra_generation_params["ASAG scale"] = 2.0
    assert env.host.Adapter().setup(p, _params(layers="joint.1")) == []
    got = H.run_sampler(p, case)
    env.host.Adapter().teardown(p)
    torch.testing.assert_close(got, baseline, rtol=1e-5, atol=1e-5)
    assert "ASAG scale" not in p.extra_generation_params
    assert "joint.1" in p.extra_generation_params["ASAG error"]
    _assert_unpatched(env, model, original)


def test_default_window_is_sd3s_and_counts_only_its_steps(env):
    """Start 0 / end 1 (the UI and API defaults) resolve to SD3's 0.01-0.15 (docs/experiment.md, DiT): of 10
    steps only step 1 (progress 0.1) is guided; the adapter says which window ran (the script writes that)."""
    model = _model(env)
    case = _case(model)
    case.sigmas = torch.linspace(1.0, 0.0, 11)  # 10 steps
    adapter = env.host.Adapter()
    for params, guided in ((_params(start=0.0, end=1.0), 1), (_params(), 10)):
        p = _p(env, batch_size=len(case.conds))
        adapter.reset_count()
        assert adapter.setup(p, params) == []
        assert (adapter.effective.start, adapter.effective.end) == ((0.01, 0.15) if guided == 1 else (0.0, 0.99))
        H.run_sampler(p, case)
        adapter.teardown(p)
        assert adapter.guided_steps == guided
