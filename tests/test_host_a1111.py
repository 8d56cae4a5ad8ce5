"""lib_asag/hosts/a1111.py against the A1111 stand-ins (tests/standins/a1111) and an independent reference.

Each run goes through the stand-in CFGDenoiser.forward with its real row layout and callback order; the
expected result is rebuilt by tests/standins/a1111/asag_harness.py from plain model calls and a float64 Sinkhorn.
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
if "asag_harness" not in sys.modules:  # test helpers + independent reference; host imports are lazy
    _spec = importlib.util.spec_from_file_location("asag_harness", _HARNESS)
    sys.modules["asag_harness"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["asag_harness"])
H = sys.modules["asag_harness"]

SD1_LAYERS = "middle, output.0"
SD1_PATHS = ["middle_block.1.transformer_blocks.0.attn1", "output_blocks.0.1.transformer_blocks.0.attn1"]
SDXL_PATHS = [f"middle_block.1.transformer_blocks.{k}.attn1" for k in (0, 1)]


@pytest.fixture
def env(standins):
    standins("a1111")
    from modules import script_callbacks, sd_samplers_common, shared
    shared.reset()
    script_callbacks.clear_callbacks()
    sd_samplers_common.refiner_hook = None
    import lib_asag.hosts.a1111 as host
    yield types.SimpleNamespace(shared=shared, callbacks=script_callbacks, host=host, common=sd_samplers_common)
    host.Adapter().teardown()
    script_callbacks.clear_callbacks()


def _model(env, kind="sd1", seed=0):
    from ldm.models.diffusion.ddpm import LatentDiffusion
    from sgm.models.diffusion import DiffusionEngine
    model = {"sd1": lambda: LatentDiffusion(seed=seed), "sdxl": lambda: DiffusionEngine(seed=seed),
             "inpaint": lambda: LatentDiffusion(conditioning_key="hybrid", seed=seed),
             "unclip": lambda: LatentDiffusion(conditioning_key="crossattn-adm", seed=seed),
             "edit": lambda: LatentDiffusion(cond_stage_key="edit", seed=seed)}[kind]().eval()
    env.shared.sd_model = model
    return model


def _p(env, case=None, **kwargs):
    from modules.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img
    if case is not None and case.mask is not None:
        return StableDiffusionProcessingImg2Img(**kwargs)
    return StableDiffusionProcessingTxt2Img(**kwargs)


def _params(**kwargs):
    base = dict(enabled=True, scale=2.0, layers=SD1_LAYERS, iterations=2, epsilon=0.7)
    return ASAGParams(**{**base, **kwargs})


def _asag_callbacks(env):
    return [cb for lst in env.callbacks.callback_map.values() for cb in lst
            if getattr(cb.callback, "__module__", "") == "lib_asag.hosts.a1111"]


def _assert_unpatched(model):
    leftovers = [name for name, m in model.named_modules() if "forward" in m.__dict__]
    assert leftovers == []


LAYOUTS = {
    # name: (model kind, case kwargs, opts, reference kwargs)
    "batch2_and": ("sd1", {}, {}, {}),
    "batch1_plain": ("sd1", {"batch": 1, "and_prompt": False}, {}, {}),
    "cond_longer_than_uncond": ("sd1", {"cond_tokens": 9, "uncond_tokens": 6}, {}, {}),
    "padded_cond": ("sd1", {"cond_tokens": 6, "uncond_tokens": 9}, {"pad_cond_uncond": True}, {"pad": True}),
    "no_batch_cond_uncond": ("sd1", {}, {"batch_cond_uncond": False}, {}),
    "skip_uncond": ("sd1", {"steps": 4, "s_min_uncond": 100.0}, {}, {"skip_odd_steps_below": 100.0}),
    "sdxl_dict_conds": ("sdxl", {}, {}, {}),
    "sdxl_padded": ("sdxl", {"cond_tokens": 6, "uncond_tokens": 9}, {"pad_cond_uncond": True}, {"pad": True}),
    "inpaint_image_cond": ("inpaint", {}, {}, {}),
    "unclip_adm": ("unclip", {"image_channels": 8}, {}, {}),
    "rescale": ("sd1", {}, {}, {"rescale": 0.5}),
}


BATCHED_LINE = "ASAG: perturbed pass batched with cond/uncond"


_mode = use_batch_mode


def _mode_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ASAG: perturbed pass")]


class _UNetCalls:
    """Rows of every UNet call (a forward pre-hook: hooks are not what ASAG looks for in other extensions)."""

    def __init__(self, model):
        self.rows = []
        model.model.diffusion_model.register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))


def _run(env, monkeypatch, model, case, params, mode):
    _mode(monkeypatch, mode)
    p = _p(env, case, batch_size=len(case.conds))
    assert env.host.Adapter().setup(p, params) == []
    got = H.run_sampler(p, case)
    env.host.Adapter().teardown(p)
    return got


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batched_and_separate_match_the_reference_and_each_other(env, layout, monkeypatch, caplog):
    """Every host layout: the batched call (no extra UNet call) and the separate call give the same image,
    and both match the independent reference."""
    caplog.set_level("INFO", logger="asag")
    kind, case_kw, opts, ref_kw = LAYOUTS[layout]
    model = _model(env, kind)
    for key, value in opts.items():
        setattr(env.shared.opts, key, value)
    case = H.make_case(model, **case_kw)
    if kind == "unclip":
        case.image_cond = case.image_cond[:, :, 0, 0]
    paths, layers = (SDXL_PATHS, "middle") if kind == "sdxl" else (SD1_PATHS, SD1_LAYERS)
    params = _params(layers=layers, rescale=ref_kw.get("rescale", 0.0))
    calls = _UNetCalls(model)

    without = H.run_sampler(_p(env, case, batch_size=len(case.conds)), case)
    plain_calls, calls.rows = calls.rows, []
    batched = _run(env, monkeypatch, model, case, params, "batched")
    batched_calls, calls.rows = calls.rows, []
    assert _mode_lines(caplog) == [BATCHED_LINE]
    separate = _run(env, monkeypatch, model, case, params, "separate")
    assert _mode_lines(caplog)[1:] == ["ASAG: perturbed pass in a separate call (ASAG_BATCH=0)"]

    # the perturbed rows rode along in the host's own calls (chunked by the host where it chunks: more calls)
    assert sum(batched_calls) == sum(plain_calls) + len(case.sigmas[:-1]) * sum(len(c) for c in case.conds)
    chunked = layout in ("cond_longer_than_uncond", "no_batch_cond_uncond")
    assert len(batched_calls) == len(plain_calls) or chunked and len(batched_calls) <= len(calls.rows)
    assert len(calls.rows) > len(plain_calls)  # the separate call
    # float32 noise of different batch compositions, carried through 3 sampler steps
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-4)
    expected = H.reference_run(model, case, scale=params.scale, layer_paths=paths, iterations=params.iterations,
                               epsilon=params.epsilon, **ref_kw)
    torch.testing.assert_close(batched, expected, rtol=2e-4, atol=2e-4)
    assert (batched - without).abs().max() > 1e-2  # ASAG really changed the result
    _assert_unpatched(model)


def test_inpainting_mask_keeps_the_original_area(env):
    model = _model(env, "inpaint")
    case = H.make_case(model, and_prompt=False)
    case.init_latent = torch.randn_like(case.x)
    case.mask = torch.zeros(1, 1, 8, 8)
    case.mask[..., :4, :] = 1.0  # top half kept from the original
    params = _params()
    p = _p(env, case, batch_size=2)
    env.host.Adapter().setup(p, params)
    got = H.run_sampler(p, case)
    expected = H.reference_run(model, case, scale=params.scale, layer_paths=SD1_PATHS,
                               iterations=params.iterations, epsilon=params.epsilon)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


class _Recorder:
    """Forward hooks on every attn1: (layer path, batch rows, whether an instance forward was installed)."""

    def __init__(self, model):
        self.calls, self.handles = [], []
        for name, module in model.model.diffusion_model.named_modules():
            if name.endswith("attn1"):
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args):
            self.calls.append((name, args[0].shape[0], "forward" in module.__dict__))
        return hook


def _sdp_forward(self, x, context=None, mask=None, **kwargs):
    """Another host attention optimisation (modules/sd_hijack_optimizations.py scaled_dot_product_*)."""
    ctx = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
    b, n, inner = q.shape
    split = lambda t: t.reshape(b, -1, self.heads, inner // self.heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return self.to_out(out.transpose(1, 2).reshape(b, n, inner))


@pytest.mark.parametrize("optimisation", ["softmax", "sdp"])
def test_separate_call_patches_only_chosen_layers_and_only_in_the_extra_call(env, optimisation, monkeypatch):
    import ldm.modules.attention as attention
    if optimisation == "sdp":
        monkeypatch.setattr(attention.CrossAttention, "forward", _sdp_forward)
    _mode(monkeypatch, "separate")
    model = _model(env)
    case = H.make_case(model, and_prompt=False, steps=1)  # one step: main call 4 rows, extra call 2 rows
    recorder = _Recorder(model)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)

    patched = sorted({name for name, _, is_patched in recorder.calls if is_patched})
    assert patched == sorted(SD1_PATHS)
    assert {rows for _, rows, is_patched in recorder.calls if is_patched} == {2}
    main_calls = [(name, is_patched) for name, rows, is_patched in recorder.calls if rows == 4]
    assert main_calls and not any(is_patched for _, is_patched in main_calls)
    extra_unpatched = {name for name, rows, is_patched in recorder.calls if rows == 2 and not is_patched}
    assert extra_unpatched.isdisjoint(SD1_PATHS) and extra_unpatched  # the other layers ran as usual
    _assert_unpatched(model)
    expected = H.reference_run(model, case, scale=2.0, layer_paths=SD1_PATHS, iterations=2, epsilon=0.7)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("optimisation", ["softmax", "sdp"])
def test_batched_call_perturbs_only_the_inserted_rows_at_the_chosen_layers(env, optimisation, monkeypatch):
    """Rows [cond 0, cond 1 | perturbed 0, perturbed 1 | uncond 0, uncond 1] in one call; at the chosen layers
    the host's forward sees rows 0, 1, 4, 5 only, every other layer all six rows."""
    import ldm.modules.attention as attention
    host_rows = []
    base = _sdp_forward if optimisation == "sdp" else attention.CrossAttention.forward

    def recording_forward(self, x, context=None, mask=None, **kwargs):
        host_rows.append((self, x.shape[0]))
        return base(self, x, context=context, mask=mask, **kwargs)

    monkeypatch.setattr(attention.CrossAttention, "forward", recording_forward)
    model = _model(env)
    case = H.make_case(model, and_prompt=False, steps=1)
    recorder = _Recorder(model)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)

    assert {rows for _, rows, _ in recorder.calls} == {6}  # one call: 2 cond + 2 perturbed + 2 uncond rows
    assert sorted({name for name, _, is_patched in recorder.calls if is_patched}) == sorted(SD1_PATHS)
    chosen = {id(m) for n, m in model.model.diffusion_model.named_modules() if n in SD1_PATHS}
    assert {rows for m, rows in host_rows if id(m) in chosen} == {4}
    assert {rows for m, rows in host_rows if id(m) not in chosen} == {6}  # attn2 and the other attn1
    _assert_unpatched(model)
    assert "forward" not in p.sampler.model_wrap_cfg.inner_model.__dict__
    expected = H.reference_run(model, case, scale=2.0, layer_paths=SD1_PATHS, iterations=2, epsilon=0.7)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_error_inside_perturbed_pass_turns_asag_off_and_unpatches(env, caplog, monkeypatch, mode):
    """Batched: the host's call goes on with its own attention, then the separate call fails too -> ASAG off."""
    from lib_asag import sinkhorn
    model = _model(env)
    case = H.make_case(model)
    baseline = H.run_sampler(_p(env, batch_size=2), case)

    def explode(*args, **kwargs):
        raise RuntimeError("boom in the perturbed pass")
    monkeypatch.setattr(sinkhorn, "adversarial_sinkhorn_attention", explode)
    _mode(monkeypatch, mode)
    p = _p(env, batch_size=2)
    p.extra_generation_params["ASAG scale"] = 2.0
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    # failed at the first step: no ASAG at all, a normal image (batched: the first call had 3 more rows)
    torch.testing.assert_close(got, baseline, rtol=1e-4, atol=1e-4)
    _assert_unpatched(model)
    assert "boom in the perturbed pass" in caplog.text
    assert "ASAG scale" not in p.extra_generation_params
    assert any("ASAG turned off" in c for c in p.comments)
    env.host.Adapter().teardown(p)
    assert _asag_callbacks(env) == []
    assert "forward" not in p.sampler.model_wrap_cfg.inner_model.__dict__


