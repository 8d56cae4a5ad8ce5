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

Batched mode (the default where safe): a `model_function_wrapper` on the clone appends copies of the cond
rows to the host's normal model call and marks them in `transformer_options` (`BATCH_MARK`); the attn1
patch runs the host's own attention on the normal rows and the Sinkhorn attention on the appended ones.
The wrapper returns the normal rows to the host and keeps the perturbed ones for the post-CFG function,
which then needs no second call. It falls back to the separate call (and logs why) when another wrapper
is installed, with ControlNet, per-cond areas/masks/schedules, unequal AND weights, another attn1 patch at
a chosen layer, model inputs it does not know, or too little free memory for the larger batch.

Diffusion transformers on Forge's backend (SD3.5, Flux, Chroma) use the same clone, post-CFG function,
session and batching; only the perturbation differs: no attn1 patches there, the chosen blocks' module-level
attention is dispatched by lib_asag/perturb/dit.py around ASAG's call only (the batched call, where the
dispatcher perturbs the appended rows, or the separate call). Flux at CFG 1 thus runs cond + perturbed rows in
one call.

Every perturbed call proves it perturbed (lib_asag/perturb/proof.py: Sinkhorn calls per chosen layer/block):
a batched call that missed one falls back to the separate call; a separate call that missed one (MMDiT-X
`transformer_options["skip_layers"]` naming a chosen block, a cached block, a replaced forward) turns ASAG off
with `ASAG error` in the infotext. ASAG's calls carry `transformer_options["asag_perturbed"] = True` so that
caching extensions can skip them. The attention code itself lives in lib_asag/perturb/; this file translates.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import guidance, layers, params as asag_params
from ..perturb import dit, families, unet as perturb_unet
from ..perturb.proof import SinkhornCalls
from ..perturb.rows import is_interrupt
from . import caches, describe_host
from .base import AdapterBase, edit_model_refusal, log_mode, report_failure, switched_off

log = logging.getLogger("asag")

HOSTS = ("forge", "forge_backend")
CalcCond = Callable[[Any, list, torch.Tensor, torch.Tensor, dict], torch.Tensor]

BATCH_PERTURBED = True  # False (or env ASAG_BATCH=0, lib_asag/hosts/base.py): always the separate call
BATCH_MARK = "asag_normal_rows"  # transformer_options key: rows before it are the host's, after it ASAG's
PERTURBED_MARK = "asag_perturbed"  # transformer_options key: True in every call with ASAG's perturbed rows
MEMORY_MARGIN = 1.5  # the stricter of the hosts' own batching margins (reForge _calc_cond_batch)
# Cond entry keys that make the host weight, crop, skip or split entries (get_area_and_mult,
# _calc_cond_batch): the perturbed rows could not be combined like the host combines the cond rows.
UNBATCHABLE_COND_KEYS = {"control": "ControlNet", "area": "area conds", "mask": "masked conds",
                         "timestep_start": "scheduled conds", "timestep_end": "scheduled conds",
                         "gligen": "GLIGEN", "hooks": "hooked conds", "default": "default conds"}


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


def with_attn1_replace(model_options: dict, patches: dict[tuple, Callable]) -> dict:
    """A copy of `model_options` with attn1 replace patches (key -> patch); the input is left untouched.

    Copies each dict level on the way down, as modules_forge/unet_patcher.py copy_and_update_model_options
    does (backend/patcher/base.py set_model_options_patch_replace copies all but the top level). Replace
    patches of other layers and of attn2 are kept; a patch at the same layer is superseded here only."""
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    attn1 = dict(patches_replace.get("attn1", {}))
    attn1.update({tuple(key): patch for key, patch in patches.items()})
    patches_replace["attn1"] = attn1
    transformer_options["patches_replace"] = patches_replace
    options["transformer_options"] = transformer_options
    return options


def host_attention(host: str) -> Callable:
    """The attention function the host's CrossAttention.forward calls (module globals, read per call).

    ldm_patched/ldm/modules/attention.py `optimized_attention` (Forge 33e381f1, reForge);
    backend/nn/unet.py `attention_function` (imported there from backend/attention.py, Forge dfdcbab6)."""
    if host == "forge_backend":
        from backend.nn import unet
        return unet.attention_function
    from ldm_patched.ldm.modules import attention
    return attention.optimized_attention


