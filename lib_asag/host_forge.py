"""Forge / reForge (`ldm_patched`) and Forge (`backend/`) adapter: ASAG as a post-CFG function on a clone.

How it plugs into the host (same shape as Forge's own PAG, extensions-builtin/sd_forge_perturbed_attention,
at 33e381f1 and at dfdcbab6):

1. `setup` runs in the script's `process_before_every_sampling`. Forge rebuilds `p.sd_model.forge_objects`
   from `forge_objects_after_applying_lora` right before every sampling pass (modules/processing.py: txt2img
   `sample`, `sample_hr_pass`, img2img `sample`), so a clone assigned here lives for exactly one pass.
   `setup` clones `forge_objects.unet` (UnetPatcher.clone deep-copies `model_options`), registers one
   post-CFG function on the clone and assigns the clone back. The shared patcher is never touched.
2. The host's sampling function (ldm_patched/modules/samplers.py `sampling_function`; reForge `cfg_function`;
   backend/sampling/sampling_function.py `sampling_function_inner`) calls it after CFG with `denoised`,
   `cond_denoised`, `cond`, `input`, `sigma`, `model`, `model_options`.
3. There it runs the conditional rows once more through the host's own batching function with a *copy* of
   `model_options` in which the chosen layers' attn1 replace patches (key `(block, number, index)`, see
   ldm_patched/ldm/modules/attention.py `BasicTransformerBlock._forward`, backend/nn/unet.py idem) call the
   adversarial Sinkhorn attention, and returns `denoised + s (cond_denoised - perturbed)`.

The normal pass is unchanged: the clone's transformer options (other extensions' attn1/attn2 patches,
ControlNet, IP-Adapter) are not edited. In the perturbed pass everything but the chosen attn1 layers is
the host's. Host modules are imported inside functions only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from . import guidance, layers, params as asag_params, sinkhorn

log = logging.getLogger("asag")

HOSTS = ("forge", "forge_backend")
CalcCond = Callable[[Any, list, torch.Tensor, torch.Tensor, dict], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Host functions, resolved lazily

def cond_batch_function(host: str) -> CalcCond:
    """The host's function that runs the model on the cond rows only: (model, cond, x, sigma, options) -> D."""
    if host == "forge_backend":
        # backend/sampling/sampling_function.py
        # calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options)
        from backend.sampling.sampling_function import calc_cond_uncond_batch
        return lambda model, cond, x, sigma, options: calc_cond_uncond_batch(model, cond, None, x, sigma, options)[0]
    from ldm_patched.modules import samplers
    if hasattr(samplers, "calc_cond_batch"):
        # reForge (ComfyUI-synced): calc_cond_batch(model, conds, x_in, timestep, model_options) -> list
        return lambda model, cond, x, sigma, options: samplers.calc_cond_batch(model, [cond], x, sigma, options)[0]
    # Forge 2024 (33e381f1): calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options)
    return lambda model, cond, x, sigma, options: samplers.calc_cond_uncond_batch(model, cond, None, x, sigma,
                                                                                  options)[0]


def with_attn1_replace(model_options: dict, patch: Callable, keys: Iterable[tuple]) -> dict:
    """A copy of `model_options` with `patch` as attn1 replace at `keys`; the input is left untouched.

    Copies each dict level on the way down, as modules_forge/unet_patcher.py copy_and_update_model_options
    does (backend/patcher/base.py set_model_options_patch_replace copies all but the top level). Replace
    patches of other layers and of attn2 are kept; a patch at the same layer is superseded here only."""
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    attn1 = dict(patches_replace.get("attn1", {}))
    for key in keys:
        attn1[tuple(key)] = patch
    patches_replace["attn1"] = attn1
    transformer_options["patches_replace"] = patches_replace
    options["transformer_options"] = transformer_options
    return options


