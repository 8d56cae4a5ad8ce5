"""ASAG on ersatzForge's own diffusion-transformer classes (fca12a2), in its own process; run by test_forks_real.py.

Usage: python forks_real_dit.py <ersatzForge webui folder> <repo root> [family ...]. Prints one JSON line;
exits non-zero on a failed check, 3 when a host dependency is missing.

Each family's real model class (backend/nn/cosmos_predict2.py MiniTrainDIT for Anima, flux2.py, lumina2.py,
wan.py, mmditx.py, chroma.py, flux.py) is built small with random weights -- Flux and Chroma cannot be: their
forward hard-codes 24 heads x 128 (scratch buffers) and Chroma a 3072-wide Approximator, so they are built at full
width with one double and one single block (about 1.3 and 2.4 GB in float32) -- wrapped in the real
`backend.modules.k_model.KModel` and `backend.patcher.unet.UnetPatcher`, and sampled through the real
`backend.sampling.sampling_function.sampling_function_inner` with ASAG's clone and post-CFG function.

The reference is independent of lib_asag: D_c, D_u from the host's `calc_cond_uncond_batch` on the shared
patcher; D_asag with the module global each family's blocks call (read from the source, docs/hosts-forks.md)
replaced by a float64 Sinkhorn (tests/sinkhorn_reference.py) while one of the chosen modules' instance forward
is running -- the whole block, or only `self_attn` for Anima and Wan, whose cross-attention calls the same
global -- and D = D_u + w (D_c - D_u) + s (D_c - D_asag) (D_c + s (D_c - D_asag) at CFG 1).

The WebUI's `modules.shared` is replaced by a placeholder whose `opts` holds the neutral values the model and
sampling files read (ersatzForge reads `opts.prediction_scaling`, `cfg_rescale`, `scalePE_flux`, ... at call
time); `backend.args` is given `--always-cpu`.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Mapping

import torch

B, SIGMA, TXT = 2, 0.6, 5
MISSING_DEPENDENCY = 3


class Opts(SimpleNamespace):
    """ersatzForge's options with their defaults where they change the maths; anything else reads as off (0)."""

    def __getattr__(self, name):
        return 0


