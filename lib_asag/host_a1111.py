"""AUTOMATIC1111 (v1.8-v1.10) adapter: the extra conditional UNet call with Sinkhorn self-attention.

How it plugs into the host (modules/sd_samplers_cfg_denoiser.py, CFGDenoiser.forward, same in v1.8.0
bef51aed and v1.10):

1. `on_cfg_denoiser` (CFGDenoiserParams: x, image_cond, sigma, text_cond, text_uncond, denoiser) keeps the
   params object of this step when ASAG is active at `denoiser.step / denoiser.total_steps`. Rows of
   x/sigma/image_cond are [one row per cond of every image (AND-prompts), then the uncond rows];
   text_cond holds exactly the cond rows. The object is read in step 2, after every callback changed it.
2. `on_cfg_denoised` (CFGDenoisedParams: x = x_out, inner_model) runs `inner_model` once more on the cond
   rows, with the chosen layers' attn1 replaced by a per-instance forward (SD3: the joint attention of the
   chosen MMDiT blocks, lib_asag/a1111_sd3.py), installed and removed in one try/finally around that call
   only, and computes the term sum_j w_j * s * (x_out[j] - perturbed[j]) per image with the conds_list
   weights (the same weights CFG uses for AND-prompts).
3. `on_cfg_after_cfg` (AfterCFGCallbackParams: x = CFG result) adds the term, optionally std-rescales,
   and for inpainting keeps the host's mask blend (the host blends before this callback).

Callbacks are registered by `setup` only when ASAG runs and removed by `teardown`; a failing perturbed pass
turns ASAG off for the rest of the pass with one log line and never leaves a module patched. Host modules
are imported inside functions only.
"""
from __future__ import annotations

import logging
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from . import a1111_sd3, guidance, layers, params as asag_params, sinkhorn
from .adapter_base import AdapterBase, edit_model_refusal, report_failure

log = logging.getLogger("asag")
_MISSING = object()


def _unet(sd_model: Any) -> torch.nn.Module:
    """`model.diffusion_model`: ldm DiffusionWrapper and sgm OpenAIWrapper hold the UNet there, SD3's BaseModel
    (modules/models/sd3/sd3_impls.py) its MMDiT."""
    return sd_model.model.diffusion_model


def _unsupported(sd_model: Any) -> str | None:
    refusal = edit_model_refusal(sd_model)
    if refusal:
        return refusal
    if getattr(sd_model, "is_sd3", False):
        return a1111_sd3.unsupported(_unet(sd_model))
    return None


# ---------------------------------------------------------------------------------------------------------
# The perturbed self-attention forward

def _hypernetwork_contexts(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values context as A1111's attention forwards build it (hypernetworks apply to attn1 too)."""
    try:
        from modules import shared
        from modules.hypernetworks import hypernetwork
    except ImportError:
        return context, context
    return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)


def _sinkhorn_forward(iterations: int, epsilon: float):
    """An attn1 forward with the adversarial Sinkhorn plan in place of softmax.

    Signature of A1111's optimised forwards (modules/sd_hijack_optimizations.py, e.g.
    scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs)); like them it ignores
    sgm's `additional_tokens`. Projections, heads and output projection are the module's own."""

    def forward(self, x, context=None, mask=None, **kwargs):
        if mask is not None:  # never set for UNet self-attention; keep the host's attention if it is
            return type(self).forward(self, x, context=context, mask=mask, **kwargs)
        context_k, context_v = _hypernetwork_contexts(x if context is None else context)
        q, k, v = self.to_q(x), self.to_k(context_k), self.to_v(context_v)
        out = sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=self.heads, iterations=iterations,
                                                      epsilon=epsilon)
        return self.to_out(out)

    forward.asag = True
    return forward


@contextmanager
def patched_attention(modules: list[torch.nn.Module], iterations: int, epsilon: float) -> Iterator[None]:
    """Override `forward` on these module instances only, restoring whatever was there on exit."""
    saved: list[tuple[torch.nn.Module, Any]] = []
    forward = _sinkhorn_forward(iterations, epsilon)
    try:
        for module in modules:
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = types.MethodType(forward, module)
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _perturbation(modules: list[torch.nn.Module], iterations: int, epsilon: float):
    """The patch for the separate perturbed call: attn1 forwards in a UNet, the joint attention of the chosen
    JointBlocks in SD3's MMDiT (lib_asag/a1111_sd3.py). SD3 always uses this separate call."""
    if a1111_sd3.is_joint_block(modules[0]):
        return a1111_sd3.patched_joint_attention(modules, iterations, epsilon)
    return patched_attention(modules, iterations, epsilon)


