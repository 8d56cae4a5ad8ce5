"""UNet self-attention (`attn1` of SD1.x/SD2.x/SDXL): the adversarial Sinkhorn attention at chosen layers.

Two ways in, one per kind of host patch point, both row-aware (lib_asag/perturb/rows.py) and both counting
their Sinkhorn calls per chosen layer (lib_asag/perturb/proof.py):

- `patched_attention`: an instance-level `forward` on the chosen attn1 modules (hosts without a patch
  registry: A1111). It computes what the host's optimised forwards compute (A1111
  modules/sd_hijack_optimizations.py, e.g. scaled_dot_product_attention_forward(self, x, context=None,
  mask=None, **kwargs)) with the Sinkhorn plan in place of softmax; projections, heads and `to_out` are the
  module's own, and the forward that was there (the class's, or another wrapper such as hypertile's) runs
  the rows that are not perturbed.
- `replace_patch`: an attn1 replace patch `(q, k, v, extra_options) -> out` (ldm_patched / Forge backend
  BasicTransformerBlock._forward), which gets q/k/v already projected and returns the output before `to_out`.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, Mapping

import torch

from .. import sinkhorn
from .proof import SinkhornCalls
from .rows import Rows, is_interrupt, mixed_rows

_MISSING = object()
Contexts = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # context -> (keys context, values context)


# --------------------------------------------------------------------------------------- instance forwards

def set_forward(module: Any, forward: Callable, bind: bool = False) -> Any:
    """Install `forward` on this instance only (as a method when `bind`); returns what to hand to
    `restore_forward`. Shared by every instance-forward patch (attn1 layers, A1111's inner model)."""
    previous = module.__dict__.get("forward", _MISSING)
    module.forward = types.MethodType(forward, module) if bind else forward
    return previous


def restore_forward(module: Any, previous: Any) -> None:
    """Put back the instance `forward` that `set_forward` replaced (or none, falling back to the class's)."""
    if previous is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous


def sinkhorn_forward_output(module: torch.nn.Module, x: torch.Tensor, context: torch.Tensor | None,
                            iterations: int, epsilon: float, contexts: Contexts | None = None) -> torch.Tensor:
    """An attn1 module's output with the adversarial Sinkhorn attention (hypernetworks apply through `contexts`)."""
    context = x if context is None else context
    context_k, context_v = contexts(context) if contexts is not None else (context, context)
    q, k, v = module.to_q(x), module.to_k(context_k), module.to_v(context_v)
    out = sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=module.heads, iterations=iterations,
                                                  epsilon=epsilon)
    return module.to_out(out)


def _perturbed_forward(key: Hashable, host: Callable, iterations: int, epsilon: float, rows: Rows | None,
                       calls: SinkhornCalls, contexts: Contexts | None) -> Callable:
    """An attn1 forward: Sinkhorn on the perturbed rows (`rows`; None = all rows), `host` on the others. Like the
    host's forwards it ignores sgm's `additional_tokens`; a mask (never set for UNet self-attention) keeps the
    host's attention and is not counted. In a batched call a failure of the Sinkhorn part is recorded, not
    raised: the host's call must go on (the adapter then falls back to the separate call)."""

    def sink(self, x, context=None):
        return sinkhorn_forward_output(self, x, context, iterations, epsilon, contexts)

    def forward(self, x, context=None, mask=None, **kwargs):
        if mask is not None:
            return host(x, context=context, mask=mask, **kwargs)
        if rows is None:
            out = sink(self, x, context)
            calls.ran(key)
            return out
        total, start, stop = rows
        if x.shape[0] != total:  # something regrouped the batch on the way: do not guess where the rows went
            calls.fail(f"attn1 got {x.shape[0]} rows in a call of {total}")
            return host(x, context=context, **kwargs)
        try:
            out = mixed_rows(lambda x, c=None: host(x, context=c, **kwargs), lambda x, c=None: sink(self, x, c),
                             (x,) if context is None else (x, context), start, stop)
        except Exception as e:
            if is_interrupt(e):
                raise
            calls.fail(f"the perturbed attention failed: {type(e).__name__}: {e}")
            return host(x, context=context, **kwargs)
        calls.ran(key)
        return out

    forward.asag = True
    return forward


@contextmanager
def patched_attention(modules: Mapping[Hashable, torch.nn.Module], iterations: int, epsilon: float,
                      rows: Rows | None = None, calls: SinkhornCalls | None = None,
                      contexts: Contexts | None = None) -> Iterator[SinkhornCalls]:
    """Sinkhorn attention at these attn1 modules (key -> module) until exit, on `rows` (None = every row);
    yields the Sinkhorn call counts per key. Whatever forward was on each instance is put back on exit."""
    calls = SinkhornCalls() if calls is None else calls
    saved: list[tuple[torch.nn.Module, Any]] = []
    try:
        for key, module in modules.items():
            forward = _perturbed_forward(key, module.forward, iterations, epsilon, rows, calls, contexts)
            saved.append((module, set_forward(module, forward, bind=True)))
        yield calls
    finally:
        for module, previous in reversed(saved):
            restore_forward(module, previous)


# --------------------------------------------------------------------------------------- replace patches

def replace_patch(key: Hashable, iterations: int, epsilon: float, calls: SinkhornCalls,
                  host_attention: Callable | None = None, rows_key: str = "") -> Callable:
    """An attn1 replace patch: (q, k, v, extra_options) -> attention output before `to_out`.

    `extra_options["n_heads"]` is set by BasicTransformerBlock._forward before it calls the patch. Without
    `host_attention` every row is perturbed; with it (the batched call) the rows before
    `extra_options[rows_key]` get the host's attention (what CrossAttention.forward computes without a mask,
    `attn_precision` passed on as reForge does) and the appended rows the Sinkhorn one."""

    def sink(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=iterations, epsilon=epsilon)

    def attn1_replace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        if host_attention is None:
            out = sink(q, k, v, heads)
        else:
            kwargs = {"attn_precision": extra_options["attn_precision"]} if "attn_precision" in extra_options else {}
            out = mixed_rows(lambda q, k, v: host_attention(q, k, v, heads, **kwargs),
                             lambda q, k, v: sink(q, k, v, heads), (q, k, v), extra_options[rows_key], q.shape[0])
        calls.ran(key)
        return out

    attn1_replace.asag = True
    return attn1_replace