def test_error_in_another_extensions_callback_does_not_disturb_asag(env):
    model = _model(env)
    case = H.make_case(model)

    def broken(params):
        raise ValueError("another extension failed")

    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    clean = H.run_sampler(p, case)
    env.host.Adapter().teardown(p)

    env.callbacks.on_cfg_denoiser(broken)
    env.callbacks.on_cfg_denoised(broken)
    env.callbacks.on_cfg_after_cfg(broken)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    torch.testing.assert_close(got, clean, rtol=1e-4, atol=1e-4)  # batched before, separate call now
    _assert_unpatched(model)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_exception_in_the_main_model_call_leaves_nothing_patched(env, monkeypatch, mode):
    model = _model(env)
    case = H.make_case(model)
    calls = {"n": 0}
    main_rows = 8 if mode == "batched" else 5  # 3 cond rows (AND) [+ 3 perturbed] + 2 uncond rows

    def fail_second_main_call(module, args):
        if args[0].shape[0] == main_rows:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("CUDA out of memory (simulated)")
    dict(model.named_modules())["model.diffusion_model." + SD1_PATHS[0]].register_forward_pre_hook(fail_second_main_call)
    _mode(monkeypatch, mode)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    with pytest.raises(RuntimeError, match="out of memory"):
        H.run_sampler(p, case)
    assert calls["n"] == 2
    _assert_unpatched(model)
    env.host.Adapter().teardown(p)  # the script's next process/setup, or postprocess
    assert "forward" not in p.sampler.model_wrap_cfg.inner_model.__dict__


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_interrupt_during_perturbed_pass_propagates_and_unpatches(env, monkeypatch, mode):
    _mode(monkeypatch, mode)
    model = _model(env)
    case = H.make_case(model)
    target = dict(model.named_modules())["model.diffusion_model." + SD1_PATHS[0]]

    def interrupt(module, args):
        if "forward" in module.__dict__:
            env.shared.state.interrupted = True
            raise env.common.InterruptedException()
    target.register_forward_pre_hook(interrupt)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    H.run_sampler(p, case)  # the sampler's InterruptedException catch returns the last latent
    _assert_unpatched(model)
    env.host.Adapter().teardown(p)
    assert "forward" not in p.sampler.model_wrap_cfg.inner_model.__dict__


