"""Forge (`backend/`) diffusion transformers: SD3.5 (backend/nn/mmditx.py), Flux (backend/nn/flux.py) and
Chroma (backend/nn/chroma.py), at Forge dfdcbab6.

Forge's DiT blocks have no replace-patch hook: no `transformer_options` / `patches_replace` lookup in
flux.py or chroma.py, and MMDiTX.forward reads only `transformer_options["skip_layers"]`. Each block calls a
module-level function by its global name instead:

- mmditx.py: `attention(q, k, v, heads, mask=None)` on (B, N, heads*d) (v arrives as (B, N, heads, d)),
  from `block_mixing` (the joint
  text+image attention of `JointBlock`) and, in SD3.5 Medium's first blocks, again for the x-block's own
  self-attention `attn2`;
- flux.py: `attention(q, k, v, pe)` on head-major (B, heads, N, d) after QK-norm; it applies RoPE
  (`apply_rope`) and calls `backend.attention.attention_function(..., skip_reshape=True)` -> (B, N, heads*d);
  `DoubleStreamBlock` (txt and img q/k/v concatenated) and `SingleStreamBlock` call it;
- chroma.py: `from backend.nn.flux import attention`, so its blocks look up `backend.nn.chroma.attention`
  (their `forward.__globals__`), the same function object as flux's.

So during ASAG's own perturbed call only, `perturbed_attention` replaces that global in the module the chosen
blocks' classes come from by a dispatcher that runs the adversarial Sinkhorn attention while a chosen block's
forward is running (forward pre-/post-hooks count the depth) and the host's original otherwise, and puts
everything back in `finally`. Outside that call nothing of the host is changed. The perturbation replaces
every attention call inside a chosen block: the whole joint attention (docs/method.md 2b) and, in MMDiT-X
blocks, also `attn2`.

The guidance is the UNet path's (host_forge.py): a post-CFG function on a clone of the UnetPatcher, so SD3.5
and Chroma get `D_u + w (D_c - D_u) + s (D_c - D_asag)`, and Flux dev/schnell at CFG 1 (the host computes no
uncond, `denoised` is D_c) get `D_c + s (D_c - D_asag)`. The perturbed rows are not batched into the host's
call here: that would need the global swapped during the host's own forward (see docs/hosts-forge.md).
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch

from . import layers, sinkhorn

log = logging.getLogger("asag")

# (module, class) of the blocks whose attention calls are dispatched, and how their `attention` is called.
ROPE_HEADS = "rope_heads"  # attention(q, k, v, pe), q/k/v (B, heads, N, d), returns (B, N, heads*d)
FLAT = "flat"  # attention(q, k, v, heads, mask=None), q/k/v (B, N, heads*d), returns (B, N, heads*d)
BLOCKS: dict[tuple[str, str], str] = {
    ("backend.nn.flux", "DoubleStreamBlock"): ROPE_HEADS,
    ("backend.nn.flux", "SingleStreamBlock"): ROPE_HEADS,
    ("backend.nn.chroma", "DoubleStreamBlock"): ROPE_HEADS,
    ("backend.nn.chroma", "SingleStreamBlock"): ROPE_HEADS,
    ("backend.nn.mmditx", "JointBlock"): FLAT,
}
# The model classes Forge's loader builds (backend/loader.py, huggingface_guess model_list) -> ASAG family.
MODELS: dict[tuple[str, str], str] = {
    ("backend.nn.flux", "IntegratedFluxTransformer2DModel"): "flux",
    ("backend.nn.chroma", "IntegratedChromaTransformer2DModel"): "chroma",
    ("backend.nn.mmditx", "MMDiTX"): "sd3",
}
ROPE_MODULE = "backend.nn.flux"  # home of `apply_rope`, which flux.attention (also chroma's) applies


def _key(obj: Any) -> tuple[str, str]:
    return type(obj).__module__, type(obj).__name__


def is_dit(available: Mapping[layers.LayerRef, Any]) -> bool:
    """Whether the layers found in a model are DiT blocks (joint / double / single)."""
    return any(ref.is_dit for ref in available)


def family(diffusion_model: Any) -> str | None:
    """'sd3' | 'flux' | 'chroma' for the model classes Forge builds, else None. Forge's Flux and Chroma engines
    set no `is_flux` / `is_chroma` flag (backend/diffusion_engine/flux.py, chroma.py), so the class decides."""
    return MODELS.get(_key(diffusion_model))


def refusal(diffusion_model: Any, host: str, available: Mapping[layers.LayerRef, Any]) -> str | None:
    """Why ASAG cannot perturb this DiT, or None."""
    kind = type(diffusion_model).__name__
    if host != "forge_backend":
        return (f"ASAG supports diffusion transformers ({kind}) on Forge's backend/ only, not on ldm_patched "
                "hosts. Generating without ASAG.")
    if family(diffusion_model) is None:
        return f"ASAG does not know this diffusion transformer ({kind}). Generating without ASAG."
    unknown = sorted({f"{m}.{c}" for m, c in map(_key, available.values()) if (m, c) not in BLOCKS})
    if unknown:
        return f"ASAG does not know these transformer blocks: {', '.join(unknown)}. Generating without ASAG."
    for module_name in {_key(block)[0] for block in available.values()}:
        if not callable(getattr(sys.modules.get(module_name), "attention", None)):
            return f"{module_name} has no module-level `attention` to perturb. Generating without ASAG."
    if any(BLOCKS[_key(b)] == ROPE_HEADS for b in available.values()) and not callable(
            getattr(sys.modules.get(ROPE_MODULE), "apply_rope", None)):
        return f"{ROPE_MODULE}.apply_rope not found. Generating without ASAG."
    return None


class _Depth:
    """How many chosen blocks' forwards are running (a block's hooks run in the thread that calls it)."""

    def __init__(self) -> None:
        self.value = 0

    def enter(self, *_: Any) -> None:
        self.value += 1

    def leave(self, *_: Any) -> None:
        self.value -= 1


def _dispatcher(original: Callable, layout: str, depth: _Depth, iterations: int, epsilon: float) -> Callable:
    """A stand-in for the module's `attention`: Sinkhorn inside chosen blocks, `original` elsewhere."""
    if layout == ROPE_HEADS:
        apply_rope = getattr(sys.modules[ROPE_MODULE], "apply_rope")

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
            if depth.value <= 0:
                return original(q, k, v, pe=pe)
            q, k = apply_rope(q, k, pe)  # exactly as flux.attention does before its attention_function
            out = sinkhorn.adversarial_sinkhorn_attention_heads(q, k, v, iterations=iterations, epsilon=epsilon)
            batch, heads, n, dim_head = out.shape
            return out.transpose(1, 2).reshape(batch, n, heads * dim_head)
    else:
        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Any = None) -> torch.Tensor:
            if depth.value <= 0:
                return original(q, k, v, heads, mask=mask)
            if mask is not None:
                raise ValueError("ASAG's Sinkhorn attention takes no attention mask")
            # mmditx SelfAttention.pre_attention hands v over as (B, N, heads, d) (split_qkv, not reshaped);
            # the host's attention views every tensor as (B, N, heads, d), so flatten the same way.
            k, v = (t.reshape(q.shape[0], -1, q.shape[-1]) for t in (k, v))
            return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=iterations,
                                                           epsilon=epsilon)

    attention.asag = True
    attention.original = original
    return attention