def sinkhorn_attn1(iterations: int, epsilon: float) -> Callable:
    """An attn1 replace patch: (q, k, v, extra_options) -> attention output before `to_out`.

    `extra_options["n_heads"]` is set by BasicTransformerBlock._forward before it calls the patch."""

    def attn1_replace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=extra_options["n_heads"],
                                                       iterations=iterations, epsilon=epsilon)

    attn1_replace.asag = True
    return attn1_replace


def progress(p: Any) -> tuple[int, int]:
    """(step, total) of the running pass, as A1111's CFGDenoiser counts them (model calls).

    `p.sampler.model_wrap_cfg` is the CFGDenoiser: `step` is incremented after each forward and
    `total_steps` is set by Sampler.launch_sampling (modules/sd_samplers_common.py, both Forge eras, reForge).
    It is 0-based for the call being made, unlike `shared.state.sampling_step` which the step callback sets
    after the model call; that is the fallback."""
    denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    step, total = getattr(denoiser, "step", None), getattr(denoiser, "total_steps", None)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return step, total
    from modules import shared
    return int(shared.state.sampling_step), int(shared.state.sampling_steps)


# ---------------------------------------------------------------------------------------------------------
# Per-pass state

@dataclass
class _Session:
    p: Any
    params: asag_params.ASAGParams
    refs: list[layers.LayerRef]
    calc_cond: CalcCond
    original_unet: Any
    clone: Any
    applied_steps: int = 0
    failed: bool = False
    errors: list[str] = field(default_factory=list)


_session: _Session | None = None


def _is_interrupt(error: BaseException) -> bool:
    """The host's interrupt/skip exceptions must propagate (e.g. model_management.InterruptProcessingException)."""
    return "interrupt" in type(error).__name__.lower()


def _interrupted() -> bool:
    """Whether the user pressed Interrupt/Skip (modules/shared_state.py State); False outside a WebUI."""
    try:
        from modules import shared
    except ImportError:
        return False
    state = getattr(shared, "state", None)
    return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))


def _fail(session: _Session, error: BaseException) -> None:
    """Turn ASAG off for the rest of this pass, say so once, keep the infotext honest."""
    session.failed = True
    message = f"ASAG turned off: {type(error).__name__}: {error}"
    session.errors.append(message)
    log.error("ASAG: the perturbed pass failed (%s: %s); continuing without ASAG for this image.",
              type(error).__name__, error, exc_info=error)
    p = session.p
    try:
        if session.applied_steps == 0:
            for key in asag_params.INFOTEXT_KEYS.values():
                p.extra_generation_params.pop(key, None)
        else:
            p.extra_generation_params["ASAG error"] = f"stopped after {session.applied_steps} steps"
        p.comment(message)
    except Exception:  # p without these fields: the log line is enough
        pass


def _guided(session: _Session, args: dict, scale: float) -> torch.Tensor:
    denoised, cond_denoised = args["denoised"], args["cond_denoised"]
    patch = sinkhorn_attn1(session.params.iterations, session.params.epsilon)
    options = with_attn1_replace(args["model_options"], patch, [ref.patch_key for ref in session.refs])
    with torch.no_grad():
        perturbed = session.calc_cond(args["model"], args["cond"], args["input"], args["sigma"], options)
    if perturbed.shape != denoised.shape:
        raise RuntimeError(f"perturbed prediction has shape {tuple(perturbed.shape)}, "
                           f"CFG result {tuple(denoised.shape)}")
    guided = denoised + guidance.asag_term(cond_denoised, perturbed.to(denoised.dtype), scale)
    if session.params.rescale > 0:
        guided = guidance.rescale_guidance(guided, cond_denoised, session.params.rescale)
    return guided