def placeholder_shared() -> None:
    shared = types.ModuleType("modules.shared")
    shared.opts = Opts(prediction_scaling=1.0, epsilon_scaling=1.0, epsilon_modulation=False, cfg_normalization=0.0,
                       cfg_rescale=0.0, sigma_max=None, scalePE_flux=0, scalePE_lumina2=0, dynamicPE_flux=False,
                       use_dynamicPE=False)
    shared.state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
    sys.modules["modules.shared"] = shared
    try:
        import modules
    except ModuleNotFoundError:  # a tree of the host's backend/ alone (Forge Neo): no WebUI `modules` package
        modules = sys.modules["modules"] = types.ModuleType("modules")
        modules.__path__ = []
    modules.shared = shared


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (Forge's ops leave weights uninitialised); q/k projections larger so that attention
    is peaked and the Sinkhorn plan differs from softmax (a test that can fail); norms at 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                fan_in = max(1, param[0].numel())
                strong = any(part in name for part in ("qkv", "q_proj", "k_proj", "linear1", ".q.", ".k.", "to_q", "to_k"))
                param.copy_(torch.randn(param.shape, generator=g) * (3.0 if strong else 1.0) / math.sqrt(fan_in))


# family -> (module whose global the chosen modules call, that global's name, layout)
SWAPS = {"anima": ("backend.nn.cosmos_predict2", "attention_function", "heads"),
         "flux": ("backend.nn.flux", "attention_function", "heads"),
         "flux2": ("backend.nn.flux", "attention_function", "heads"),
         "chroma": ("backend.nn.chroma", "attention_function", "heads"),
         "sd3": ("backend.nn.mmditx", "attention_function", "flat"),
         "lumina2": ("backend.nn.lumina2", "attention_function", "heads"),
         "wan": ("backend.nn.wan", "optimized_attention", "flat")}


def build(family: str, seed: int):
    """(diffusion model, predictor, latent channels, context width, extra cond keys) of the real class."""
    from backend.modules import k_prediction
    flow = k_prediction.PredictionDiscreteFlow(shift=3.0)
    if family == "anima":
        from backend.nn.cosmos_predict2 import MiniTrainDIT
        model = MiniTrainDIT(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16,
                             patch_spatial=2, patch_temporal=1, concat_padding_mask=True, model_channels=64,
                             num_blocks=2, num_heads=2, crossattn_emb_channels=32, pos_emb_cls="rope3d",
                             use_adaln_lora=True, adaln_lora_dim=32, rope_h_extrapolation_ratio=4.0,
                             rope_w_extrapolation_ratio=4.0, rope_enable_fps_modulation=False)
        spec = (model, flow, 16, 32)
    elif family == "flux2":
        from backend.nn.flux2 import IntegratedFlux2Transformer2DModel
        model = IntegratedFlux2Transformer2DModel(in_channels=32, out_channels=32, vec_in_dim=None, context_in_dim=32,
                                                  hidden_size=64, mlp_ratio=3.0, num_heads=2, depth=2,
                                                  depth_single_blocks=2, axes_dim=[8, 8, 8, 8], theta=2000,
                                                  patch_size=2, qkv_bias=False, guidance_embed=False,
                                                  txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True,
                                                  ops_bias=False)
        spec = (model, flow, 32, 32)
    elif family == "lumina2":
        from backend.nn.lumina2 import Lumina2DiT
        model = Lumina2DiT(patch_size=2, in_channels=16, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2,
                           n_kv_heads=1, multiple_of=16, ffn_dim_multiplier=4.0, qk_norm=True, cap_feat_dim=32,
                           axes_dims=[8, 12, 12], axes_lens=[300, 512, 512], num_keys=0)
        spec = (model, flow, 16, 32)
    elif family == "wan":
        from backend.nn.wan import WanModel
        model = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64, ffn_dim=128,
                         freq_dim=256, text_dim=32, out_dim=16, num_heads=2, num_layers=2)
        spec = (model, flow, 16, 32)
    elif family == "sd3":
        from backend.nn.mmditx import MMDiTX
        model = MMDiTX(input_size=None, patch_size=2, in_channels=16, depth=2, adm_in_channels=16,
                       context_embedder_config={"target": "torch.nn.Linear",
                                                "params": {"in_features": 32, "out_features": 128}},
                       pos_embed_max_size=8, num_patches=64, qk_norm="rms", x_block_self_attn_layers=[0])
        spec = (model, flow, 16, 32)
    elif family in ("flux", "chroma"):  # full width: the forward hard-codes 24 heads x 128
        common = dict(in_channels=16, vec_in_dim=16, context_in_dim=32, hidden_size=3072, mlp_ratio=4.0,
                      num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
                      qkv_bias=True, guidance_embed=family == "flux")
        if family == "flux":
            from backend.nn.flux import IntegratedFluxTransformer2DModel as cls
        else:
            from backend.nn.chroma import IntegratedChromaTransformer2DModel as cls
        model = cls(**common)
        spec = (model, k_prediction.PredictionFlux(mu=1.0), 16, 32)
    else:
        raise ValueError(family)
    init_weights(model, seed)
    model.storage_dtype = model.computation_dtype = torch.float32
    return spec


def make_cond(condition, family, crossattn, g, strength=None):
    """What backend.sampling.condition.compile_conditions makes of the engine's conditioning."""
    if family == "flux":
        cond = {"crossattn": crossattn, "vector": torch.randn(B, 16, generator=g), "guidance": torch.full((B,), 3.5)}
    elif family == "sd3":
        cond = {"crossattn": crossattn, "vector": torch.randn(B, 16, generator=g)}
    elif family == "chroma":  # backend/diffusion_engine/chroma.py: crossattn and a zero guidance
        cond = {"crossattn": crossattn, "guidance": torch.zeros(B)}
    else:
        cond = crossattn
    entry = condition.compile_conditions(cond)[0]
    if strength is not None:
        entry["strength"] = strength
    return entry