def test_skip_state_skips_the_extra_call(env):
    model = _model(env)
    case = H.make_case(model, steps=1)
    recorder = _Recorder(model)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    env.shared.state.skipped = True
    H.run_sampler(p, case)
    assert not any(is_patched for *_, is_patched in recorder.calls)


def test_active_range_limits_the_steps(env):
    model = _model(env)
    case = H.make_case(model, steps=4, and_prompt=False)
    recorder = _Recorder(model)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params(start=0.25, end=0.75))
    H.run_sampler(p, case)
    extra_calls = [c for c in recorder.calls if c[0] == SD1_PATHS[0] and c[2]]
    assert len(extra_calls) == 2  # steps 1 and 2 of 0..3


@pytest.mark.parametrize("kind,params,needle", [
    ("edit", _params(), "InstructPix2Pix"),
    ("sd1", _params(layers="input.9"), "does not exist"),
    ("sd1", _params(layers="sideways.1"), "cannot read"),
])
def test_refusals_give_a_message_and_register_nothing(env, kind, params, needle):
    _model(env, kind)
    messages = env.host.Adapter().setup(_p(env), params)
    assert messages and needle in messages[0]
    assert _asag_callbacks(env) == []


def test_disabled_and_hires_off_register_nothing(env):
    _model(env)
    adapter = env.host.Adapter()
    assert adapter.setup(_p(env), _params(enabled=False)) == [] and _asag_callbacks(env) == []
    p = _p(env)
    p.is_hr_pass = True
    assert adapter.setup(p, _params(hires="off")) == [] and _asag_callbacks(env) == []
    assert adapter.setup(p, _params(hires="same")) == [] and len(_asag_callbacks(env)) == 3
    adapter.teardown(p)
    adapter.teardown(p)
    assert _asag_callbacks(env) == []
    assert all(len(v) == len(env.callbacks.callback_map["callbacks_" + k])
               for k, v in env.callbacks.ordered_callbacks_map.items())