def _post_cfg_function(session: _Session) -> Callable[[dict], torch.Tensor]:
    """The post-CFG function for one pass. A plain closure: UnetPatcher.clone deep-copies model_options and
    deepcopy keeps functions as they are (a callable object would be copied with `p` inside it)."""

    def asag_post_cfg(args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if _session is not session or session.failed:
            return denoised  # torn down, or failed earlier in this pass
        try:
            if _interrupted():
                return denoised
            scale = guidance.effective_scale(session.params, *progress(session.p))
            if scale == 0.0:
                return denoised  # exactly the host's CFG result, no extra model call
            guided = _guided(session, args, scale)
        except Exception as e:
            if _is_interrupt(e):
                raise
            _fail(session, e)
            return denoised
        session.applied_steps += 1
        return guided

    asag_post_cfg.asag = True
    return asag_post_cfg


# ---------------------------------------------------------------------------------------------------------

def _unsupported(sd_model: Any, diffusion_model: Any, available: dict) -> str | None:
    if getattr(sd_model, "cond_stage_key", None) == "edit":
        return ("ASAG does not support edit models (InstructPix2Pix): their CFG mixes image and text "
                "guidance. Generating without ASAG.")
    if not available:
        kind = type(diffusion_model).__name__
        return (f"ASAG needs a UNet with self-attention layers (SD1.x, SD2.x, SDXL); this model ({kind}) has "
                "none. Generating without ASAG.")
    return None


def _drop_asag_functions(unet: Any) -> None:
    """Remove post-CFG functions of an earlier setup from a clone (setup twice on one pass never doubles)."""
    functions = unet.model_options.get("sampler_post_cfg_function", [])
    kept = [fn for fn in functions if not getattr(fn, "asag", False)]
    if len(kept) != len(functions):
        unet.model_options["sampler_post_cfg_function"] = kept


class Adapter:
    """ASAG for Forge-family hosts: `setup` per sampling pass (first pass, hires pass), `teardown` after."""

    def __init__(self, host: str = "forge") -> None:
        if host not in HOSTS:
            raise ValueError(f"host must be one of {HOSTS}, got {host!r}")
        self.name = host

    def setup(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        """Install ASAG on a clone of the UNet patcher for this pass. Returns user messages; never raises."""
        self.teardown(p)
        try:
            return self._setup(p, params)
        except Exception as e:
            self.teardown(p)
            log.exception("ASAG: setup failed")
            return [f"ASAG could not start ({type(e).__name__}: {e}); generating without ASAG."]

    def _setup(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        global _session
        if not params.enabled or (getattr(p, "is_hr_pass", False) and params.hires == "off"):
            return []
        problems = params.validate()
        if problems:
            return problems
        sd_model = p.sd_model
        unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        if unet is None:
            return ["ASAG: this model has no Forge UNet patcher (forge_objects.unet). Generating without ASAG."]
        diffusion_model = unet.model.diffusion_model
        available = layers.find_self_attention(diffusion_model)
        refusal = _unsupported(sd_model, diffusion_model, available)
        if refusal:
            return [refusal]
        try:
            refs = layers.resolve_layers(params.layer_spec(layers.model_family(sd_model, available)), available)
        except layers.LayerSpecError as e:
            return [f"{e}. Generating without ASAG."]
        clone = unet.clone()
        _drop_asag_functions(clone)
        session = _Session(p, params, refs, cond_batch_function(self.name), unet, clone)
        # ldm_patched/modules/model_patcher.py and backend/patcher/base.py:
        # set_model_sampler_post_cfg_function(post_cfg_function, disable_cfg1_optimization=False).
        # cfg1 optimisation stays on: ASAG needs only the cond rows (D = D_c + s (D_c - D_asag)).
        clone.set_model_sampler_post_cfg_function(_post_cfg_function(session))
        sd_model.forge_objects.unet = clone
        _session = session
        return []

    def teardown(self, p: Any = None) -> None:
        """Idempotent. Disarms the post-CFG function and puts the original patcher back if ours is still set.

        Forge itself discards the clone before the next pass (processing.py reassigns forge_objects from
        forge_objects_after_applying_lora), so this only matters on error paths."""
        global _session
        session, _session = _session, None
        if session is None:
            return
        objects = getattr(getattr(session.p, "sd_model", None), "forge_objects", None)
        if objects is not None and getattr(objects, "unet", None) is session.clone:
            objects.unet = session.original_unet
