"""ASAG on Forge's real diffusion transformers (backend/ era, dfdcbab6); used by forge_real_driver.py.

The real `backend.nn.flux.IntegratedFluxTransformer2DModel`, `backend.nn.chroma.IntegratedChromaTransformer2DModel`
and `backend.nn.mmditx.MMDiTX` with tiny random configs, each in the real `KModel` (with the predictor Forge's
engine uses: PredictionFlux for Flux/Chroma, PredictionDiscreteFlow for SD3.5) and `UnetPatcher`, sampled through
the real `sampling_function_inner` / `calc_cond_uncond_batch` with conds compiled by the real
`backend.sampling.condition` (Flux: `y` and distilled `guidance`, as backend/diffusion_engine/flux.py passes them).

Reference, independent of the adapter and of lib_asag.sinkhorn: D_c, D_u from the host's batching function on the
shared patcher; D_asag with the chosen blocks' instance `forward` wrapped to raise a flag and the blocks' module
global `attention` replaced by a float64 Sinkhorn (tests/sinkhorn_reference.py; Flux/Chroma: the host's own
`apply_rope` first) while the flag is up; D = D_u + w (D_c - D_u) + s (D_c - D_asag), or D_c + s (D_c - D_asag) at
CFG 1 (Flux dev/schnell: no uncond computed). Every case runs batched (the perturbed rows appended to the host's
call, the default) and separate (ASAG_BATCH=0).

Proof of perturbation (issue 15.2) on the real classes: MMDiT-X with `transformer_options["skip_layers"]` naming a
chosen block, and Flux with a chosen block answered by a cache (its forward replaced, no attention call), must give
the host's own result, no `ASAG scale` and an `ASAG error` naming the block, never a silent zero term.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import torch

B, SIGMA = 2, 0.7
TXT, CTX, VEC = 5, 32, 16


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Random weights for every parameter; q/k/v projections larger so attention is peaked (a test that can fail)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1 or name.endswith(".scale"):
                param.fill_(1.0)
            else:
                fan_in = max(1, param[0].numel())
                gain = 3.0 if ("qkv" in name or "linear1" in name) else 1.0
                param.copy_(torch.randn(param.shape, generator=g) * gain / math.sqrt(fan_in))


def build(family: str, seed: int):
    """(diffusion model, predictor, extra model conds) for a tiny random model of the real class."""
    from backend.modules import k_prediction
    if family == "flux":
        from backend.nn.flux import IntegratedFluxTransformer2DModel
        model = IntegratedFluxTransformer2DModel(in_channels=4, vec_in_dim=VEC, context_in_dim=CTX, hidden_size=64,
                                                 mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                                                 axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, guidance_embed=True)
        predictor = k_prediction.PredictionFlux(mu=1.0)
    elif family == "chroma":
        from backend.nn.chroma import IntegratedChromaTransformer2DModel
        model = IntegratedChromaTransformer2DModel(in_channels=4, vec_in_dim=VEC, context_in_dim=CTX, hidden_size=64,
                                                   mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                                                   axes_dim=[8, 12, 12], theta=10000, qkv_bias=True,
                                                   guidance_out_dim=64, guidance_hidden_dim=32, guidance_n_layers=1)
        predictor = k_prediction.PredictionFlux(mu=1.0)
    else:  # SD3.5-like MMDiT-X: depth 2 -> hidden 128, 2 heads of 64; block 0 has the x-block's attn2
        from backend.nn.mmditx import MMDiTX
        model = MMDiTX(input_size=None, patch_size=2, in_channels=16, depth=2, adm_in_channels=VEC,
                       context_embedder_config={"target": "torch.nn.Linear",
                                                "params": {"in_features": CTX, "out_features": 128}},
                       pos_embed_max_size=8, num_patches=64, qk_norm="rms", x_block_self_attn_layers=[0])
        predictor = k_prediction.PredictionDiscreteFlow(shift=3.0)
    init_weights(model, seed)
    return model, predictor


def latent_channels(family: str) -> int:
    return 16 if family == "sd3" else 4  # Flux/Chroma in_channels 4 here (x4 after 2x2 patchify)


def make_cond(condition, family, crossattn, vector, guidance, strength=None):
    """What backend.sampling.condition.compile_conditions makes of an engine's get_learned_conditioning."""
    if family == "chroma":  # Chroma's engine passes the T5 tensor only
        entry = condition.compile_conditions(crossattn)[0]
    else:
        cond = {"crossattn": crossattn, "vector": vector}
        if family == "flux":
            cond["guidance"] = guidance
        entry = condition.compile_conditions(cond)[0]
    if strength is not None:
        entry["strength"] = strength
    return entry