IMAGE_TOKENS = 16  # the 8x8 latents of check_case in 2x2 patches
EVERY_STEP = dict(start=0.0, end=0.99)  # start 0 with end 1 would mean the DiT default window 0.01-0.15


def reference_global(layout: str, iterations: int, epsilon: float, image_only: bool = False,
                     image_tokens: int = IMAGE_TOKENS):
    """A float64 Sinkhorn with the signature and layout of the host's attention function; `image_only`: on a joint
    call of TXT + image_tokens tokens (text first; counted from the inputs, not by the code under test), the
    image-only scope."""
    from sinkhorn_reference import image_only_attention_reference, sinkhorn_attention_reference

    def attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, **kwargs):
        assert mask is None
        if skip_reshape:  # (B, heads, N, d) -> (B, N, heads*d)
            q, k, v = (t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (q, k, v))
        else:  # mmditx hands v over as (B, N, heads, d)
            k, v = (t.reshape(q.shape[0], -1, q.shape[-1]) for t in (k, v))
        if image_only and q.shape[1] != image_tokens:
            assert q.shape[1] == TXT + image_tokens, q.shape
            return image_only_attention_reference(q, k, v, heads, TXT, iterations, epsilon).to(q.dtype)
        return sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon).to(q.dtype)

    return attention


def reference(api, host, family, shared, params, targets, x, sigma, uncond, cond, cond_scale):
    module_name, global_name, layout = host.swaps[family]
    module = sys.modules[module_name]
    options = {k: v for k, v in shared.model_options.items()}
    with torch.no_grad():
        d_c, d_u = api.sampling.calc_cond_uncond_batch(shared.model, cond, uncond if cond_scale != 1.0 else None, x,
                                                       sigma, options)
        flag: list[int] = []
        from lib_asag.perturb import families
        image_only = params.scope == "image" and families.FAMILIES[host.family(family)].has_scope
        original = getattr(module, global_name)
        perturbed = reference_global(layout, params.iterations, params.epsilon, image_only,
                                     host.image_tokens.get(family, IMAGE_TOKENS))
        setattr(module, global_name, lambda *a, **k: (perturbed if flag else original)(*a, **k))
        for target in targets:
            def forward(*a, _target=target, **k):
                flag.append(1)
                try:
                    return type(_target).forward(_target, *a, **k)
                finally:
                    flag.pop()
            target.forward = forward
        try:
            d_asag, _ = api.sampling.calc_cond_uncond_batch(shared.model, cond, None, x, sigma, options)
        finally:
            setattr(module, global_name, original)
            for target in targets:
                del target.forward
    guided = d_c if cond_scale == 1.0 else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), guided


@dataclass(frozen=True)
class Host:
    """What the real-class check needs to know of one fork, read from its source: how each case's model is built
    (`build(family, seed)` -> (model, predictor, latent channels, context width)), the module global its chosen
    modules call (`swaps`: family -> (module, name, layout)), what its engine's conditioning compiles to
    (`make_cond`), which latents have a frame axis, which flags its engine sets on the loaded model, which models
    are built at full width (looser float32 tolerance), how many image tokens a joint call has and the lib_asag
    family a case's model belongs to (`family_of`, where a case is a variant of a family: Neo's Klein is Flux)."""
    name: str
    build: Callable
    swaps: Mapping[str, tuple[str, str, str]]
    make_cond: Callable
    frames: tuple[str, ...] = ()
    flags: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    full_width: tuple[str, ...] = ()
    image_tokens: Mapping[str, int] = field(default_factory=dict)
    family_of: Mapping[str, str] = field(default_factory=dict)
    config: object = None  # KModel's config (Neo's memory_required reads config.memory_usage_factor)

    def family(self, case: str) -> str:
        return self.family_of.get(case, case)

    def latent(self, case: str, channels: int) -> tuple[int, ...]:
        return (B, channels, 1, 8, 8) if case in self.frames else (B, channels, 8, 8)


