"""The Forge adapter (lib_asag/hosts/forge.py) against stand-ins of Forge 33e381f1 (`ldm_patched`) and
Forge dfdcbab6 (`backend/`): a tiny random UNet, the real patch protocol and the host's sampling path.

References are independent of the adapter and of lib_asag.sinkhorn: the perturbed prediction is recomputed by
overriding the chosen attn1 modules' forward with a plain float64 Sinkhorn written here, and the guided result
by the formula D_u + w (D_c - D_u) + s (D_c - D_asag)."""
from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch

from asag_modes import record_marks
from lib_asag.params import ASAGParams
from sinkhorn_reference import sinkhorn_attention_reference

HOSTS = ("forge", "forge_backend")
B, SIGMA, CFG = 2, 2.5, 5.0


# ----------------------------------------------------------------------------------------------- helpers

class Host:
    """One stand-in root loaded: the sd_model factory, processing, sampler and the adapter module."""

    def __init__(self, name: str) -> None:
        self.name = name
        factory = "backend.diffusion_engine.base" if name == "forge_backend" else "modules_forge.forge_loader"
        self.tiny_sd_model = importlib.import_module(factory).tiny_sd_model
        self.processing = importlib.import_module("modules.processing")
        self.Sampler = importlib.import_module("modules.sd_samplers_cfg_denoiser").Sampler
        self.adapter_module = importlib.import_module("lib_asag.hosts.forge")
        calc = ("backend.sampling.sampling_function" if name == "forge_backend" else "ldm_patched.modules.samplers")
        self.calc_cond_uncond_batch = importlib.import_module(calc).calc_cond_uncond_batch

    def processing_for(self, family: str = "sd1", **kwargs):
        sd_model = self.tiny_sd_model(family, **kwargs)
        return self.processing.StableDiffusionProcessing(sd_model, self.Sampler(sd_model))


@pytest.fixture(params=HOSTS)
def host(request, standins):
    standins(request.param)
    yield Host(request.param)
    importlib.import_module("lib_asag.hosts.forge").Adapter(request.param).teardown()


def inputs(seed: int = 1, conds: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g) * SIGMA
    cond = [torch.randn(B, 5, 8, generator=g) for _ in range(conds)]
    return x, torch.full((B,), SIGMA), torch.randn(B, 5, 8, generator=g), cond


def run_step(p, cond_scale=CFG, seed=1, conds=1, weights=None, step=0, total=4):
    denoiser = p.sampler.model_wrap_cfg
    denoiser.step, denoiser.total_steps = step, total
    x, sigma, uncond, cond = inputs(seed, conds)
    with torch.no_grad():
        return denoiser.forward(x, sigma, uncond, cond, cond_scale, weights)


def attn1_modules(unet_patcher, refs):
    modules = dict(unet_patcher.model.diffusion_model.named_modules())
    return [modules[ref.module_path] for ref in refs]


def reference_prediction(p, family, params: ASAGParams, refs, cond_scale=CFG, seed=1, conds=1, weights=None):
    """D_u + w (D_c - D_u) + s (D_c - D_asag) computed on the shared patcher with the host's own batching."""
    host_calc = p._host.calc_cond_uncond_batch
    unet = p.sd_model.forge_objects_original.unet
    model = unet.model
    x, sigma, uncond, cond = inputs(seed, conds)
    weights = weights or [1.0] * conds
    cond_list = [{"model_conds": {"c_crossattn": c}, "strength": w} for c, w in zip(cond, weights)]
    uncond_list = [{"model_conds": {"c_crossattn": uncond}}]
    with torch.no_grad():
        d_c, _ = host_calc(model, cond_list, None, x, sigma, unet.model_options)
        _, d_u = host_calc(model, [], uncond_list, x, sigma, unet.model_options)
        saved = []
        for module in attn1_modules(unet, refs):
            def forward(x_, context=None, value=None, mask=None, transformer_options=None, m=module):
                out = sinkhorn_attention_reference(m.to_q(x_), m.to_k(x_), m.to_v(x_), m.heads, params.iterations,
                                               params.epsilon)
                return m.to_out(out.to(x_.dtype))
            saved.append(module)
            module.forward = forward
        try:
            d_asag, _ = host_calc(model, cond_list, None, x, sigma, unet.model_options)
        finally:
            for module in saved:
                del module.forward
    guided = d_c if math.isclose(cond_scale, 1.0) else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), d_c, guided