IMAGE_TOKENS = 16  # an 8x8 latent in 2x2 patches (Flux, Chroma and MMDiT-X all patchify 2x2)
EVERY_STEP = dict(start=0.0, end=0.99)  # start 0 with end 1 would mean the DiT default window 0.01-0.15


def reference_sinkhorn(q, k, v, heads: int, iterations: float, epsilon: float, scope: str):
    """float64 on flat (B, N, heads*d). Scope "image": on a joint call (text first, then the IMAGE_TOKENS image
    tokens; counted from the latent, not by the code under test) Sinkhorn on the image x image block only; an
    image-only call (MMDiT-X attn2) is perturbed whole."""
    from sinkhorn_reference import image_only_attention_reference, sinkhorn_attention_reference
    if scope == "image" and q.shape[1] > IMAGE_TOKENS:
        return image_only_attention_reference(q, k, v, heads, q.shape[1] - IMAGE_TOKENS, iterations, epsilon)
    return sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon)


def reference_attention(module, iterations: float, epsilon: float, scope: str):
    if module.__name__ == "backend.nn.mmditx":
        def attention(q, k, v, heads, mask=None):
            assert mask is None
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


def reference(sampling, shared, params, blocks, x, sigma, uncond, cond, cond_scale):
    options = {k: v for k, v in shared.model_options.items() if k != "model_function_wrapper"}
    with torch.no_grad():
        d_c, d_u = sampling.calc_cond_uncond_batch(shared.model, cond, uncond if cond_scale != 1.0 else None, x, sigma,
                                                   options)
        flag: list[int] = []
        modules = {sys.modules[type(b).__module__] for b in blocks}
        saved = {m: m.attention for m in modules}
        for module in modules:
            perturbed = reference_attention(module, params.iterations, params.epsilon, params.scope)
            original = saved[module]
            module.attention = (lambda p_, o_: lambda *a, **k: (p_ if flag else o_)(*a, **k))(perturbed, original)
        for block in blocks:
            def forward(*a, _block=block, **k):
                flag.append(1)
                try:
                    return type(_block).forward(_block, *a, **k)
                finally:
                    flag.pop()
            block.forward = forward
        try:
            d_asag, _ = sampling.calc_cond_uncond_batch(shared.model, cond, None, x, sigma, options)
        finally:
            for module, original in saved.items():
                module.attention = original
            for block in blocks:
                del block.forward
    guided = d_c if cond_scale == 1.0 else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), guided


class ModeLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ASAG: perturbed pass"):
            self.lines.append(record.getMessage())


@contextmanager
def batch_mode(mode: str):
    """batched = the default; separate = the documented switch ASAG_BATCH=0."""
    saved = os.environ.pop("ASAG_BATCH", None)
    if mode == "separate":
        os.environ["ASAG_BATCH"] = "0"
    try:
        yield
    finally:
        os.environ.pop("ASAG_BATCH", None)
        if saved is not None:
            os.environ["ASAG_BATCH"] = saved


def expected_calls(mode: str, n_conds: int, cond_scale: float, chosen: list[str]) -> tuple[list, list[str]]:
    """(model calls as (cond_or_uncond, hooked blocks), mode log lines) the adapter must make for one step."""
    normal = [0] * n_conds + ([] if cond_scale == 1.0 else [1])
    if mode == "separate":
        return [(normal, []), ([0] * n_conds, chosen)], ["ASAG: perturbed pass in a separate call (ASAG_BATCH=0)"]
    if n_conds > 1:  # unequal AND weights: found after the first batched call, which then is not used
        return ([(normal + [0] * n_conds, chosen), ([0] * n_conds, chosen)],
                ["ASAG: perturbed pass in a separate call (AND-prompt weights differ)"])
    return [(normal + [0] * n_conds, chosen)], ["ASAG: perturbed pass batched with cond/uncond"]