def free_memory(host: str, device: torch.device) -> float:
    """The host's free-memory estimate, the one its batching function sizes batches with."""
    if host == "forge_backend":
        from backend import memory_management
        return memory_management.get_free_memory(device)
    from ldm_patched.modules import model_management
    return model_management.get_free_memory(device)


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
class _Capture:
    """Perturbed cond chunks the wrapper kept from the normal pass of one model evaluation (keyed by the
    host's sigma tensor, the same object in every call of that evaluation and in the post-CFG args)."""
    sigma: Any
    chunks: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Session:
    p: Any
    params: asag_params.ASAGParams
    refs: list[layers.LayerRef]
    calc_cond: CalcCond
    original_unet: Any
    clone: Any
    host: str = "forge"
    applied_steps: int = 0
    failed: bool = False
    errors: list[str] = field(default_factory=list)
    batch_off: str | None = None  # why the perturbed rows are not batched (for the rest of the pass)
    capture: _Capture | None = None
    closed_sigma: Any = None  # sigma of the evaluation whose normal pass is over
    logged_mode: str | None = None
    blocks: dict[layers.LayerRef, torch.nn.Module] | None = None  # the chosen DiT blocks; None = UNet attn1
    only_separate: str = ""  # the family's reason why its rows never share the host's call (families.py)

    def patches(self, calls: SinkhornCalls, host_attention: Callable | None = None) -> dict[tuple, Callable]:
        """attn1 replace patches for the chosen UNet layers, counting into `calls` (batched with host_attention)."""
        it, eps = self.params.iterations, self.params.epsilon
        return {ref.patch_key: perturb_unet.replace_patch(ref, it, eps, calls, host_attention, BATCH_MARK)
                for ref in self.refs}

    def perturbed_blocks(self, calls: SinkhornCalls, rows: tuple[int, int, int] | None = None):
        """The chosen DiT blocks perturbed (on `rows`) for one call; nothing for a UNet (its patches do it)."""
        if self.blocks is None:
            return nullcontext(calls)
        return dit.perturbed_blocks(self.blocks, iterations=self.params.iterations, epsilon=self.params.epsilon,
                                    rows=rows, calls=calls, scope=self.params.scope,
                                    model=self.clone.model.diffusion_model)


_session: _Session | None = None


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
    session.errors.append(report_failure(session.p, session.applied_steps, error))


def _log_mode(session: _Session, reason: str | None) -> None:
    """Say once per pass (again only if it changes) how the perturbed prediction is computed."""
    only_mode = bool(session.only_separate) and reason == session.only_separate
    session.logged_mode = log_mode(reason, session.logged_mode, only_mode=only_mode)


def _cond_reason(cond: list) -> str | None:
    """Why these cond entries cannot be combined from batched rows as simply as the host combines them."""
    for entry in cond:
        for key, what in UNBATCHABLE_COND_KEYS.items():
            if entry.get(key) is not None:
                return what
    if len({float(entry.get("strength", 1.0)) for entry in cond}) > 1:
        return "AND-prompt weights differ"
    return None


def _batched_prediction(session: _Session, args: dict) -> tuple[torch.Tensor | None, str | None]:
    """The perturbed prediction from the rows the wrapper appended to this evaluation's normal call.

    Full-frame entries of equal strength: the host's weighted average (calc_cond_uncond_batch /
    _calc_cond_batch: sum(out * mult) / sum(mult)) is the plain mean of the chunks. None and why otherwise."""
    capture, session.capture = session.capture, None
    if session.batch_off is None:
        session.batch_off = _cond_reason(args["cond"])
    if session.batch_off is not None:
        return None, session.batch_off
    if capture is None or capture.sigma is not args["sigma"] or not capture.chunks:
        return None, "the host's model call did not go through the ASAG wrapper"
    if len(capture.chunks) != len(args["cond"]):
        return None, f"{len(capture.chunks)} perturbed chunks for {len(args['cond'])} conds"
    return sum(capture.chunks) / len(capture.chunks), None


def _marked(options: dict) -> dict:
    """`transformer_options` with ASAG's mark (a copy): caching extensions can tell ASAG's call and skip it."""
    return {**options, PERTURBED_MARK: True}


