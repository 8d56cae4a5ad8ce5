"""AUTOMATIC1111 (v1.8-v1.10) adapter: the perturbed cond rows in the host's own UNet call, or in one of their own.

How it plugs into the host (modules/sd_samplers_cfg_denoiser.py, CFGDenoiser.forward, same in v1.8.0
bef51aed and v1.10.1):

1. `on_cfg_denoiser` (CFGDenoiserParams: x, image_cond, sigma, text_cond, text_uncond, denoiser) runs after
   the host built the rows [one row per cond of every image (AND-prompts), then the B uncond rows] and before
   any model call; the host reads x, image_cond, sigma, text_cond and text_uncond back from the object.
   When ASAG is active at `denoiser.step / denoiser.total_steps` and batching is safe, it inserts a copy of
   the n cond rows after them: rows [cond (n), perturbed (n), uncond (B)]. Every later use of the rows in
   forward stays right without a change: the cond indices of conds_list are < n, uncond is `x_out[-B:]`,
   skip_uncond drops the last B rows, padding and the chunked / separate-length calls slice the same rows.
   For this step it also wraps `denoiser.inner_model`'s forward: each host call passes a slice of that x
   (`x_in[a:b]`), so the wrapper knows which of its rows are perturbed and, in one try/finally around that
   call only, installs the perturbed attn1 forward on the chosen layers: the host's own forward on the other
   rows, the Sinkhorn attention on the perturbed ones (lib_asag/perturb/rows.py mixed_rows, shared with Forge).
2. `on_cfg_denoised` (CFGDenoisedParams: x = x_out, inner_model) takes the perturbed prediction from rows
   [n, 2n) of x_out, or, where batching was not safe, runs `inner_model` once more on the cond rows with the
   chosen layers perturbed (the separate call), and computes the term sum_j w_j * s * (x_out[j] - perturbed[j])
   per image with the conds_list weights (the weights CFG uses for AND-prompts).
3. `on_cfg_after_cfg` (AfterCFGCallbackParams: x = CFG result) adds the term, optionally std-rescales, and for
   inpainting keeps the host's mask blend (the host blends before this callback).

Batching is not safe, and the separate call runs (one log line per pass says why), when another extension can
see the extra rows: a cfg_denoised callback or a cfg_denoiser callback after ASAG's, or a replaced forward in
the UNet (ControlNet's hooked UNet forward, reference attention, Regional Prompter; hypertile's row-wise attn1
wrapper is fine); when the rows are not laid out as above; when a batched call did not perturb every inserted
row; or with `ASAG_BATCH=0`.

What is perturbed is one perturbation object (`modules(sd_model)` and `patched(modules, rows)`), host-free in
lib_asag/perturb/: Sinkhorn at the chosen UNet attn1 layers (SD1.x/SD2.x/SDXL, perturb/unet.py), or the joint
attention of the chosen MMDiT blocks (SD3, perturb/dit.py); both are row-aware, so both batch. Every perturbed
call counts the Sinkhorn calls of each chosen layer/block (perturb/proof.py): a batched call that missed one
falls back to the separate call, a separate call that missed one turns ASAG off with `ASAG error` in the
infotext (never a silent zero term).

Callbacks are registered by `setup` only when ASAG runs and removed by `teardown`; a failing perturbed pass
turns ASAG off for the rest of the pass with one log line and never leaves a module patched. Host modules
are imported inside functions only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from .. import guidance, layers, params as asag_params
from ..perturb import dit, families, unet as perturb_unet
from ..perturb.rows import Rows
from .base import AdapterBase, edit_model_refusal, log_mode, report_failure, switched_off

log = logging.getLogger("asag")
Modules = dict[layers.LayerRef, torch.nn.Module]  # the chosen attn1 layers / DiT blocks of one model


def _unet(sd_model: Any) -> torch.nn.Module:
    """`model.diffusion_model`: ldm DiffusionWrapper and sgm OpenAIWrapper hold the UNet there, SD3's BaseModel
    (modules/models/sd3/sd3_impls.py) its MMDiT."""
    return sd_model.model.diffusion_model


def _unsupported(sd_model: Any, scope: str) -> str | None:
    refusal = edit_model_refusal(sd_model)
    if refusal:
        return refusal
    if getattr(sd_model, "is_sd3", False):
        diffusion_model = _unet(sd_model)
        blocks = {ref: m for ref, m in layers.find_self_attention(diffusion_model).items() if ref.is_dit}
        return dit.refusal(diffusion_model, blocks, scope)
    return None


# ---------------------------------------------------------------------------------------------------------
# What is perturbed (lib_asag/perturb/): which modules of this model, and the patch for one call

def _hypernetwork_contexts(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values context as A1111's attention forwards build it (hypernetworks apply to attn1 too)."""
    try:
        from modules import shared
        from modules.hypernetworks import hypernetwork
    except ImportError:
        return context, context
    return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)