def check_case(api, adapter_cls, family: str, spec: str, cond_scale: float, n_conds: int, seed: int,
               mode: str = "batched", sabotage: str = "", scope: str = "image") -> dict:
    from backend.sampling import condition
    from lib_asag import layers
    from lib_asag.params import ASAGParams
    diffusion_model, predictor = build(family, seed)
    if sabotage == "cache":  # a first-block-cache style extension answers the chosen block without running it
        diffusion_model.double_blocks[1].forward = lambda img, txt, vec, pe, **kwargs: (img, txt)
    diffusion_model.storage_dtype = diffusion_model.computation_dtype = torch.float32
    model = api.KModel(model=diffusion_model, diffusers_scheduler=None, k_predictor=predictor, config=None)
    shared = api.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    calls: list[dict] = []
    apply_model = model.apply_model

    def recording(x_, t_, **c):
        calls.append({"cond_or_uncond": list(c["transformer_options"]["cond_or_uncond"]), "batch": int(x_.shape[0]),
                      "perturbed": sorted(n for n, m in diffusion_model.named_modules() if m._forward_pre_hooks)})
        return apply_model(x_, t_, **c)

    model.apply_model = recording
    originals = {name: sys.modules[name].attention for name in ("backend.nn.flux", "backend.nn.chroma",
                                                                 "backend.nn.mmditx") if name in sys.modules}
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=shared), is_sd3=family == "sd3")
    if sabotage == "skip_layers":  # e.g. a skip-layer-guidance extension; MMDiTX.forward honours it
        shared.model_options["transformer_options"] = {"skip_layers": [1]}
    before = copy.deepcopy(shared.model_options)
    p = SimpleNamespace(sd_model=sd_model, sampler=SimpleNamespace(model_wrap_cfg=SimpleNamespace(step=0, total_steps=8)),
                        extra_generation_params={"ASAG scale": 2.0}, is_hr_pass=False, comment=lambda text: None)
    params = ASAGParams(enabled=True, scale=2.0, layers=spec, iterations=3, epsilon=0.8, scope=scope, **EVERY_STEP)
    adapter = adapter_cls("forge_backend")
    with batch_mode(mode):
        messages = adapter.setup(p, params)
    assert messages == [], messages
    clone = sd_model.forge_objects.unet
    assert clone is not shared and clone.model is shared.model

    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, latent_channels(family), 8, 8, generator=g)
    sigma = torch.full((B,), SIGMA)
    guidance = torch.full((B,), 3.5)
    uncond = [make_cond(condition, family, torch.randn(B, TXT, CTX, generator=g), torch.randn(B, VEC, generator=g),
                        guidance)]
    weights = [0.7, 0.3][:n_conds] if n_conds > 1 else [None]
    cond = [make_cond(condition, family, torch.randn(B, TXT, CTX, generator=g), torch.randn(B, VEC, generator=g),
                      guidance, w) for w in weights]
    handler = ModeLines()
    logging.getLogger("asag").addHandler(handler)
    logging.getLogger("asag").setLevel(logging.INFO)
    try:
        with torch.no_grad(), batch_mode(mode):
            got = api.sampling.sampling_function_inner(clone.model, x, sigma, uncond, cond, cond_scale,
                                                       clone.model_options, seed=0)
    finally:
        logging.getLogger("asag").removeHandler(handler)
        del model.apply_model
    adapter.teardown(p)
    assert sd_model.forge_objects.unet is shared
    assert shared.model_options == before, "shared patcher's model_options changed"
    assert all(sys.modules[name].attention is fn for name, fn in originals.items()), "a module global left swapped"
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in diffusion_model.modules()), "hooks left"

    available = layers.find_self_attention(diffusion_model)
    refs = layers.resolve_layers(spec, available)
    chosen = [ref.module_path for ref in refs]
    if sabotage:
        return check_not_perturbed(api, shared, p, got, x, sigma, uncond, cond, cond_scale, calls, family, spec,
                                   mode, sabotage)
    want_calls, want_lines = expected_calls(mode, n_conds, cond_scale, chosen)
    # the host orders the chunks of its call as it likes (uncond first on dfdcbab6); ASAG's rows come last
    assert [(sorted(c["cond_or_uncond"]), c["perturbed"]) for c in calls] == [
        (sorted(kinds), hooked) for kinds, hooked in want_calls], calls
    assert all(c["cond_or_uncond"][len(c["cond_or_uncond"]) - n_conds:] == [0] * n_conds for c in calls), calls
    assert handler.lines == want_lines, handler.lines
    assert "ASAG error" not in p.extra_generation_params, p.extra_generation_params

    expected, plain = reference(api.sampling, shared, params, [available[r] for r in refs], x, sigma, uncond, cond,
                                cond_scale)
    tol = 2e-4 * float(expected.abs().max())  # float32 host and plan vs float64 reference attention
    term = float((expected - plain).abs().max())
    error = float((got - expected.float()).abs().max())
    assert term > 100 * tol, (term, tol)
    assert error <= tol, (error, tol)
    return {"model": type(diffusion_model).__name__, "mode": mode, "scope": scope, "spec": spec, "blocks": chosen,
            "cfg": cond_scale, "conds": n_conds, "calls": len(calls), "term_max": round(term, 4), "error_max": error,
            "out_max": round(float(expected.abs().max()), 3)}