# ---------------------------------------------------------------------------------------------------------
# Per-pass state

@dataclass
class _Step:
    """What one CFGDenoiser.forward call needs between its three callbacks."""

    denoiser: Any
    inputs: Any                      # the CFGDenoiserParams object
    scale: float
    term: torch.Tensor | None = None
    reference: torch.Tensor | None = None


@dataclass
class _Session:
    p: Any
    params: asag_params.ASAGParams
    layer_cache: dict[int, tuple[torch.nn.Module, list[torch.nn.Module] | None]] = field(default_factory=dict)
    pending: _Step | None = None
    applied_steps: int = 0
    failed: bool = False


_session: _Session | None = None


def _chosen_modules(session: _Session, sd_model: Any) -> list[torch.nn.Module] | None:
    """The attn1 modules to perturb in this model (cached per UNet; the refiner has its own)."""
    unet = _unet(sd_model)
    cached = session.layer_cache.get(id(unet))
    if cached is not None and cached[0] is unet:
        return cached[1]
    available = layers.find_self_attention(unet)
    try:
        refs = layers.resolve_layers(session.params.layer_spec(layers.model_family(sd_model, available)), available)
        modules = [available[ref] for ref in refs]
    except layers.LayerSpecError as e:
        log.warning("ASAG: %s; no ASAG with this model (e.g. the refiner).", e)
        modules = None
    session.layer_cache[id(unet)] = (unet, modules)
    return modules


def _tokens(cond: Any) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[1]


def _cond_rows(inputs: Any, denoiser: Any) -> Any:
    """text_cond as the cond rows were really run: with `pad_cond_uncond` the host pads a shorter cond with
    empty-prompt tokens after the callback (in place for dict conds only), so redo it for tensors."""
    cond, uncond = inputs.text_cond, inputs.text_uncond
    if not getattr(denoiser, "padded_cond_uncond", False) or _tokens(cond) >= _tokens(uncond):
        return cond
    from modules import shared, sd_samplers_cfg_denoiser as host
    empty = shared.sd_model.cond_stage_model_empty_prompt
    repeats = (_tokens(uncond) - _tokens(cond)) // _tokens(empty)
    return host.pad_cond(dict(cond) if isinstance(cond, dict) else cond, repeats, empty)


def _condition_dict(cond: Any, image_cond: torch.Tensor) -> dict:
    """The `cond=` argument CFGDenoiser.forward builds (make_condition_dict) for the host's model kind."""
    from modules import shared
    if shared.sd_model.model.conditioning_key == "crossattn-adm":
        return {"c_crossattn": [cond], "c_adm": image_cond}
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def _subscript(cond: Any, a: int, b: int) -> Any:
    return {k: v[a:b] for k, v in cond.items()} if isinstance(cond, dict) else cond[a:b]


def _conds_list(denoiser: Any) -> list[list[tuple[int, float]]]:
    """conds_list of this step, rebuilt with the host's own function from the sampler's cond."""
    from modules import prompt_parser
    return prompt_parser.reconstruct_multicond_batch(denoiser.sampler.sampler_extra_args["cond"], denoiser.step)[0]


def _perturbed_prediction(session: _Session, step: _Step, n_cond: int, batch_size: int) -> torch.Tensor | None:
    """inner_model on the cond rows with the chosen attn1 layers perturbed; None when this model has none."""
    from modules import shared
    modules = _chosen_modules(session, shared.sd_model)
    if not modules:
        return None
    inputs, denoiser = step.inputs, step.denoiser
    cond = _cond_rows(inputs, denoiser)
    x, sigma, image_cond = inputs.x[:n_cond], inputs.sigma[:n_cond], inputs.image_cond[:n_cond]
    # batch_cond_uncond off: the host runs batch_size rows per call (low VRAM); do the same.
    chunk = n_cond if shared.opts.batch_cond_uncond else batch_size
    outs = []
    with torch.no_grad(), _perturbation(modules, session.params.iterations, session.params.epsilon):
        for a in range(0, n_cond, chunk):
            b = min(a + chunk, n_cond)
            outs.append(denoiser.inner_model(x[a:b], sigma[a:b],
                                             cond=_condition_dict(_subscript(cond, a, b), image_cond[a:b])))
    return torch.cat(outs)