@dataclass(frozen=True)
class UNetSelfAttention:
    """The perturbation for SD1.x/SD2.x/SDXL UNets: Sinkhorn attention at the chosen attn1 layers."""

    params: asag_params.ASAGParams
    batch_off: ClassVar[str | None] = None  # why this perturbation can never share the host's call

    def modules(self, sd_model: Any) -> Modules | None:
        """The attn1 modules (or MMDiT blocks) to perturb in this model; None when the spec names none of them."""
        available = layers.find_self_attention(_unet(sd_model))
        try:
            refs = layers.resolve_layers(self.params.layer_spec(layers.model_family(sd_model, available)), available)
        except layers.LayerSpecError as e:
            log.warning("ASAG: %s; no ASAG with this model (e.g. the refiner).", e)
            return None
        return {ref: available[ref] for ref in refs}

    def patched(self, modules: Modules, rows: Rows | None = None):
        """Context manager: these modules perturb `rows` (None = every row) until exit; yields the Sinkhorn
        call counts per layer (lib_asag/perturb/proof.py)."""
        return perturb_unet.patched_attention(modules, self.params.iterations, self.params.epsilon, rows,
                                              contexts=_hypernetwork_contexts)


@dataclass(frozen=True)
class SD3JointAttention(UNetSelfAttention):
    """SD3: Sinkhorn joint attention in the chosen MMDiT JointBlocks (lib_asag/perturb/dit.py), row-aware."""

    batch_off: ClassVar[str | None] = families.FAMILIES["sd3"].only_separate or None

    def patched(self, modules: Modules, rows: Rows | None = None):
        from modules import shared  # the MMDiT whose patch embedder counts the image tokens (scope "image")
        return dit.perturbed_blocks(modules, iterations=self.params.iterations, epsilon=self.params.epsilon,
                                    rows=rows, scope=self.params.scope, model=_unet(shared.sd_model))


# ---------------------------------------------------------------------------------------------------------
# Per-pass state

@dataclass
class _Batch:
    """The perturbed rows ASAG inserted into one step's host call, and the inner-model wrapper finding them."""

    base: torch.Tensor                 # the x this step's host calls slice (CFGDenoiserParams.x after insertion)
    start: int                         # perturbed rows are [start, stop) of base
    stop: int
    modules: Modules
    covered: int = 0                   # perturbed rows that went through a patched call
    problem: str | None = None
    inner: Any = None                  # the inner model whose forward is wrapped, and what was there
    previous: Any = None


@dataclass
class _Step:
    """What one CFGDenoiser.forward call needs between its three callbacks."""

    denoiser: Any
    inputs: Any                      # the CFGDenoiserParams object
    scale: float
    conds_list: list[list[tuple[int, float]]] = field(default_factory=list)
    modules: Modules = field(default_factory=dict)
    batch: _Batch | None = None
    term: torch.Tensor | None = None
    reference: torch.Tensor | None = None

    @property
    def n_cond(self) -> int:
        return sum(len(conds) for conds in self.conds_list)


@dataclass
class _Session:
    p: Any
    params: asag_params.ASAGParams
    perturbation: UNetSelfAttention
    layer_cache: dict[int, tuple[torch.nn.Module, Modules | None, str | None]] = field(default_factory=dict)
    pending: _Step | None = None
    applied_steps: int = 0
    failed: bool = False
    batch_off: str | None = None     # why the perturbed rows are not batched, for the rest of the pass
    logged_mode: str | None = None


_session: _Session | None = None


