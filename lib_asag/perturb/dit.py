"""Diffusion-transformer blocks (joint / double / single ...): one perturbation for every family and host.

DiT blocks offer no replace-patch hook: A1111's SD3 (modules/models/sd3/mmdit.py), Forge's SD3.5
(backend/nn/mmditx.py), Flux and Chroma (backend/nn/flux.py, chroma.py, Forge dfdcbab6) all call a
module-level attention function by its global name (the family row in families.py says which, and how). So,
while `perturbed_blocks` is open and only then:

- forward pre-/post-hooks on the chosen blocks mark "this chosen block is running" (a stack: blocks do not
  nest, but a hook pair keeps the count right if they ever do);
- the module global the blocks look up is swapped for a dispatcher: inside a chosen block it runs the
  adversarial Sinkhorn attention on the perturbed rows (`rows`; None = every row) and the host's function on
  the others (lib_asag/perturb/rows.py), elsewhere the host's function unchanged;
- both are undone in `finally` on every exit path.

Every Sinkhorn call is counted per chosen block (proof.py); a call the dispatcher cannot take over (a mask,
arguments it does not know) goes to the host's function uncounted, so the adapter sees that block as not
perturbed. The perturbation replaces every attention call inside a chosen block: the whole joint attention
over text and image rows (docs/method.md 2b) and, in MMDiT-X blocks, also the x-block's `attn2` (a family
row can narrow this with `perturbs`).
"""
from __future__ import annotations

import logging
import sys
import types
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, Mapping

import torch

from .. import sinkhorn
from . import families
from .families import FLAT, FUNCTION, HEADS_ROPE, Family
from .proof import SinkhornCalls
from .rows import Rows, is_interrupt, mixed_rows

log = logging.getLogger("asag")


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def call_site(family: Family, module: types.ModuleType | None) -> tuple[str, str] | None:
    """(function name, layout) the family's blocks call in this module: the first of the row's call sites the
    module defines (lllyasviel Forge / A1111 name one, a fork another), or None."""
    return next(((name, layout) for name, layout in family.call_sites() if callable(getattr(module, name, None))),
                None)


def refusal(diffusion_model: torch.nn.Module, blocks: Mapping[Hashable, torch.nn.Module]) -> str | None:
    """Why these blocks of this model cannot be perturbed, or None (checked before anything is patched)."""
    family = families.by_model(diffusion_model)
    if family is None:
        return (f"ASAG does not know this diffusion transformer ({type(diffusion_model).__name__}); it knows "
                f"{', '.join(families.dit_titles())}. Generating without ASAG.")
    if not blocks:
        return f"ASAG found no {family.title} transformer blocks in this model. Generating without ASAG."
    unknown = sorted({_name(block) for block in blocks.values() if families.by_block(block) is not family})
    if unknown:
        return (f"ASAG does not know this {family.title} implementation (transformer blocks "
                f"{', '.join(unknown)}). Generating without ASAG.")
    if family.within and not all(isinstance(getattr(b, family.within, None), torch.nn.Module) for b in blocks.values()):
        return (f"ASAG does not know this {family.title} implementation (its blocks have no `{family.within}`). "
                "Generating without ASAG.")
    for module_name in sorted({type(block).__module__ for block in blocks.values()}):
        module = sys.modules.get(module_name)
        site = call_site(family, module)
        missing = [name for name in family.requires if not callable(getattr(module, name, None))]
        if site is None or missing:
            names = " or ".join(f"`{name}`" for name, _ in family.call_sites()) if site is None else f"`{missing[0]}`"
            return (f"ASAG does not know this {family.title} implementation ({module_name} has no module-level "
                    f"{names}). Generating without ASAG.")
        if site[1] == HEADS_ROPE and not callable(getattr(sys.modules.get(family.rope[0]), family.rope[1], None)):
            return f"{family.rope[0]}.{family.rope[1]} not found. Generating without ASAG."
    return None


class _Running:
    """The chosen blocks whose forward is running now (hooks run in the thread that calls the block)."""

    def __init__(self) -> None:
        self.stack: list[Hashable] = []
        self.disarmed = False

    def current(self) -> Hashable | None:
        return None if self.disarmed or not self.stack else self.stack[-1]


# ------------------------------------------------------------------------------------------ call layouts
# Each layout: (parse(args, kwargs) -> (tensors, constants) or None, sinkhorn(tensors, constants) -> out,
# host(original, tensors, constants) -> out). `tensors` are the per-row inputs the batched mode splits.