class ModeLines(logging.Handler):
    """The adapter's "ASAG: perturbed pass ..." line: batched into the host's call or separate, and why."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ASAG: perturbed pass"):
            self.lines.append(record.getMessage())


def check_case(api, host, family, spec, targets, cond_scale, n_conds, seed, mode="batched", scope="image"):
    """One case (`family` is the host's case name: a lib_asag family or a variant of one) through the real KModel /
    UnetPatcher / sampling_function_inner with ASAG's adapter, against the float64 reference."""
    from lib_asag.hosts.forge import Adapter
    from lib_asag.params import ASAGParams
    diffusion_model, predictor, channels, width = host.build(family, seed)
    model = api.KModel(model=diffusion_model, diffusers_scheduler=None, k_predictor=predictor, config=host.config)
    shared = api.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    before = copy.deepcopy({k: v for k, v in shared.model_options.items()})
    module_name, global_name, _ = host.swaps[family]
    original = getattr(sys.modules[module_name], global_name)
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=shared), is_sd3=family == "sd3",
                               **host.flags.get(family, {}))
    p = SimpleNamespace(sd_model=sd_model, sampler=SimpleNamespace(model_wrap_cfg=SimpleNamespace(step=0, total_steps=8)),
                        extra_generation_params={}, is_hr_pass=False, comment=lambda text: None)
    params = ASAGParams(enabled=True, scale=2.0, layers=spec, iterations=3, epsilon=0.8, scope=scope, **EVERY_STEP)
    if mode == "separate":  # the documented switch (lib_asag/hosts/base.py switched_off)
        os.environ["ASAG_BATCH"] = "0"
    else:
        os.environ.pop("ASAG_BATCH", None)
    adapter = Adapter("forge_backend")
    messages = adapter.setup(p, params)
    assert messages == [], messages
    clone = sd_model.forge_objects.unet
    assert clone is not shared and clone.model is shared.model

    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(host.latent(family, channels), generator=g)
    sigma = torch.full((B,), SIGMA)
    uncond = [host.make_cond(api.condition, family, torch.randn(B, TXT, width, generator=g), g)]
    weights = [0.7, 0.3][:n_conds] if n_conds > 1 else [None]
    cond = [host.make_cond(api.condition, family, torch.randn(B, TXT, width, generator=g), g, w) for w in weights]
    handler = ModeLines()
    logging.getLogger("asag").addHandler(handler)
    logging.getLogger("asag").setLevel(logging.INFO)
    try:
        with torch.no_grad():
            got = api.sampling.sampling_function_inner(clone.model, x, sigma, uncond, cond, cond_scale,
                                                       clone.model_options, seed=0)
    finally:
        logging.getLogger("asag").removeHandler(handler)
    adapter.teardown(p)
    assert sd_model.forge_objects.unet is shared
    assert {k: v for k, v in shared.model_options.items()} == before, "shared patcher's model_options changed"
    assert getattr(sys.modules[module_name], global_name) is original, "a module global left swapped"
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in diffusion_model.modules()), "hooks left"

    modules = dict(diffusion_model.named_modules())
    expected, plain = reference(api, host, family, shared, params, [modules[t] for t in targets], x, sigma, uncond,
                                cond, cond_scale)
    tol = (2e-4 if family in host.full_width else 2e-5) * float(expected.abs().max())  # float32 vs float64
    term = float((expected - plain).abs().max())
    error = float((got - expected.float()).abs().max())
    assert term > 100 * tol, (family, term, tol)
    assert error <= tol, (family, error, tol)
    assert len(handler.lines) == 1 and ("separate" in handler.lines[0]) == (mode == "separate" or n_conds > 1), \
        handler.lines  # AND-prompts of different weights are never batched
    return {"family": family, "model": type(diffusion_model).__name__, "scope": scope, "spec": spec, "targets": targets,
            "cfg": cond_scale, "conds": n_conds, "mode": handler.lines[0][len("ASAG: perturbed pass "):],
            "term_max": round(term, 5), "error_max": error, "tol": tol}