def test_refiner_switch_uses_the_new_models_layers(env):
    base = _model(env, "sdxl", seed=0)
    from ldm.models.diffusion.ddpm import LatentDiffusion
    refiner = LatentDiffusion(seed=3).eval()
    recorder_base, recorder_refiner = _Recorder(base), _Recorder(refiner)
    case = H.make_case(base, steps=3, and_prompt=False)
    refiner_case = H.make_case(refiner, steps=3, and_prompt=False)
    from modules import prompt_parser

    def switch(denoiser):
        if denoiser.step == 1 and env.shared.sd_model is base:
            env.shared.sd_model = refiner
            denoiser.model_wrap = None
            denoiser.sampler.sampler_extra_args["cond"] = prompt_parser.multicond(refiner_case.conds)
            denoiser.sampler.sampler_extra_args["uncond"] = prompt_parser.plain(refiner_case.unconds)
            return True
        return False
    env.common.refiner_hook = switch
    p = _p(env, batch_size=2, sd_model=base)
    env.host.Adapter().setup(p, _params(layers="middle"))
    H.run_sampler(p, case)
    assert any(c[2] for c in recorder_base.calls) and any(c[2] for c in recorder_refiner.calls)
    _assert_unpatched(base)
    _assert_unpatched(refiner)


def test_hypernetworks_apply_to_the_perturbed_keys_and_values(env, monkeypatch):
    """A1111's attention forwards pass the context through loaded hypernetworks; the perturbed one must too."""
    import ldm.modules.attention as attention
    torch.manual_seed(5)
    hn = types.SimpleNamespace(layers={16: (torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))})

    def with_hn(fn):
        """fn with keys/values from the hypernetwork'd context, as the host's optimised forwards do."""
        def forward(self, x, context=None, mask=None, **kw):
            ctx = x if context is None else context
            k_ctx, v_ctx = (hn.layers[ctx.shape[2]][0](ctx), hn.layers[ctx.shape[2]][1](ctx)) \
                if ctx.shape[2] in hn.layers else (ctx, ctx)
            shim = types.SimpleNamespace(heads=self.heads, scale=self.scale, to_q=self.to_q, to_out=self.to_out,
                                         to_k=lambda c: self.to_k(k_ctx), to_v=lambda c: self.to_v(v_ctx))
            return fn(shim, x, ctx)
        return forward

    monkeypatch.setattr(attention.CrossAttention, "forward", with_hn(attention.softmax_attention_forward))
    model = _model(env)
    case = H.make_case(model, steps=1, and_prompt=False)
    env.shared.loaded_hypernetworks.append(hn)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    env.host.Adapter().teardown(p)

    ref_sinkhorn = H.sinkhorn_reference_forward(2, 0.7)
    monkeypatch.setattr(H, "sinkhorn_reference_forward", lambda it, eps: with_hn(ref_sinkhorn))
    expected = H.reference_run(model, case, scale=2.0, layer_paths=SD1_PATHS, iterations=2, epsilon=0.7)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------------------