def check_not_perturbed(api, shared, p, got, x, sigma, uncond, cond, cond_scale, calls, family, spec, mode,
                        sabotage) -> dict:
    """A chosen block that ran no Sinkhorn: the host's own result, `ASAG error` naming it, no `ASAG scale`."""
    options = {k: v for k, v in shared.model_options.items() if k != "model_function_wrapper"}
    with torch.no_grad():
        d_c, d_u = api.sampling.calc_cond_uncond_batch(shared.model, cond, uncond if cond_scale != 1.0 else None, x,
                                                       sigma, options)
    plain = d_c if cond_scale == 1.0 else d_u + (d_c - d_u) * cond_scale
    error = float((got - plain).abs().max())
    assert error <= 1e-5 * float(plain.abs().max()), error
    assert "ASAG scale" not in p.extra_generation_params, p.extra_generation_params
    message = p.extra_generation_params.get("ASAG error", "")
    block = "joint.1" if sabotage == "skip_layers" else "double.1"
    assert f"{block} ran no Sinkhorn attention" in message, message
    return {"model": family, "mode": mode, "spec": spec, "sabotage": sabotage, "calls": len(calls),
            "error": message, "diff_to_host": error}


def check_bad_name(api, adapter_cls) -> str:
    diffusion_model, predictor = build("flux", 0)
    diffusion_model.storage_dtype = diffusion_model.computation_dtype = torch.float32
    model = api.KModel(model=diffusion_model, diffusers_scheduler=None, k_predictor=predictor, config=None)
    shared = api.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=shared))
    p = SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False)
    from lib_asag.params import ASAGParams
    messages = adapter_cls("forge_backend").setup(p, ASAGParams(enabled=True))  # default preset double.7-9
    assert len(messages) == 1 and "double.0-1; single.0-1" in messages[0], messages
    assert sd_model.forge_objects.unet is shared and "sampler_post_cfg_function" not in shared.model_options
    return messages[0]


CASES = [("flux", "double.1, single.0", 1.0, 1), ("flux", "all", 1.0, 2), ("flux", "double.0", 4.0, 1),
         ("chroma", "double.0-1", 4.0, 1), ("chroma", "single.1", 4.0, 2),
         ("sd3", "joint.0", 4.0, 1), ("sd3", "joint.0-1", 4.0, 2)]


NOT_PERTURBED = [("sd3", "joint.0-1", 4.0, 1, "skip_layers"), ("flux", "double.1, single.0", 1.0, 1, "cache")]


def run(api, adapter_cls) -> dict:
    results = [check_case(api, adapter_cls, *case, seed=i, mode=mode, scope=scope)
               for scope in ("image", "joint") for mode in ("batched", "separate") for i, case in enumerate(CASES)]
    proofs = [check_case(api, adapter_cls, family, spec, cfg, conds, seed=i, mode=mode, sabotage=sabotage)
              for mode in ("batched", "separate")
              for i, (family, spec, cfg, conds, sabotage) in enumerate(NOT_PERTURBED)]
    return {"cases": results, "not_perturbed": proofs, "bad_name": check_bad_name(api, adapter_cls)}