def check_block_cache(api, webui: str) -> dict:
    """ersatzForge's own First Block Cache (extensions-builtin/ersatz_1stblocktea/scripts/blockcache.py, loaded
    by path as the script loader does) on the real MiniTrainDIT: over 3 steps the cache serves the host's call
    from its residual, while ASAG's perturbed call runs in full every step (Sinkhorn in the chosen block each
    time), takes no cache slot, is never batched, and the cache's class patch is back after every call."""
    import importlib.util
    from lib_asag import sinkhorn
    from lib_asag.hosts.forge import Adapter
    from lib_asag.params import ASAGParams
    path = os.path.join(webui, "extensions-builtin", "ersatz_1stblocktea", "scripts", "blockcache.py")
    spec = importlib.util.spec_from_file_location("blockcache", path)
    blockcache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blockcache)
    diffusion_model, predictor, channels, width = ERSATZ.build("anima", 7)
    model = api.KModel(model=diffusion_model, diffusers_scheduler=None, k_predictor=predictor, config=None)
    shared = api.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=shared), is_sd3=False, is_flux=False,
                               is_cosmos_predict2=True, is_webui_legacy_model=lambda: False)
    p = SimpleNamespace(sd_model=sd_model, sampler=SimpleNamespace(model_wrap_cfg=SimpleNamespace(step=0, total_steps=3)),
                        extra_generation_params={}, is_hr_pass=False, steps=3, hr_second_pass_steps=0,
                        comment=lambda text: None)
    cache = blockcache.BlockCache()
    cls = type(diffusion_model)
    cache.process(p, True, "First Block Cache", 1e9, 1, 0, False)  # threshold high: cache whenever it may
    cache.process_before_every_sampling(p, True)
    patched = cls.forward
    assert patched.__name__ == "patched_forward_cosmos_fbc", patched
    runs: list[int] = []
    original_heads = sinkhorn.adversarial_sinkhorn_attention_heads
    sinkhorn.adversarial_sinkhorn_attention_heads = lambda *a, **k: runs.append(1) or original_heads(*a, **k)
    handler = ModeLines()
    logging.getLogger("asag").addHandler(handler)
    os.environ.pop("ASAG_BATCH", None)
    try:
        assert Adapter("forge_backend").setup(p, ASAGParams(enabled=True, layers="block.1", **EVERY_STEP)) == []
        clone = sd_model.forge_objects.unet
        g = torch.Generator().manual_seed(8)
        x = torch.randn(B, channels, 8, 8, generator=g)
        uncond = [ERSATZ.make_cond(api.condition, "anima", torch.randn(B, TXT, width, generator=g), g)]
        cond = [ERSATZ.make_cond(api.condition, "anima", torch.randn(B, TXT, width, generator=g), g)]
        per_step = []
        for step, sigma in enumerate((0.9, 0.6, 0.3)):
            p.sampler.model_wrap_cfg.step = step
            before = len(runs)
            with torch.no_grad():
                api.sampling.sampling_function_inner(clone.model, x, torch.full((B,), sigma), uncond, cond, 4.0,
                                                     clone.model_options, seed=0)
            per_step.append(len(runs) - before)
            assert cls.forward is patched, "the cache's patch was not put back"
        Adapter("forge_backend").teardown(p)
        state = SimpleNamespace(slots=len(blockcache.BlockCache.residual), skipped=list(blockcache.BlockCache.skipped),
                                steps=blockcache.BlockCache.this_step)  # postprocess deletes them
    finally:
        sinkhorn.adversarial_sinkhorn_attention_heads = original_heads
        logging.getLogger("asag").removeHandler(handler)
        cache.postprocess(p, None, True)
    assert cls.forward is blockcache.BlockCache.original_forward_cosmos
    assert per_step == [1, 1, 1], per_step  # block 1's self-attention, once per step
    assert state.slots == 1, state  # one cache slot: the host's cond/uncond call only
    assert state.steps == 3 and sum(state.skipped) >= 1, state  # and the cache served that call
    assert handler.lines and "First Block Cache" in handler.lines[0], handler.lines
    return {"sinkhorn_per_step": per_step, "cache_slots": state.slots, "cache_skipped": state.skipped,
            "mode": handler.lines[0]}