# ControlNet (Mikubill/sd-webui-controlnet scripts/hook.py): cond/uncond rows are told apart by a marker
# token that process_sample prepends to every prompt (mark_prompt_context: +1024 cond, -1024 uncond) and the
# hooked UNet forward strips (unmark_prompt_context -> cond_mark, current_uc_indices). With "ControlNet is
# more important" (cfg_injection) the control is multiplied by cond_mark. The double below mirrors that.

MARK = 1024.0


def _mark(cond, positive):
    if isinstance(cond, dict):
        return {**cond, "crossattn": _mark(cond["crossattn"], positive)}
    return torch.cat([torch.full_like(cond[:1], MARK if positive else -MARK), cond])


def _hook_unet(model, hints, cfg_injection, seen):
    unet = model.model.diffusion_model

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        mark = context[:, 0, :]
        cond_mark = ((mark + MARK).abs().mean(dim=1) > 1e-3).float()[:, None, None, None]
        seen.append((x.shape[0], [i for i, m in enumerate(cond_mark.flatten().tolist()) if m < 0.5]))
        h = type(self).forward(self, x, timesteps, context[:, 1:, :], y)
        for weight, hint in hints:
            control = hint * weight
            h = h + (control * cond_mark if cfg_injection else control)  # broadcasts only for 1 or len(x) rows
        return h

    unet.forward = types.MethodType(forward, unet)