def setup(host, p, **fields):
    params = ASAGParams(enabled=True, **fields)
    p._host = host
    messages = host.adapter_module.Adapter(host.name).setup(p, params)
    return params, messages


def use_mode(host, mode, monkeypatch):
    """"batched": the automatic choice (batched where safe); "separate": always the separate call."""
    monkeypatch.setattr(host.adapter_module, "BATCH_PERTURBED", mode == "batched")


def mode_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ASAG: perturbed pass")]


BATCHED_LINE = "ASAG: perturbed pass batched with cond/uncond"


# ----------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("root", ["forge", "forge_backend", "a1111"])
def test_detect_host_picks_the_adapter_for_the_stand_in_root(standins, root):
    standins(root)
    from lib_asag import hosts
    assert hosts.detect_host() == root
    if root != "a1111":
        adapter = hosts.get_adapter()
        assert adapter.name == root and type(adapter).__module__ == "lib_asag.hosts.forge"


def test_detect_host_imports_no_host_package(standins):
    import sys
    standins("forge_backend")
    from lib_asag import hosts
    assert hosts.detect_host() == "forge_backend"
    assert not [m for m in sys.modules if m.split(".")[0] in ("backend", "ldm_patched", "modules_forge", "modules")]


# ----------------------------------------------------------------------------------------------- patching