def _separate_prediction(session: _Session, args: dict) -> torch.Tensor:
    """The perturbed prediction from a call of its own on the cond rows (like Forge's PAG), proven perturbed."""
    calls = SinkhornCalls()
    options = dict(args["model_options"])
    options["transformer_options"] = _marked(options.get("transformer_options", {}))
    if session.blocks is None:
        options = with_attn1_replace(options, session.patches(calls))
    if getattr(options.get("model_function_wrapper"), "asag", False):
        del options["model_function_wrapper"]  # ours (top level is a copy): nothing to append to this call
    options = caches.without_cache_options(options)  # Forge Neo's First Block Cache: not for this call
    with torch.no_grad(), session.perturbed_blocks(calls), caches.uncached(args["model"].diffusion_model):
        perturbed = session.calc_cond(args["model"], args["cond"], args["input"], args["sigma"], options)
    calls.check(session.refs)  # a chosen layer/block that ran no Sinkhorn: no term, an error in the response
    return perturbed


def _guided(session: _Session, args: dict, scale: float) -> torch.Tensor:
    denoised, cond_denoised = args["denoised"], args["cond_denoised"]
    perturbed, reason = _batched_prediction(session, args)
    _log_mode(session, reason)
    if perturbed is None:
        perturbed = _separate_prediction(session, args)
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
            step, total = progress(session.p)
            scale = guidance.effective_scale(session.params, step, total)
            if scale == 0.0:
                if guidance.is_active(step, total, start=session.params.start, end=session.params.end):
                    session.applied_steps += 1  # scale 0 in the window: ASAG ran, its term is exactly 0
                return denoised  # exactly the host's CFG result, no extra model call
            guided = _guided(session, args, scale)
        except Exception as e:
            if is_interrupt(e):
                raise
            _fail(session, e)
            return denoised
        session.applied_steps += 1
        return guided

    asag_post_cfg.asag = True
    return asag_post_cfg


# ---------------------------------------------------------------------------------------------------------
# Batched mode: the model_function_wrapper (same call in calc_cond_uncond_batch at 33e381f1 and dfdcbab6 and
# in reForge _calc_cond_batch: wrapper(model.apply_model, {"input", "timestep", "c", "cond_or_uncond"}),
# output chunked by len(cond_or_uncond); `c` holds the model inputs and this call's transformer_options)

def _unbatchable_call(session: _Session, args: dict) -> str | None:
    """Why cond rows cannot be appended to this model call, or None."""
    c, x = args["c"], args["input"]
    if c.get("control") is not None:
        return "ControlNet"
    cache = caches.active(session.clone.model.diffusion_model, {"transformer_options": c.get("transformer_options", {})})
    if cache is not None:
        return f"{cache} is on (it would serve the perturbed rows from its cache)"
    attn1 = c.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for ref in (session.refs if session.blocks is None else ()):
        if ref.patch_key in attn1 or ref.patch_key[:2] in attn1:
            return f"another attn1 patch at {ref}"  # the normal rows must keep it
    for key, value in c.items():
        batched = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == x.shape[0]
        if key != "transformer_options" and not (batched or value is None or isinstance(value, (bool, int, float, str))):
            return f"model input {key!r}"
    rows = x.shape[0] + x.shape[0] // len(args["cond_or_uncond"]) * list(args["cond_or_uncond"]).count(0)
    try:
        needed = session.clone.model.memory_required([rows, *x.shape[1:]]) * MEMORY_MARGIN
        available = free_memory(session.host, x.device)
    except Exception as e:
        return f"free memory unknown: {type(e).__name__}"
    if needed >= available:
        return f"not enough free memory for {rows} rows"
    return None


def _extended_options(session: _Session, options: dict, cond_or_uncond: list, chunks: list[int],
                      rows: int, per_chunk: int, calls: SinkhornCalls) -> dict:
    """This call's transformer_options for the longer batch: the appended rows are cond rows to every patch
    that reads cond_or_uncond / cond_mark / cond_indices / uuids (as in the separate call), and ASAG's attn1
    patch at the chosen layers (UNet) knows where they start."""
    extra = len(chunks) * per_chunk
    options = dict(options)
    options["cond_or_uncond"] = list(cond_or_uncond) + [0] * len(chunks)
    if "uuids" in options:  # reForge
        options["uuids"] = list(options["uuids"]) + [options["uuids"][i] for i in chunks]
    if "cond_mark" in options:  # Forge compute_cond_mark: one entry per row, 0 = cond
        options["cond_mark"] = torch.cat([options["cond_mark"], options["cond_mark"].new_zeros(extra)])
    if "cond_indices" in options:  # Forge compute_cond_indices
        options["cond_indices"] = list(options["cond_indices"]) + list(range(rows, rows + extra))
    options[BATCH_MARK] = rows
    options = _marked(options)
    if session.blocks is not None:
        return options
    patches = session.patches(calls, host_attention(session.host))
    return with_attn1_replace({"transformer_options": options}, patches)["transformer_options"]