def _assert_attention_unpatched(model):
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__ and n.endswith(("attn1", "attn2"))] == []


@pytest.mark.parametrize("units,cfg_injection", [(1, False), (1, True), (3, True)])
def test_controlnet_sees_cond_rows_in_the_extra_call(env, units, cfg_injection, caplog):
    """ControlNet's hooked UNet forward reads the batch (cond marks, per-row hints): the separate call."""
    caplog.set_level("INFO", logger="asag")
    model = _model(env)
    g = torch.Generator().manual_seed(11)
    hints = [(0.5 + i, torch.randn(1, 4, 8, 8, generator=g)) for i in range(units)]
    seen = []
    _hook_unet(model, hints, cfg_injection, seen)
    case = H.make_case(model)
    case.conds = [[(_mark(c, True), w) for c, w in row] for row in case.conds]
    case.unconds = [_mark(u, False) for u in case.unconds]
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    extra = [uc for rows, uc in seen if rows == 3]  # 3 cond rows (AND on image 2); main call has 5
    assert extra and all(uc == [] for uc in extra)
    assert all(uc == [3, 4] for rows, uc in seen if rows == 5)
    assert _mode_lines(caplog) == ["ASAG: perturbed pass in a separate call "
                                   "(another extension replaced the UNet's forward (e.g. ControlNet))"]
    assert {r.levelname for r in caplog.records if "separate call" in r.getMessage()} == {"WARNING"}  # shown
    _assert_attention_unpatched(model)
    expected = H.reference_run(model, case, scale=2.0, layer_paths=SD1_PATHS, iterations=2, epsilon=0.7)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


def test_controlnet_per_row_hints_that_cannot_broadcast_turn_asag_off(env, caplog):
    """Multi-input units hold one hint per main-call row (2B); ControlNet itself fails on other batch sizes."""
    model = _model(env)
    hints = [(1.0, torch.randn(4, 4, 8, 8))]
    _hook_unet(model, hints, True, [])
    case = H.make_case(model, and_prompt=False)
    case.conds = [[(_mark(c, True), w) for c, w in row] for row in case.conds]
    case.unconds = [_mark(u, False) for u in case.unconds]
    baseline = H.run_sampler(_p(env, batch_size=2), case)
    p = _p(env, batch_size=2)
    env.host.Adapter().setup(p, _params())
    got = H.run_sampler(p, case)
    assert torch.equal(got, baseline)
    assert "perturbed pass failed" in caplog.text
    _assert_attention_unpatched(model)


# ---------------------------------------------------------------------------------------------------------
# Where batching is not safe: the separate call, one log line saying why, the same image

def _reader(params):
    """Another extension's callback that only reads (e.g. ControlNet's guidance_schedule_handler)."""
    params.sampling_step


def _row_by_row_block_forward(self, x, context=None):
    """A class-level hack ASAG cannot see that calls attn1 once per row: the inserted rows cannot be found
    in those calls, so the step falls back at run time (the normal rows are unaffected: row-wise)."""
    x = torch.cat([self.attn1(self.norm1(row)) for row in x.split(1)]) + x
    x = self.attn2(self.norm2(x), context=context) + x
    return self.ff(self.norm3(x)) + x