@contextmanager
def perturbed_attention(blocks: Mapping[Any, torch.nn.Module], *, iterations: int, epsilon: float) -> Iterator[None]:
    """Inside the `with`: every attention call made by one of `blocks` is the adversarial Sinkhorn attention.

    Swaps the module global `attention` of the blocks' modules for a dispatcher and hooks the blocks; both are
    undone on every exit (normal, exception, interrupt). Blocks must be of a kind listed in BLOCKS."""
    depth = _Depth()
    layouts = {_key(block)[0]: BLOCKS[_key(block)] for block in blocks.values()}
    swapped: list[tuple[Any, Callable, Callable]] = []
    handles = []
    try:
        for module_name, layout in layouts.items():
            module = sys.modules[module_name]
            original = module.attention
            dispatcher = _dispatcher(original, layout, depth, iterations, epsilon)
            module.attention = dispatcher
            swapped.append((module, original, dispatcher))
        for block in blocks.values():
            handles.append(block.register_forward_pre_hook(depth.enter))
            handles.append(block.register_forward_hook(depth.leave))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, original, dispatcher in reversed(swapped):
            if module.attention is dispatcher:
                module.attention = original
            else:  # someone replaced it while we ran: leave theirs, ours is disarmed by the depth counter
                log.warning("ASAG: %s.attention was replaced during the perturbed pass; not restoring it",
                            module.__name__)
                depth.value = -(1 << 30)


def separate_prediction(session: Any, args: dict) -> torch.Tensor:
    """The perturbed prediction: the host's batching function on the cond rows, chosen blocks perturbed.

    `session` is host_forge's per-pass session (params, refs, calc_cond); args are the post-CFG args."""
    blocks = layers.find_self_attention(args["model"].diffusion_model)
    chosen = {ref: blocks[ref] for ref in session.refs}
    options = dict(args["model_options"])
    if getattr(options.get("model_function_wrapper"), "asag", False):
        del options["model_function_wrapper"]
    with torch.no_grad(), perturbed_attention(chosen, iterations=session.params.iterations,
                                              epsilon=session.params.epsilon):
        return session.calc_cond(args["model"], args["cond"], args["input"], args["sigma"], options)