def _replaced_forward(unet: torch.nn.Module) -> str | None:
    """Where another extension replaced a forward in the UNet (it may read the batch), or None.

    ControlNet (Mikubill sd-webui-controlnet scripts/hook.py UnetHook.hook at 56cec5b2) sets `forward` on the
    UNet instance, whose batch size, cond marks and per-row hints follow the host's rows, and `_forward` on
    BasicTransformerBlocks for reference attention. hypertile (extensions-builtin/hypertile) wraps some
    attention forwards in place, row by row (batch stays the outer dimension): that one is fine."""
    for name, module in unet.named_modules():
        replaced = [attr for attr in ("forward", "_forward") if attr in module.__dict__]
        if replaced and not hasattr(module, "__webui_hypertile_params"):
            where = f"{name}.{replaced[0]}" if name else f"the UNet's {replaced[0]}"
            return f"another extension replaced {where} (e.g. ControlNet)"
    return None


def _model_state(session: _Session, sd_model: Any) -> tuple[Modules | None, str | None]:
    """(modules to perturb, why not to batch) for this model, once per pass (the refiner has its own)."""
    unet = _unet(sd_model)
    cached = session.layer_cache.get(id(unet))
    if cached is None or cached[0] is not unet:
        cached = (unet, session.perturbation.modules(sd_model), _replaced_forward(unet))
        session.layer_cache[id(unet)] = cached
    return cached[1], cached[2]


def _tokens(cond: Any) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[1]


def _rows_of(cond: Any) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _cond_rows(inputs: Any, denoiser: Any, n_cond: int) -> Any:
    """The cond rows of text_cond as the host really ran them: with `pad_cond_uncond` the host pads a shorter
    cond with empty-prompt tokens after the callback (in place for dict conds only), so redo it for tensors."""
    cond, uncond = _subscript(inputs.text_cond, 0, n_cond), inputs.text_uncond
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


# ---------------------------------------------------------------------------------------------------------
# Batched: the perturbed rows in the host's call

def _later_callbacks() -> str | None:
    """Another extension's callback that would see the inserted rows: any cfg_denoised callback (it gets
    x_out) or a cfg_denoiser callback after ASAG's (it gets the longer x). None when there is none."""
    from modules import script_callbacks
    ordered = getattr(script_callbacks, "ordered_callbacks", None)  # v1.9+; v1.8.0 runs callback_map in order

    def callbacks(category: str) -> list:
        return list(ordered(category) if ordered else script_callbacks.callback_map[f"callbacks_{category}"])

    def other(entries: list) -> list:
        return [c for c in entries if getattr(c.callback, "__module__", None) != __name__]

    denoiser = callbacks("cfg_denoiser")
    ours = [i for i, c in enumerate(denoiser) if c.callback is _on_cfg_denoiser]
    for category, entries in (("cfg_denoiser", denoiser[ours[0] + 1:] if ours else []),
                              ("cfg_denoised", callbacks("cfg_denoised"))):
        found = other(entries)
        if found:
            name = getattr(found[0], "name", None) or found[0].script
            return f"another extension's {category} callback ({name}) would see the extra rows"
    return None


def _batch_reason(session: _Session, step: _Step, unet_reason: str | None) -> str | None:
    """Why this step's perturbed rows cannot go into the host's call, or None."""
    if session.batch_off is not None:
        return session.batch_off
    reason = session.perturbation.batch_off or switched_off() or unet_reason or _later_callbacks()
    if reason:
        return reason
    inputs, n_cond, batch_size = step.inputs, step.n_cond, len(step.conds_list)
    shapes = {"x": inputs.x.shape[0], "sigma": inputs.sigma.shape[0], "image_cond": inputs.image_cond.shape[0]}
    if set(shapes.values()) != {n_cond + batch_size} or _rows_of(inputs.text_cond) != n_cond:
        return f"unexpected row layout {shapes}, {_rows_of(inputs.text_cond)} text rows, {n_cond} conds"
    return None


def _repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """[rows 0..n-1, the same again, the rest]."""
    return torch.cat([t[:n], t[:n], t[n:]])