def _append_cond_rows(session: _Session, args: dict, calls: SinkhornCalls) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
    """(input, timestep, c, normal rows) with a copy of every cond chunk's rows appended."""
    x, c, cond_or_uncond = args["input"], args["c"], list(args["cond_or_uncond"])
    rows, per_chunk = x.shape[0], x.shape[0] // len(cond_or_uncond)
    chunks = [i for i, kind in enumerate(cond_or_uncond) if kind == 0]
    index = torch.cat([torch.arange(i * per_chunk, (i + 1) * per_chunk) for i in chunks])
    extended = {key: torch.cat([value, value[index.to(value.device)]]) if isinstance(value, torch.Tensor) else value
                for key, value in c.items() if key != "transformer_options"}
    extended["transformer_options"] = _extended_options(session, c.get("transformer_options", {}), cond_or_uncond,
                                                        chunks, rows, per_chunk, calls)
    timestep = args["timestep"]
    return (torch.cat([x, x[index.to(x.device)]]), torch.cat([timestep, timestep[index.to(timestep.device)]]),
            extended, rows)


def _batch_plan(session: _Session, args: dict,
                calls: SinkhornCalls) -> tuple[torch.Tensor, torch.Tensor, dict, int] | None:
    """The longer call to make instead of this one, or None to run it as the host built it."""
    sigma = args["c"].get("transformer_options", {}).get("sigmas")
    if (_session is not session or session.failed or session.batch_off is not None or sigma is None
            or sigma is session.closed_sigma or 0 not in args["cond_or_uncond"] or _interrupted()):
        return None
    if guidance.effective_scale(session.params, *progress(session.p)) == 0.0:
        return None
    session.batch_off = _unbatchable_call(session, args)
    if session.batch_off is not None:
        return None
    if session.capture is None or session.capture.sigma is not sigma:
        session.capture = _Capture(sigma)
    return _append_cond_rows(session, args, calls)


def _model_wrapper(session: _Session) -> Callable[[Callable, dict], torch.Tensor]:
    """model_function_wrapper: runs the host's call with the cond rows appended, keeps the perturbed rows,
    returns the host exactly the rows it asked for. A plain closure (see _post_cfg_function)."""

    def asag_model_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        calls = SinkhornCalls()
        plan = _batch_plan(session, args, calls)
        if plan is None:
            return apply_model(args["input"], args["timestep"], **args["c"])
        x, timestep, c, rows = plan
        try:
            with session.perturbed_blocks(calls, (x.shape[0], rows, x.shape[0])):
                output = apply_model(x, timestep, **c)
        except Exception as e:
            if is_interrupt(e):
                raise
            session.batch_off = f"the batched call failed: {type(e).__name__}: {e}"
            log.warning("ASAG: %s; running the host's call without the perturbed rows", session.batch_off)
            return apply_model(args["input"], args["timestep"], **args["c"])
        problem = calls.problem(session.refs)  # every chosen layer/block ran Sinkhorn on the appended rows
        if problem:
            session.batch_off = problem  # the post-CFG function falls back to the separate call
        else:
            per_chunk = rows // len(args["cond_or_uncond"])
            session.capture.chunks.extend(output[rows:].split(per_chunk))
        return output[:rows]

    asag_model_wrapper.asag = True
    return asag_model_wrapper


def _close_normal_pass(session: _Session) -> Callable[[dict], torch.Tensor]:
    """First post-CFG function: this evaluation's normal pass is over, so model calls that other post-CFG
    functions make with the same sigma (e.g. Forge's PAG) get no appended rows."""

    def asag_close_normal_pass(args: dict) -> torch.Tensor:
        if _session is session:
            session.closed_sigma = args["sigma"]
        return args["denoised"]

    asag_close_normal_pass.asag = True
    return asag_close_normal_pass


def _install(clone: Any, session: _Session) -> None:
    """Register the post-CFG function on the clone and, where batching is possible, the wrapper and closer."""
    # ldm_patched/modules/model_patcher.py and backend/patcher/base.py:
    # set_model_sampler_post_cfg_function(post_cfg_function, disable_cfg1_optimization=False).
    # cfg1 optimisation stays on: ASAG needs only the cond rows (D = D_c + s (D_c - D_asag)).
    clone.set_model_sampler_post_cfg_function(_post_cfg_function(session))
    if session.only_separate:
        session.batch_off = session.only_separate  # the only mode of this family: logged at INFO
    elif not BATCH_PERTURBED or switched_off():
        session.batch_off = switched_off() or "batching switched off (hosts/forge.py BATCH_PERTURBED)"
    elif clone.model_options.get("model_function_wrapper") is not None:
        session.batch_off = "another extension's model_function_wrapper is installed"
    else:
        clone.set_model_unet_function_wrapper(_model_wrapper(session))
        functions = clone.model_options["sampler_post_cfg_function"]
        clone.model_options["sampler_post_cfg_function"] = [_close_normal_pass(session)] + functions