def _hypertile_like(module):
    """extensions-builtin/hypertile: an instance forward wrapper, marked `__webui_hypertile_params`, that splits
    the tokens into tiles as extra rows, batch outer ("b (nh h nw w) c -> (b nh nw) (h w) c")."""
    host = module.forward

    def wrapper(x, *args, **kwargs):
        b, n, c = x.shape
        out = host(x.reshape(b * 2, n // 2, c), *args, **kwargs)
        return out.reshape(b, n, c)

    setattr(module, "__webui_hypertile_params", object())
    module.forward = wrapper


FALLBACKS = {
    # name: (what to do before setup, what to do after setup, expected reason in the log line or None = batched)
    "cfg_denoised_callback": (None, lambda env, model, mp: env.callbacks.on_cfg_denoised(_reader),
                              "cfg_denoised callback"),
    "cfg_denoiser_callback_after_asag": (None, lambda env, model, mp: env.callbacks.on_cfg_denoiser(_reader),
                                         "cfg_denoiser callback"),
    "cfg_denoiser_callback_before_asag": (lambda env, model, mp: env.callbacks.on_cfg_denoiser(_reader), None,
                                          None),
    "reference_attention_block": (lambda env, model, mp: setattr(
        model.model.diffusion_model.middle_block[1].transformer_blocks[0], "_forward",
        types.MethodType(type(model.model.diffusion_model.middle_block[1].transformer_blocks[0])._forward,
                         model.model.diffusion_model.middle_block[1].transformer_blocks[0])),
        None, "transformer_blocks.0._forward"),
    "rows_split_in_the_unet": (lambda env, model, mp: mp.setattr(
        __import__("ldm.modules.attention", fromlist=["x"]).BasicTransformerBlock, "_forward",
        _row_by_row_block_forward), None, "attn1 got 1 rows in a call of 8"),
    "hypertile_on_a_chosen_layer": (lambda env, model, mp: _hypertile_like(
        dict(model.named_modules())["model.diffusion_model." + SD1_PATHS[0]]), None, None),
}


@pytest.mark.parametrize("case_name", list(FALLBACKS))
def test_unsafe_batching_falls_back_to_the_separate_call(env, monkeypatch, caplog, case_name):
    caplog.set_level("INFO", logger="asag")
    before, after, reason = FALLBACKS[case_name]
    results = {}
    for mode in ("batched", "separate"):
        model = _model(env)
        case = H.make_case(model)
        env.callbacks.clear_callbacks()
        if before:
            before(env, model, monkeypatch)
        calls = _UNetCalls(model)
        _mode(monkeypatch, mode)
        p = _p(env, batch_size=2)
        assert env.host.Adapter().setup(p, _params()) == []
        if after:
            after(env, model, monkeypatch)
        results[mode] = H.run_sampler(p, case), calls.rows
        env.host.Adapter().teardown(p)
    lines = _mode_lines(caplog)
    if reason is None:
        assert lines[0] == BATCHED_LINE
        assert len(results["batched"][1]) < len(results["separate"][1])
    else:
        assert len(lines) == 2 and reason in lines[0], lines  # one line per pass, then the forced separate one
        assert lines[0].startswith("ASAG: perturbed pass in a separate call (")
        assert len(results["batched"][1]) == len(results["separate"][1])
    torch.testing.assert_close(results["batched"][0], results["separate"][0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Proof of perturbation (issue 15.2): a chosen layer that ran no Sinkhorn attention is an error, never a zero term

@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_a_chosen_layer_that_did_not_run_is_an_error_not_a_zero_term(env, monkeypatch, caplog, mode):
    """A transformer block served from elsewhere (a cache, another extension's replaced forward) never reaches
    its attn1: the term would be 0. ASAG must say so and add nothing."""
    model = _model(env)
    case = H.make_case(model)
    block = dict(model.model.diffusion_model.named_modules())["middle_block.1.transformer_blocks.0"]
    block.forward = lambda x, context=None, **kwargs: x  # the chosen attn1 (middle.0) never runs
    baseline = H.run_sampler(_p(env, batch_size=2), case)
    _mode(monkeypatch, mode)
    p = _p(env, batch_size=2)
    p.extra_generation_params["ASAG scale"] = 2.0  # what the script writes on success
    assert env.host.Adapter().setup(p, _params(layers="middle")) == []
    got = H.run_sampler(p, case)
    torch.testing.assert_close(got, baseline, rtol=1e-5, atol=1e-5)  # no term at any step
    assert "ASAG scale" not in p.extra_generation_params
    error = p.extra_generation_params["ASAG error"]
    assert "middle.0" in error and "ran no Sinkhorn attention" in error, error
    assert any("ran no Sinkhorn attention" in c for c in p.comments)
    env.host.Adapter().teardown(p)
    del block.forward
    _assert_unpatched(model)