def _insert_rows(step: _Step) -> _Batch:
    """Insert a copy of the cond rows after them in everything the host reads back from CFGDenoiserParams."""
    inputs, n = step.inputs, step.n_cond
    cond = inputs.text_cond
    text = type(cond)({k: torch.cat([v, v]) for k, v in cond.items()}) if isinstance(cond, dict) else torch.cat([cond, cond])
    x, sigma, image_cond = (_repeat_rows(t, n) for t in (inputs.x, inputs.sigma, inputs.image_cond))
    inputs.x, inputs.sigma, inputs.image_cond, inputs.text_cond = x, sigma, image_cond, text
    return _Batch(x, n, 2 * n, step.modules)


def _row_offset(view: torch.Tensor, base: torch.Tensor) -> int | None:
    """Which row of `base` the rows of `view` start at, when `view` is `base[a:b]` (how the host slices x_in)."""
    if (not isinstance(view, torch.Tensor) or view.dtype != base.dtype or view.device != base.device
            or view.shape[1:] != base.shape[1:] or view.stride() != base.stride()):
        return None
    row_bytes = base.stride(0) * base.element_size()
    delta = view.data_ptr() - base.data_ptr()
    if row_bytes == 0 or delta % row_bytes:
        return None
    offset = delta // row_bytes
    return offset if 0 <= offset <= base.shape[0] - view.shape[0] else None


def _inner_forward(session: _Session, step: _Step, host_forward: Callable) -> Callable:
    """The inner model's forward for one step: each host call with perturbed rows runs with the chosen layers
    patched for exactly those rows (installed and removed around that call only)."""
    batch = step.batch

    def forward(x, sigma, **kwargs):
        offset = _row_offset(x, batch.base)
        if session.pending is not step or offset is None:
            return host_forward(x, sigma, **kwargs)
        start, stop = max(batch.start - offset, 0), min(batch.stop - offset, x.shape[0])
        if start >= stop:
            return host_forward(x, sigma, **kwargs)
        with session.perturbation.patched(batch.modules, (x.shape[0], start, stop)) as calls:
            out = host_forward(x, sigma, **kwargs)
        problem = calls.problem(batch.modules)  # every chosen layer ran Sinkhorn on these rows
        if problem:
            batch.problem = batch.problem or problem
        else:
            batch.covered += stop - start
        return out

    forward.asag = True
    return forward


def _wrap_inner_model(session: _Session, step: _Step) -> None:
    inner = step.denoiser.inner_model
    batch = step.batch
    batch.inner, batch.previous = inner, perturb_unet.set_forward(inner, _inner_forward(session, step, inner.forward))


def _unwrap_inner_model(batch: _Batch | None) -> None:
    """Idempotent: put back the inner model's forward (it belongs to the sampler, which outlives a step)."""
    if batch is None or batch.inner is None:
        return
    inner, batch.inner = batch.inner, None
    perturb_unet.restore_forward(inner, batch.previous)