def _compute_term(session: _Session, step: _Step, x_out: torch.Tensor) -> None:
    conds_list = _conds_list(step.denoiser)
    n_cond = sum(len(conds) for conds in conds_list)
    if x_out.shape[0] < n_cond or step.inputs.x.shape[0] < n_cond:
        raise RuntimeError(f"unexpected batch layout: {n_cond} cond rows, x_out has {x_out.shape[0]}")
    perturbed = _perturbed_prediction(session, step, n_cond, len(conds_list))
    if perturbed is None:
        return
    per_row = guidance.asag_term(x_out[:n_cond], perturbed.to(x_out.dtype), step.scale)
    term = torch.zeros_like(x_out[:len(conds_list)])
    for i, conds in enumerate(conds_list):
        for index, weight in conds:
            term[i] += per_row[index] * weight
    step.term = term
    step.reference = torch.stack([x_out[conds[0][0]] for conds in conds_list])


def _fail(session: _Session, error: BaseException) -> None:
    """Turn ASAG off for the rest of this pass, say so once, and keep the infotext honest."""
    session.failed = True
    session.pending = None
    report_failure(session.p, session.applied_steps, error)


# ---------------------------------------------------------------------------------------------------------
# Host callbacks (module-level functions: stable identity for remove_callbacks_for_function)

def _on_cfg_denoiser(params: Any) -> None:
    session = _session
    if session is None:
        return
    session.pending = None
    denoiser = getattr(params, "denoiser", None)
    if session.failed or denoiser is None or getattr(denoiser, "p", None) is not session.p:
        return
    from modules import shared
    if shared.state.interrupted or shared.state.skipped:
        return
    total = denoiser.total_steps or params.total_sampling_steps
    scale = guidance.effective_scale(session.params, denoiser.step, total)
    if scale != 0.0:
        session.pending = _Step(denoiser, params, scale)


def _on_cfg_denoised(params: Any) -> None:
    session = _session
    step = session.pending if session is not None else None
    if step is None:
        return
    if params.inner_model is not step.denoiser.inner_model:
        session.pending = None
        return
    try:
        _compute_term(session, step, params.x)
    except Exception as e:
        _fail(session, e)


def _on_cfg_after_cfg(params: Any) -> None:
    session = _session
    step = session.pending if session is not None else None
    if step is None:
        return
    session.pending = None
    if step.term is None:
        return
    try:
        params.x = _guided(session, step, params.x)
        session.applied_steps += 1
    except Exception as e:
        _fail(session, e)


def _guided(session: _Session, step: _Step, denoised: torch.Tensor) -> torch.Tensor:
    if step.term.shape != denoised.shape:
        raise RuntimeError(f"CFG result has shape {tuple(denoised.shape)}, ASAG term {tuple(step.term.shape)}")
    guided = denoised + step.term.to(denoised.dtype)
    if session.params.rescale > 0:
        guided = guidance.rescale_guidance(guided, step.reference.to(denoised.dtype), session.params.rescale)
    denoiser = step.denoiser
    if denoiser.mask is not None and not denoiser.mask_before_denoising:
        # The host already blended the original latent back in; only the repainted area changes.
        return denoised + (guided - denoised) * denoiser.nmask
    return guided


_CALLBACKS = (("on_cfg_denoiser", _on_cfg_denoiser), ("on_cfg_denoised", _on_cfg_denoised),
              ("on_cfg_after_cfg", _on_cfg_after_cfg))


def _register() -> None:
    from modules import script_callbacks
    for name, callback in _CALLBACKS:
        getattr(script_callbacks, name)(callback)


def _unregister() -> None:
    try:
        from modules import script_callbacks
    except ImportError:
        return
    for _, callback in _CALLBACKS:
        script_callbacks.remove_callbacks_for_function(callback)


# ---------------------------------------------------------------------------------------------------------

class Adapter(AdapterBase):
    """ASAG for A1111: `setup` per sampling pass (first pass of each batch, hires pass), `teardown` after."""

    name = "a1111"

    def _install(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        global _session
        sd_model = p.sd_model
        refusal = _unsupported(sd_model)
        if refusal:
            return [refusal]
        available = layers.find_self_attention(_unet(sd_model))
        try:
            layers.resolve_layers(params.layer_spec(layers.model_family(sd_model, available)), available)
        except layers.LayerSpecError as e:
            return [f"{e}. Generating without ASAG."]
        _session = _Session(p, params)
        _register()
        return []

    def teardown(self, p: Any = None) -> None:
        """Idempotent: forget the pass and remove the callbacks (patches never outlive one call)."""
        global _session
        _session = None
        _unregister()