ERSATZ = Host("ersatzForge", build, SWAPS, make_cond,
              full_width=("flux", "chroma"))  # about 1.3 / 2.4 GB each in float32
CASES = [("anima", "block.1", ["blocks.1.self_attn"], 4.0, 1),
         ("anima", "block.0-1", ["blocks.0.self_attn", "blocks.1.self_attn"], 1.0, 2),
         ("flux2", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], 1.0, 1),
         ("lumina2", "layer.0-1", ["layers.0", "layers.1"], 4.0, 1),
         ("wan", "block.0", ["blocks.0.self_attn"], 4.0, 1),
         ("sd3", "joint.0", ["joint_blocks.0"], 4.0, 1),
         ("chroma", "double.0, single.0", ["double_blocks.0", "single_blocks.0"], 4.0, 1),
         ("flux", "single.0", ["single_blocks.0"], 1.0, 1)]


def host_api(webui: str, repo: str, argv: list[str], paths: list[str],
             webui_modules: Mapping[str, dict] | None = None) -> SimpleNamespace:
    """Import the host's real KModel, UnetPatcher, condition and sampling_function from `webui` (with `argv` for
    its backend.args and `paths` first on sys.path), or exit MISSING_DEPENDENCY naming what is missing.
    `webui_modules`: placeholders of other WebUI modules the host's backend/ imports (name -> attributes)."""
    sys.argv = [sys.argv[0], *argv]  # backend.args parses the command line at import
    sys.path[:0] = [webui, *paths, repo, os.path.join(repo, "tests")]
    os.chdir(webui)
    try:
        placeholder_shared()
        for name, attributes in (webui_modules or {}).items():
            module = sys.modules[f"modules.{name}"] = types.ModuleType(f"modules.{name}")
            module.__dict__.update(attributes)
            setattr(sys.modules["modules"], name, module)
        from backend.modules.k_model import KModel
        from backend.patcher.unet import UnetPatcher
        from backend.sampling import condition, sampling_function
    except ModuleNotFoundError as e:
        print(json.dumps({"missing": e.name}))
        sys.exit(MISSING_DEPENDENCY)
    from lib_asag import hosts
    assert hosts.detect_host() == "forge_backend", hosts.detect_host()
    host_file = sys.modules["backend.sampling.sampling_function"].__file__
    assert host_file.startswith(os.path.abspath(webui)), host_file
    return SimpleNamespace(KModel=KModel, UnetPatcher=UnetPatcher, condition=condition, sampling=sampling_function,
                           host_file=host_file)


def check_cases(api, host: Host, cases: list, families: list[str]) -> list[dict]:
    """Every case of `families`, both scopes, batched and separate."""
    return [check_case(api, host, *case, seed=i, mode=mode, scope=scope) for scope in ("image", "joint")
            for i, case in enumerate(cases) if case[0] in families
            for mode in ("batched", "separate")]


def main(webui: str, repo: str, families: list[str]) -> None:
    api = host_api(webui, repo, ["--always-cpu"], [os.path.join(webui, "packages")])
    from lib_asag import hosts
    results = check_cases(api, ERSATZ, CASES, families)
    block_cache = check_block_cache(api, webui) if "anima" in families else None
    print(json.dumps({"host": ERSATZ.name, "host_file": api.host_file, "cases": results, "block_cache": block_cache,
                      "startup": hosts.startup_line()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or sorted(SWAPS))