def _batched_prediction(step: _Step, x_out: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """Rows [n, 2n) of x_out when every inserted row ran perturbed; else None and why."""
    batch = step.batch
    if batch is None:
        return None, None
    if x_out.shape[0] != batch.base.shape[0]:  # with skip_uncond too: the host appends B fake uncond rows
        return None, f"x_out has {x_out.shape[0]} rows, the host's call {batch.base.shape[0]}"
    if batch.problem or batch.covered != batch.stop - batch.start:
        return None, batch.problem or f"{batch.covered} of {batch.stop - batch.start} inserted rows ran perturbed"
    return x_out[batch.start:batch.stop], None


# ---------------------------------------------------------------------------------------------------------
# Separate: the perturbed rows in a call of their own

def _separate_prediction(session: _Session, step: _Step) -> torch.Tensor:
    """inner_model on the cond rows with the chosen attn1 layers perturbed."""
    from modules import shared
    inputs, denoiser, n_cond = step.inputs, step.denoiser, step.n_cond
    cond = _cond_rows(inputs, denoiser, n_cond)
    x, sigma, image_cond = inputs.x[:n_cond], inputs.sigma[:n_cond], inputs.image_cond[:n_cond]
    # batch_cond_uncond off: the host runs batch_size rows per call (low VRAM); do the same.
    chunk = n_cond if shared.opts.batch_cond_uncond else len(step.conds_list)
    outs = []
    with torch.no_grad(), session.perturbation.patched(step.modules) as calls:
        for a in range(0, n_cond, chunk):
            b = min(a + chunk, n_cond)
            outs.append(denoiser.inner_model(x[a:b], sigma[a:b],
                                             cond=_condition_dict(_subscript(cond, a, b), image_cond[a:b])))
    calls.check(step.modules)  # a chosen layer/block that ran no Sinkhorn: no term, an error in the response
    return torch.cat(outs)


def _compute_term(session: _Session, step: _Step, x_out: torch.Tensor) -> None:
    conds_list, n_cond = step.conds_list, step.n_cond
    if x_out.shape[0] < n_cond + len(conds_list):
        raise RuntimeError(f"unexpected batch layout: {n_cond} cond rows, x_out has {x_out.shape[0]}")
    perturbed, reason = _batched_prediction(step, x_out)
    if step.batch is not None and reason is not None:
        session.batch_off = reason  # do not insert rows again this pass
    reason = None if perturbed is not None else reason or session.batch_off
    session.logged_mode = log_mode(reason, session.logged_mode,
                                   only_mode=reason is not None and reason == session.perturbation.batch_off)
    if perturbed is None:
        perturbed = _separate_prediction(session, step)
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
    if session.pending is not None:
        _unwrap_inner_model(session.pending.batch)
    session.pending = None
    report_failure(session.p, session.applied_steps, error)


# ---------------------------------------------------------------------------------------------------------
# Host callbacks (module-level functions: stable identity for remove_callbacks_for_function)

def _on_cfg_denoiser(params: Any) -> None:
    session = _session
    if session is None:
        return
    _forget_pending(session)
    denoiser = getattr(params, "denoiser", None)
    if session.failed or denoiser is None or getattr(denoiser, "p", None) is not session.p:
        return
    from modules import shared
    if shared.state.interrupted or shared.state.skipped:
        return
    total = denoiser.total_steps or params.total_sampling_steps
    scale = guidance.effective_scale(session.params, denoiser.step, total)
    if scale == 0.0:
        if guidance.is_active(denoiser.step, total, start=session.params.start, end=session.params.end):
            session.applied_steps += 1  # scale 0 in the window: ASAG ran, its term is exactly 0 (no extra rows)
        return
    step = _Step(denoiser, params, scale)
    try:
        step.conds_list = _conds_list(denoiser)
        modules, unet_reason = _model_state(session, shared.sd_model)
        if not modules:
            return  # the spec names no layer of this model (e.g. the refiner): no ASAG on its steps
        step.modules = modules
        session.pending = step
        reason = _batch_reason(session, step, unet_reason)
        if reason is None:
            step.batch = _insert_rows(step)
            _wrap_inner_model(session, step)
        else:
            session.batch_off = reason
    except Exception as e:
        _fail(session, e)


def _forget_pending(session: _Session) -> None:
    """Drop the step in flight (e.g. the host's call raised before on_cfg_denoised) and its wrapper."""
    if session.pending is not None:
        _unwrap_inner_model(session.pending.batch)
    session.pending = None


def _on_cfg_denoised(params: Any) -> None:
    session = _session
    step = session.pending if session is not None else None
    if step is None:
        return
    _unwrap_inner_model(step.batch)
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
        refusal = _unsupported(sd_model, params.scope)
        if refusal:
            return [refusal]
        available = layers.find_self_attention(_unet(sd_model))
        family = layers.model_family(sd_model, available)
        params = self.for_model(p, params, family)
        try:
            asag_params.resolve_and_note(p, params, family, available)
        except layers.LayerSpecError as e:
            return [f"{e}. Generating without ASAG."]
        kind = SD3JointAttention if getattr(sd_model, "is_sd3", False) else UNetSelfAttention
        _session = _Session(p, params, kind(params))
        _register()
        return []

    def teardown(self, p: Any = None) -> None:
        """Idempotent: forget the pass and remove the callbacks (patches never outlive one call)."""
        global _session
        session, _session = _session, None
        if session is not None:
            self.guided_steps += session.applied_steps
            _forget_pending(session)
        _unregister()