@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("family, spec, expected", [
    ("sd1", "middle", [("middle", 0, 0)]),
    ("sd1", "", [("middle", 0, 0)]),
    ("sd1", "middle, output.3-5", [("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]),
    ("sd1", "input.7", [("input", 7, 0)]),
    ("sdxl", "middle", [("middle", 0, 0), ("middle", 0, 1), ("middle", 0, 2)]),
    ("sdxl", "middle.1, input.4.1", [("input", 4, 1), ("middle", 0, 1)]),
    ("sdxl", "output_blocks.3.1.transformer_blocks.1.attn1", [("output", 3, 1)]),
])
def test_patch_keys_and_patched_modules_match_the_layer_selection(host, family, spec, expected, mode, monkeypatch):
    use_mode(host, mode, monkeypatch)
    p = host.processing_for(family)
    _, messages = setup(host, p, layers=spec)
    assert messages == []
    unet = p.sd_model.forge_objects.unet
    tree = dict(unet.model.diffusion_model.named_modules())
    from collections import Counter
    ran_forward, ran_out = Counter(), Counter()
    handles = []
    for name, module in tree.items():
        if name.endswith("attn1"):
            handles.append(module.register_forward_hook(lambda m, *_, n=name: ran_forward.update([n])))
            handles.append(module.to_out.register_forward_hook(lambda m, *_, n=name: ran_out.update([n])))
    try:
        run_step(p)
    finally:
        for handle in handles:
            handle.remove()
    calls = unet.model.calls
    # Batched: one call carrying the patch (host attention on the normal rows); separate: a plain call + one.
    assert [c["attn1_keys"] for c in calls] == ([sorted(expected)] if mode == "batched" else [[], sorted(expected)])
    # The host's own block walk replaced exactly these modules (to_out ran in every call, the module's own
    # forward in one call fewer).
    replaced = [n for n in ran_out if ran_out[n] > ran_forward[n]]
    assert all(ran_out[n] == len(calls) for n in ran_out)
    from lib_asag.layers import layer_from_module_name
    assert sorted(layer_from_module_name(n).patch_key for n in replaced) == sorted(expected)


@pytest.mark.parametrize("conds, cond_scale", [(1, CFG), (2, CFG), (1, 1.0)])
def test_perturbed_call_runs_the_conditional_rows_only(host, conds, cond_scale, monkeypatch):
    use_mode(host, "separate", monkeypatch)
    p = host.processing_for("sd1")
    setup(host, p)
    run_step(p, cond_scale=cond_scale, conds=conds, weights=[0.7, 0.3][:conds] if conds > 1 else None)
    normal, perturbed = p.sd_model.forge_objects.unet.model.calls
    assert perturbed["cond_or_uncond"] == [0] * conds
    assert perturbed["batch"] == B * conds
    assert normal["cond_or_uncond"] == [0] * conds + ([] if cond_scale == 1.0 else [1])


@pytest.mark.parametrize("conds, cond_scale", [(1, CFG), (2, CFG), (1, 1.0)])
def test_batched_mode_makes_one_model_call_per_step(host, conds, cond_scale, caplog):
    """The cond rows are appended to the host's call (cond_or_uncond grows by one 0 per cond chunk)."""
    caplog.set_level("INFO", logger="asag")
    p = host.processing_for("sd1")
    setup(host, p)
    for step in range(3):
        run_step(p, cond_scale=cond_scale, conds=conds, weights=[0.5] * conds, step=step)
    calls = p.sd_model.forge_objects.unet.model.calls
    normal = [0] * conds + ([] if cond_scale == 1.0 else [1])
    assert [c["cond_or_uncond"] for c in calls] == [normal + [0] * conds] * 3
    assert [c["batch"] for c in calls] == [B * (len(normal) + conds)] * 3
    assert mode_lines(caplog) == [BATCHED_LINE]  # once per pass


def test_clone_is_used_and_the_shared_patcher_is_unchanged(host):
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet
    shared.set_model_attn2_replace(lambda q, k, v, extra: q, "input", 1, 0)  # e.g. IP-Adapter
    before = copy.copy(shared.model_options)
    before_to = copy.deepcopy(shared.model_options["transformer_options"])
    setup(host, p)
    run_step(p)
    clone = p.sd_model.forge_objects.unet
    assert clone is not shared and clone.model is shared.model
    assert shared.model_options == before and shared.model_options["transformer_options"] == before_to
    assert "sampler_post_cfg_function" not in shared.model_options
    assert p.sd_model.forge_objects_original.unet is shared
    assert p.sd_model.forge_objects_after_applying_lora.unet is shared
    assert clone.model_options["transformer_options"] == before_to  # normal pass options untouched too


# ----------------------------------------------------------------------------------------------- maths

@pytest.mark.parametrize("family, spec, cond_scale, conds", [
    ("sd1", "middle", CFG, 1), ("sd1", "middle, output.3-5", CFG, 2), ("sd1", "middle", 1.0, 1),
    ("sdxl", "middle", CFG, 1), ("sd1", "middle", CFG, (0.5, 0.5)),
])
def test_guided_prediction_equals_the_formula(host, family, spec, cond_scale, conds):
    """Automatic mode: batched for one cond / equal AND weights, separate call for 0.6/0.4."""
    p = host.processing_for(family)
    params, messages = setup(host, p, layers=spec, scale=2.5, iterations=3, epsilon=0.7)
    assert messages == []
    weights = list(conds) if isinstance(conds, tuple) else [0.6, 0.4][:conds] if conds > 1 else None
    conds = len(weights or [1])
    got = run_step(p, cond_scale=cond_scale, conds=conds, weights=weights)
    from lib_asag.layers import find_self_attention, resolve_layers
    available = find_self_attention(p.sd_model.forge_objects.unet.model.diffusion_model)
    refs = resolve_layers(params.layer_spec(family), available)
    expected, _, plain = reference_prediction(p, family, params, refs, cond_scale=cond_scale, conds=conds,
                                              weights=weights)
    atol = 2e-5 * float(expected.abs().max())  # float32 model vs a float64 reference attention
    assert float((expected - plain).abs().max()) > 100 * atol  # the term is far above the tolerance
    torch.testing.assert_close(got, expected.float(), atol=atol, rtol=1e-4)


def test_rescale_blends_towards_the_std_of_the_conditional_prediction(host):
    p = host.processing_for("sd1")
    params, _ = setup(host, p, scale=4.0, rescale=0.6)
    got = run_step(p)
    from lib_asag.layers import LayerRef
    guided, d_c, _ = reference_prediction(p, "sd1", params, [LayerRef("middle", 0, 0)])
    dims = (1, 2, 3)
    ratio = d_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    expected = guided * (0.6 * ratio + 0.4)
    atol = 2e-5 * float(expected.abs().max())
    assert float((expected - guided).abs().max()) > 100 * atol
    torch.testing.assert_close(got, expected.float(), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_scale_zero_and_inactive_steps_give_exactly_plain_cfg(host, mode, monkeypatch):
    use_mode(host, mode, monkeypatch)
    p_plain = host.processing_for("sd1")
    plain = [run_step(p_plain, step=i, total=4) for i in range(4)]
    p = host.processing_for("sd1")
    setup(host, p, start=0.5, end=1.0)
    got = [run_step(p, step=i, total=4) for i in range(4)]
    calls = p.sd_model.forge_objects.unet.model.calls
    active = [[0, 1, 0]] if mode == "batched" else [[0, 1], [0]]
    assert [c["cond_or_uncond"] for c in calls] == [[0, 1], [0, 1]] + active * 2
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    assert not torch.allclose(got[2], plain[2])
    p0 = host.processing_for("sd1")
    setup(host, p0, scale=0.0)
    assert torch.equal(run_step(p0), plain[0])
    assert len(p0.sd_model.forge_objects.unet.model.calls) == 1


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_scale_zero_in_the_window_counts_its_steps_as_guided(host, mode, monkeypatch):
    """Scale 0 (README: 0 = no effect) in a window that holds the steps: ASAG ran at every step with a zero term and
    no extra call; the steps count as guided, so the script writes `ASAG scale: 0.0` and not the error for a window
    that held no step (`_report_unguided` in scripts/asag.py, which said 'none fell in its active window 0-0.99')."""
    use_mode(host, mode, monkeypatch)
    plain = run_step(host.processing_for("sd1"))
    p = host.processing_for("sd1")
    p._host = host
    adapter = host.adapter_module.Adapter(host.name)
    adapter.reset_count()
    assert adapter.setup(p, ASAGParams(enabled=True, scale=0.0, start=0.0, end=0.99)) == []
    got = [run_step(p, step=i, total=2) for i in range(2)]
    adapter.teardown(p)
    assert all(torch.equal(g, plain) for g in got)
    assert len(p.sd_model.forge_objects_original.unet.model.calls) == 2  # the host's calls only
    assert adapter.guided_steps == 2


def test_progress_falls_back_to_the_shared_state_counters(host):
    p = host.processing_for("sd1")
    shared_state = importlib.import_module("modules.shared").state
    p.sampler.model_wrap_cfg.step, p.sampler.model_wrap_cfg.total_steps = 3, 8
    assert host.adapter_module.progress(p) == (3, 8)
    p.sampler = None
    shared_state.sampling_step, shared_state.sampling_steps = 5, 10
    try:
        assert host.adapter_module.progress(p) == (5, 10)
    finally:
        shared_state.sampling_step, shared_state.sampling_steps = 0, 0


# ----------------------------------------------------------------------------------------------- refusals

def test_models_without_self_attention_are_refused_cleanly(host):
    p = host.processing_for("sd1", diffusion_model=torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1)))
    shared = p.sd_model.forge_objects.unet
    options = copy.deepcopy(shared.model_options)
    _, messages = setup(host, p)
    assert len(messages) == 1 and "self-attention" in messages[0] and "without ASAG" in messages[0]
    assert p.sd_model.forge_objects.unet is shared and shared.model_options == options


@pytest.mark.parametrize("fields, needle", [
    ({"layers": "output.0"}, "output.0"),          # SD1 output block 0 has no attention
    ({"layers": "middle.5"}, "middle.5"),
    ({"scale": float("nan")}, "scale"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"start": 0.8, "end": 0.2}, "start"),
])
def test_bad_settings_install_nothing_and_say_why(host, fields, needle):
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet
    _, messages = setup(host, p, **fields)
    assert messages and any(needle in m for m in messages)
    assert p.sd_model.forge_objects.unet is shared
    assert "sampler_post_cfg_function" not in shared.model_options


def test_disabled_or_hires_off_installs_nothing(host):
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet
    adapter = host.adapter_module.Adapter(host.name)
    assert adapter.setup(p, ASAGParams(enabled=False)) == []
    assert p.sd_model.forge_objects.unet is shared
    p.is_hr_pass = True
    assert adapter.setup(p, ASAGParams(enabled=True, hires="off")) == []
    assert p.sd_model.forge_objects.unet is shared
    assert host.adapter_module._session is None
    run_step(p)
    assert len(shared.model.calls) == 1


# ----------------------------------------------------------------------------------------------- lifecycle

def test_setup_twice_in_one_pass_guides_once(host):
    p = host.processing_for("sd1")
    setup(host, p)
    setup(host, p)  # Forge 33e381f1 sample_hr_pass calls process_before_every_sampling twice
    ours = ["asag_close_normal_pass", "asag_post_cfg"]  # closer first (batched mode), then the guidance
    functions = p.sd_model.forge_objects.unet.model_options["sampler_post_cfg_function"]
    assert [f.__name__ for f in functions] == ours
    # And on a clone another extension made of our clone (before the host's reset):
    other = p.sd_model.forge_objects.unet.clone()
    p.sd_model.forge_objects.unet = other
    setup(host, p)
    options = p.sd_model.forge_objects.unet.model_options
    assert [f.__name__ for f in options["sampler_post_cfg_function"]] == ours
    assert options["model_function_wrapper"].__name__ == "asag_model_wrapper"
    run_step(p)
    assert [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls] == [[0, 1, 0]]


def test_teardown_is_idempotent_and_disarms_clones_kept_elsewhere(host):
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet
    adapter = host.adapter_module.Adapter(host.name)
    setup(host, p)
    ours = p.sd_model.forge_objects.unet
    kept = ours.clone()  # e.g. another script cloned our clone
    adapter.teardown(p)
    adapter.teardown(p)
    adapter.teardown()
    assert p.sd_model.forge_objects.unet is shared
    plain = run_step(p)
    p.sd_model.forge_objects.unet = kept
    assert torch.equal(run_step(p), plain)
    assert len(kept.model.calls) == 2  # no perturbed call after teardown


def test_each_pass_starts_from_the_hosts_patcher(host):
    p = host.processing_for("sd1")
    lora = p.sd_model.forge_objects_after_applying_lora.unet
    seen = []
    for _ in range(2):  # first pass, hires pass
        host.processing.run_pass(p, lambda p_: setup(host, p_), lambda: seen.append(p.sd_model.forge_objects.unet))
    assert seen[0] is not lora and seen[1] is not lora and seen[1] is not seen[0]
    assert "sampler_post_cfg_function" not in lora.model_options


def test_other_attention_patches_survive(host):
    """Normal pass: another attn1 replace (2-tuple key, as Forge's PAG uses) and an attn2 replace (IP-Adapter) run.
    Perturbed pass: attn2 still runs; at the chosen layer ours supersedes the other attn1 patch."""
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet
    hits: list[tuple[str, tuple]] = []

    def other_attn1(q, k, v, extra):
        hits.append(("attn1", tuple(extra["block"]), tuple(extra["cond_or_uncond"])))
        return v

    def ip_adapter_attn2(q, k, v, extra):
        hits.append(("attn2", tuple(extra["block"]), tuple(extra["cond_or_uncond"])))
        return q * 0 + v.mean(dim=1, keepdim=True)

    shared.set_model_attn1_replace(other_attn1, "middle", 0)
    shared.set_model_attn1_replace(other_attn1, "output", 4, 0)
    shared.set_model_attn2_replace(ip_adapter_attn2, "middle", 0, 0)
    setup(host, p, layers="middle")
    run_step(p)
    normal = [(kind, block) for kind, block, rows in hits if rows == (0, 1)]
    perturbed = [(kind, block) for kind, block, rows in hits if rows == (0,)]
    assert sorted(normal) == [("attn1", ("middle", 0)), ("attn1", ("output", 4)), ("attn2", ("middle", 0))]
    assert sorted(perturbed) == [("attn1", ("output", 4)), ("attn2", ("middle", 0))]


def test_a_failing_perturbed_pass_falls_back_to_plain_cfg_once(host):
    p_plain = host.processing_for("sd1")
    plain = run_step(p_plain)
    p = host.processing_for("sd1")
    p.extra_generation_params["ASAG scale"] = 3.0  # what the script writes on success

    def wrapper(apply_model, args):  # a host-side failure on the extra call only (e.g. out of memory)
        if args["cond_or_uncond"] == [0]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return apply_model(args["input"], args["timestep"], **args["c"])

    p.sd_model.forge_objects.unet.set_model_unet_function_wrapper(wrapper)
    _, messages = setup(host, p)
    assert messages == []
    assert torch.equal(run_step(p), plain)
    assert torch.equal(run_step(p, step=1), run_step(p_plain, step=1))
    assert len(p.sd_model.forge_objects.unet.model.calls) == 2  # no retry after the failure
    assert "ASAG scale" not in p.extra_generation_params
    assert any("out of memory" in c for c in p.comments)


# ----------------------------------------------------------------------------------------------- batched mode

@pytest.mark.parametrize("cond_scale", [CFG, 1.0])
def test_batched_and_separate_modes_give_the_same_result(host, cond_scale, monkeypatch):
    results = {}
    for mode in ("batched", "separate"):
        use_mode(host, mode, monkeypatch)
        p = host.processing_for("sd1")
        params, _ = setup(host, p, layers="middle, output.3-5", scale=2.5)
        results[mode] = run_step(p, cond_scale=cond_scale)
        assert len(p.sd_model.forge_objects.unet.model.calls) == (1 if mode == "batched" else 2)
    from lib_asag.layers import LayerRef
    refs = [LayerRef("middle", 0, 0)] + [LayerRef("output", i, 0) for i in (3, 4, 5)]
    expected, _, plain = reference_prediction(p, "sd1", params, refs, cond_scale=cond_scale)
    atol = 2e-5 * float(expected.abs().max())
    assert float((expected - plain).abs().max()) > 100 * atol
    torch.testing.assert_close(results["batched"], expected.float(), atol=atol, rtol=1e-4)
    torch.testing.assert_close(results["batched"], results["separate"], atol=atol, rtol=1e-4)


class FakeControlNet:
    """What Forge's ControlNet puts into cond entries (`controlnet_linked_list`); get_control as called by
    calc_cond_uncond_batch. Its residuals are empty: only its presence matters here."""
    previous_controlnet = None

    def get_control(self, x_noisy, t, cond, batched_number):
        return {"input": [], "middle": [], "output": []}


def fallback_calls(host, p, caplog, steps=2):
    caplog.set_level("INFO", logger="asag")
    for step in range(steps):
        run_step(p, step=step)
    return [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls]


def test_controlnet_falls_back_to_the_separate_call(host, caplog):
    p = host.processing_for("sd1")
    p.sd_model.forge_objects.unet.controlnet_linked_list = FakeControlNet()
    setup(host, p)
    assert fallback_calls(host, p, caplog) == [[0, 1], [0]] * 2
    assert mode_lines(caplog) == ["ASAG: perturbed pass in a separate call (ControlNet)"]


def test_another_model_function_wrapper_falls_back_and_is_kept(host, caplog):
    p = host.processing_for("sd1")
    seen = []

    def other_wrapper(apply_model, args):  # e.g. another extension's
        seen.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    p.sd_model.forge_objects.unet.set_model_unet_function_wrapper(other_wrapper)
    setup(host, p)
    assert p.sd_model.forge_objects.unet.model_options["model_function_wrapper"] is other_wrapper
    assert fallback_calls(host, p, caplog) == [[0, 1], [0]] * 2 == seen
    assert mode_lines(caplog) == [
        "ASAG: perturbed pass in a separate call (another extension's model_function_wrapper is installed)"]


def test_too_little_free_memory_falls_back(host, caplog, monkeypatch):
    name = "backend.memory_management" if host.name == "forge_backend" else "ldm_patched.modules.model_management"
    monkeypatch.setattr(importlib.import_module(name), "FREE_MEMORY", 0)
    p = host.processing_for("sd1")
    setup(host, p)
    assert fallback_calls(host, p, caplog) == [[0, 1], [0]] * 2
    assert mode_lines(caplog) == ["ASAG: perturbed pass in a separate call (not enough free memory for 6 rows)"]


def test_unequal_and_weights_fall_back_after_the_first_step(host, caplog):
    """The wrapper cannot see the entries' weights: the first step's appended rows are dropped, then none."""
    caplog.set_level("INFO", logger="asag")
    p = host.processing_for("sd1")
    setup(host, p)
    for step in range(2):
        run_step(p, conds=2, weights=[0.7, 0.3], step=step)
    calls = [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls]
    assert calls == [[0, 0, 1, 0, 0], [0, 0], [0, 0, 1], [0, 0]]
    assert mode_lines(caplog) == ["ASAG: perturbed pass in a separate call (AND-prompt weights differ)"]


def test_model_calls_of_other_post_cfg_functions_get_no_appended_rows(host):
    """E.g. Forge's PAG, registered before ASAG, runs the cond rows again from its post-CFG function."""
    p = host.processing_for("sd1")
    shared = p.sd_model.forge_objects.unet

    def pag_like(args):
        d, _ = host.calc_cond_uncond_batch(args["model"], args["cond"], None, args["input"], args["sigma"],
                                           args["model_options"])
        return args["denoised"] + 0.0 * d

    shared.set_model_sampler_post_cfg_function(pag_like)
    setup(host, p)
    run_step(p)
    calls = [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls]
    assert calls == [[0, 1, 0], [0]]


def test_a_failing_batched_call_reruns_the_hosts_call_and_falls_back(host, caplog):
    caplog.set_level("INFO", logger="asag")
    p_plain = host.processing_for("sd1")
    p = host.processing_for("sd1")
    params, _ = setup(host, p)
    model = p.sd_model.forge_objects.unet.model
    apply_model = model.apply_model

    def failing_on_long_batches(x, t, **kwargs):  # e.g. out of memory on the longer batch only
        if x.shape[0] > 2 * B:
            raise RuntimeError("CUDA out of memory (simulated)")
        return apply_model(x, t, **kwargs)

    model.apply_model = failing_on_long_batches
    try:
        got = run_step(p)
    finally:
        del model.apply_model
    assert [c["batch"] for c in model.calls] == [2 * B, B]  # the host's call again, then the separate one
    from lib_asag.layers import LayerRef
    expected, _, _ = reference_prediction(p, "sd1", params, [LayerRef("middle", 0, 0)])
    atol = 2e-5 * float(expected.abs().max())
    torch.testing.assert_close(got, expected.float(), atol=atol, rtol=1e-4)
    assert any("out of memory" in line for line in mode_lines(caplog))
    assert not torch.equal(got, run_step(p_plain))


# ----------------------------------------------------------------------------------------------- proof of perturbation

@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_a_chosen_layer_that_did_not_run_is_an_error_not_a_zero_term(host, mode, monkeypatch, caplog):
    """A transformer block served from elsewhere (a cache extension, a replaced forward) never reaches its attn1:
    the perturbed prediction would equal the normal one. ASAG must say so (issue 15.2), never add a zero term."""
    use_mode(host, mode, monkeypatch)
    p = host.processing_for("sd1")
    modules = dict(p.sd_model.forge_objects.unet.model.diffusion_model.named_modules())
    block = modules["middle_block.1.transformer_blocks.0"]
    block.forward = lambda x, context=None, transformer_options={}: x  # the chosen attn1 (middle.0) never runs
    plain = run_step(p)
    p.extra_generation_params["ASAG scale"] = 3.0  # what the script writes on success
    _, messages = setup(host, p, layers="middle")
    assert messages == []
    torch.testing.assert_close(run_step(p), plain, rtol=1e-5, atol=1e-5)
    assert "ASAG scale" not in p.extra_generation_params
    error = p.extra_generation_params["ASAG error"]
    assert "middle.0" in error and "ran no Sinkhorn attention" in error, error
    assert any("ran no Sinkhorn attention" in c for c in p.comments)
    lines = mode_lines(caplog)
    if mode == "batched":  # the batched call missed it first, then the separate call did
        assert len(lines) == 1 and "separate call (the chosen layer/block middle.0 ran no" in lines[0], lines


@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_asags_model_calls_are_marked_for_caching_extensions(host, mode, monkeypatch):
    use_mode(host, mode, monkeypatch)
    p = host.processing_for("sd1")
    setup(host, p, layers="middle")
    seen = record_marks(p.sd_model.forge_objects.unet.model)
    run_step(p)
    # the host's normal call is never marked; ASAG's own call (batched: the one with the appended rows) is
    assert seen == ([(2 * B, False), (B, True)] if mode == "separate" else [(3 * B, True)])