# ---------------------------------------------------------------------------------------------------------

def _unsupported(sd_model: Any, diffusion_model: Any, available: dict) -> str | None:
    refusal = edit_model_refusal(sd_model)
    if refusal:
        return refusal
    if not available:
        kind = type(diffusion_model).__name__
        return (f"ASAG needs self-attention layers (a SD1.x / SD2.x / SDXL UNet, or {' / '.join(families.dit_titles())} "
                f"blocks); this model ({kind}) has none. Generating without ASAG.")
    return None


def _drop_asag_functions(unet: Any) -> None:
    """Remove post-CFG functions and the wrapper of an earlier setup from a clone (setup twice on one pass never doubles)."""
    functions = unet.model_options.get("sampler_post_cfg_function", [])
    kept = [fn for fn in functions if not getattr(fn, "asag", False)]
    if len(kept) != len(functions):
        unet.model_options["sampler_post_cfg_function"] = kept
    if getattr(unet.model_options.get("model_function_wrapper"), "asag", False):
        del unet.model_options["model_function_wrapper"]


class Adapter(AdapterBase):
    """ASAG for Forge-family hosts: `setup` per sampling pass (first pass, hires pass), `teardown` after."""

    def __init__(self, host: str = "forge") -> None:
        if host not in HOSTS:
            raise ValueError(f"host must be one of {HOSTS}, got {host!r}")
        self.name = host

    def _install(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        global _session
        sd_model = p.sd_model
        unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        if unet is None:
            return ["ASAG: this model has no Forge UNet patcher (forge_objects.unet). Generating without ASAG."]
        diffusion_model = unet.model.diffusion_model
        available = layers.find_self_attention(diffusion_model)
        is_dit = any(ref.is_dit for ref in available)
        refusal = _unsupported(sd_model, diffusion_model, available) or (
            self._dit_refusal(diffusion_model, available, params.scope) if is_dit else None) or caches.refusal(
            diffusion_model)
        if refusal:
            return [refusal]
        family = families.by_model(diffusion_model) if is_dit else None
        family_name = layers.model_family(sd_model, available, diffusion_model)
        params = self.for_model(p, params, family_name)
        try:
            refs = asag_params.resolve_and_note(p, params, family_name, available)
        except layers.LayerSpecError as e:
            return [f"{e}. Generating without ASAG."]
        clone = unet.clone()
        _drop_asag_functions(clone)
        session = _Session(p, params, refs, cond_batch_function(self.name), unet, clone, host=self.name,
                           blocks={ref: available[ref] for ref in refs} if is_dit else None,
                           only_separate=family.only_separate if family is not None else "")
        _install(clone, session)
        sd_model.forge_objects.unet = clone
        _session = session
        return []

    def _dit_refusal(self, diffusion_model: Any, available: dict, scope: str) -> str | None:
        if self.name != "forge_backend":
            return (f"ASAG supports diffusion transformers ({type(diffusion_model).__name__}) on Forge's backend/ "
                    "only, not on ldm_patched hosts. Generating without ASAG.")
        refusal = dit.refusal(diffusion_model, {ref: m for ref, m in available.items() if ref.is_dit}, scope)
        tail = ". Generating without ASAG."
        if refusal is not None and refusal.endswith(tail):  # say where: the fork and its commit
            refusal = f"{refusal[:-len(tail)]} (host: {describe_host(self.name)}){tail}"
        return refusal

    def teardown(self, p: Any = None) -> None:
        """Idempotent. Disarms the post-CFG function and puts the original patcher back if ours is still set.

        Forge itself discards the clone before the next pass (processing.py reassigns forge_objects from
        forge_objects_after_applying_lora), so this only matters on error paths."""
        global _session
        session, _session = _session, None
        if session is None:
            return
        self.guided_steps += session.applied_steps
        objects = getattr(getattr(session.p, "sd_model", None), "forge_objects", None)
        if objects is not None and getattr(objects, "unet", None) is session.clone:
            objects.unet = session.original_unet