def _parse_flat(args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """attention(q, k, v, heads, mask=None); anything else is not ours to take over."""
    kwargs = dict(kwargs)
    if len(args) == 3 and "heads" in kwargs:
        args = (*args, kwargs.pop("heads"))
    if len(args) != 4 or set(kwargs) - {"mask"} or kwargs.get("mask") is not None:
        return None
    return args[:3], {"heads": args[3]}


def _sinkhorn_flat(tensors: tuple, constants: dict, iterations: int, epsilon: float) -> torch.Tensor:
    # block_mixing hands v over as split_qkv left it, (B, N, heads, d); q and k come flattened after QK-norm.
    # The host's attention views all three as (B, N, heads, d); flatten them alike.
    q, k, v = (t.reshape(t.shape[0], t.shape[1], -1) for t in tensors)
    return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=constants["heads"], iterations=iterations,
                                                   epsilon=epsilon)


def _host_flat(original: Callable, tensors: tuple, constants: dict) -> torch.Tensor:
    return original(*tensors, constants["heads"])


def _parse_heads_rope(args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """attention(q, k, v, pe[, mask=None, transformer_options=...]) (Forge Neo passes the keywords); the
    positional encoding is per row when it has the batch's rows."""
    kwargs = dict(kwargs)
    if len(args) == 3 and "pe" in kwargs:
        args = (*args, kwargs.pop("pe"))
    if len(args) != 4 or set(kwargs) - {"mask", "transformer_options"} or kwargs.get("mask") is not None:
        return None
    q, k, v, pe = args
    if isinstance(pe, torch.Tensor) and pe.ndim > 0 and pe.shape[0] == q.shape[0] != 1:
        return (q, k, v, pe), {"kwargs": kwargs}
    return (q, k, v), {"pe": pe, "kwargs": kwargs}


def _host_heads_rope(original: Callable, tensors: tuple, constants: dict) -> torch.Tensor:
    q, k, v, pe = (*tensors, constants["pe"]) if "pe" in constants else tensors
    return original(q, k, v, pe=pe, **constants["kwargs"])


def _sinkhorn_heads_rope(apply_rope: Callable) -> Callable:
    def attend(tensors: tuple, constants: dict, iterations: int, epsilon: float) -> torch.Tensor:
        q, k, v, pe = (*tensors, constants["pe"]) if "pe" in constants else tensors
        q, k = apply_rope(q, k, pe)  # exactly as flux.attention does before its attention_function
        out = sinkhorn.adversarial_sinkhorn_attention_heads(q, k, v, iterations=iterations, epsilon=epsilon)
        batch, heads, n, dim_head = out.shape
        return out.transpose(1, 2).reshape(batch, n, heads * dim_head)
    return attend


_FUNCTION_ARGS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def _parse_function(args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """attention_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, ...) with any of
    them by position or keyword, plus Neo's `transformer_options`; a mask or a head-major output is not ours."""
    if len(args) > len(_FUNCTION_ARGS) or set(kwargs) & set(_FUNCTION_ARGS[:len(args)]):
        return None
    bound = {**dict(zip(_FUNCTION_ARGS, args)), **kwargs}
    if (set(bound) - set(_FUNCTION_ARGS) - {"transformer_options"} or not {"q", "k", "v", "heads"} <= set(bound)
            or bound.get("mask") is not None or bound.get("skip_output_reshape")):
        return None
    rest = {key: value for key, value in bound.items() if key not in ("q", "k", "v")}
    return (bound["q"], bound["k"], bound["v"]), {"heads": bound["heads"], "rest": rest}


def _sinkhorn_function(tensors: tuple, constants: dict, iterations: int, epsilon: float) -> torch.Tensor:
    if not constants["rest"].get("skip_reshape"):
        return _sinkhorn_flat(tensors, constants, iterations, epsilon)
    out = sinkhorn.adversarial_sinkhorn_attention_heads(*tensors, iterations=iterations, epsilon=epsilon)
    batch, heads, n, dim_head = out.shape
    return out.transpose(1, 2).reshape(batch, n, heads * dim_head)


def _host_function(original: Callable, tensors: tuple, constants: dict) -> torch.Tensor:
    return original(*tensors, **constants["rest"])


def _flat(family: Family) -> tuple[Callable, Callable, Callable]:
    return _parse_flat, _sinkhorn_flat, _host_flat


def _heads_rope(family: Family) -> tuple[Callable, Callable, Callable]:
    apply_rope = getattr(sys.modules[family.rope[0]], family.rope[1])
    return _parse_heads_rope, _sinkhorn_heads_rope(apply_rope), _host_heads_rope


def _function(family: Family) -> tuple[Callable, Callable, Callable]:
    return _parse_function, _sinkhorn_function, _host_function


# Call layout (families.py Family.layout / fork_attentions) -> (parse, sinkhorn, host) for one family. A family
# whose blocks call their attention function another way adds its triple here.
LAYOUTS: dict[str, Callable[[Family], tuple[Callable, Callable, Callable]]] = {
    FLAT: _flat, HEADS_ROPE: _heads_rope, FUNCTION: _function}


def _layout(family: Family, layout: str) -> tuple[Callable, Callable, Callable]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown attention layout {layout!r} for family {family.name}")
    return LAYOUTS[layout](family)


def _dispatcher(original: Callable, family: Family, layout: str, running: _Running, calls: SinkhornCalls,
                rows: Rows | None, iterations: int, epsilon: float) -> Callable:
    """A stand-in for the module's attention function: Sinkhorn inside chosen blocks, `original` elsewhere."""
    parse, attend, host = _layout(family, layout)

    def attention(*args: Any, **kwargs: Any) -> torch.Tensor:
        key = running.current()
        parsed = parse(args, kwargs) if key is not None else None
        if parsed is None or (family.perturbs is not None and not family.perturbs(args, kwargs)):
            return original(*args, **kwargs)
        tensors, constants = parsed
        if rows is None:
            out = attend(tensors, constants, iterations, epsilon)
            calls.ran(key)
            return out
        total, start, stop = rows
        if tensors[0].shape[0] != total:  # the batch was regrouped on the way: do not guess where the rows went
            calls.fail(f"{key} got {tensors[0].shape[0]} rows in a call of {total}")
            return original(*args, **kwargs)
        try:
            out = mixed_rows(lambda *t: host(original, t, constants),
                             lambda *t: attend(t, constants, iterations, epsilon), tensors, start, stop)
        except Exception as e:
            if is_interrupt(e):
                raise
            calls.fail(f"the perturbed attention failed: {type(e).__name__}: {e}")
            return original(*args, **kwargs)
        calls.ran(key)
        return out

    attention.asag = True
    attention.original = original
    return attention


def _hooks(key: Hashable, block: torch.nn.Module, running: _Running) -> list:
    def enter(*_: Any) -> None:
        running.stack.append(key)

    def leave(*_: Any) -> None:
        if running.stack:
            running.stack.pop()

    return [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]


@contextmanager
def perturbed_blocks(blocks: Mapping[Hashable, torch.nn.Module], *, iterations: int, epsilon: float,
                     rows: Rows | None = None, calls: SinkhornCalls | None = None) -> Iterator[SinkhornCalls]:
    """Inside the `with`: every attention call made by one of `blocks` (key -> block) is the adversarial
    Sinkhorn attention on `rows` (None = every row); yields the Sinkhorn call counts per key.

    Blocks must be of a class listed in the family table (refusal() says why not, before this is entered)."""
    calls = SinkhornCalls() if calls is None else calls
    running = _Running()
    swapped: list[tuple[types.ModuleType, str, Callable, Callable]] = []
    handles: list = []
    try:
        for block in blocks.values():
            family = families.by_block(block)
            if family is None:
                raise RuntimeError(f"{_name(block)} is not a transformer block of a known family")
            module = sys.modules[type(block).__module__]
            if any(m is module for m, *_ in swapped):
                continue
            site = call_site(family, module)
            if site is None:
                raise RuntimeError(f"{module.__name__} has no module-level attention function ASAG knows")
            name, layout = site
            original = getattr(module, name)
            dispatcher = _dispatcher(original, family, layout, running, calls, rows, iterations, epsilon)
            setattr(module, name, dispatcher)
            swapped.append((module, name, original, dispatcher))
        for key, block in blocks.items():
            family = families.by_block(block)
            handles.extend(_hooks(key, getattr(block, family.within) if family.within else block, running))
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        for module, name, original, dispatcher in reversed(swapped):
            if getattr(module, name) is dispatcher:
                setattr(module, name, original)
            else:  # someone replaced it while we ran: leave theirs; ours is disarmed
                log.warning("ASAG: %s.%s was replaced during the perturbed pass; not restoring it",
                            module.__name__, name)
                running.disarmed = True
