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
perturbed. The perturbation takes over every attention call inside a chosen block (in MMDiT-X blocks also the
x-block's `attn2`; a family row can narrow this with `perturbs`), in one of two scopes (docs/method.md 2b):

- "image" (the default): Sinkhorn on the image x image block of the joint attention only; text query rows and
  the image queries' weights on the text keys stay the model's (lib_asag/joint_scope.py). The image token count
  comes from a forward hook on the model's patch embedder (the family row's `image_tokens`); text comes first.
- "joint": the whole joint attention of text and image rows over every key.
"""
from __future__ import annotations

import logging
import sys
import types
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, Mapping

import torch

from .. import joint_scope, sinkhorn
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


def refusal(diffusion_model: torch.nn.Module, blocks: Mapping[Hashable, torch.nn.Module],
            scope: str = "joint") -> str | None:
    """Why these blocks of this model cannot be perturbed in `scope`, or None (checked before anything is
    patched)."""
    family = families.by_model(diffusion_model)
    if family is None:
        return (f"ASAG does not know this diffusion transformer ({type(diffusion_model).__name__}); it knows "
                f"{', '.join(families.dit_titles())}. Generating without ASAG.")
    if not blocks:
        return f"ASAG found no {family.title} transformer blocks in this model. Generating without ASAG."
    unknown = sorted({_name(block) for block in blocks.values() if families.by_block(block, family) is not family})
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
    if scope == "image" and family.has_scope and _submodule(diffusion_model, family.image_tokens) is None:
        return (f"ASAG does not know this {family.title} implementation (no `{family.image_tokens}` to count its "
                "image tokens by, for the image-only scope). Generating without ASAG.")
    return None


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        found = model.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, torch.nn.Module) else None


class _Running:
    """The chosen blocks whose forward is running now (hooks run in the thread that calls the block)."""

    def __init__(self) -> None:
        self.stack: list[Hashable] = []
        self.disarmed = False
        self.image_tokens: int | None = None  # set per model call by the patch embedder's hook (scope "image")

    def current(self) -> Hashable | None:
        return None if self.disarmed or not self.stack else self.stack[-1]


class _Attend:
    """The Sinkhorn kernels of one perturbation: the whole joint attention, or (scope "image") the image-only
    scope with the call's first N - n_img tokens as text, n_img read from `running` at call time."""

    def __init__(self, iterations: int, epsilon: float, running: _Running | None) -> None:
        self.iterations, self.epsilon, self.running = iterations, epsilon, running

    def _n_text(self, n_q: int, n_k: int) -> int:
        if self.running is None:
            return 0
        n_img = self.running.image_tokens
        if n_img is None:
            raise RuntimeError("the image-only scope found no image token count in this model call "
                               "(its patch embedder did not run)")
        if n_q != n_k or not 0 < n_img <= n_q:
            raise RuntimeError(f"an attention call over {n_q} queries / {n_k} keys in a model call with "
                               f"{n_img} image tokens is not a joint text+image attention")
        return n_q - n_img

    def flat(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, N, heads*d) -> (B, N, heads*d)."""
        n_text = self._n_text(q.shape[1], k.shape[1])
        if n_text == 0:
            return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=self.iterations,
                                                           epsilon=self.epsilon)
        return joint_scope.image_only_sinkhorn_attention(q, k, v, heads=heads, n_text=n_text,
                                                         iterations=self.iterations, epsilon=self.epsilon)

    def heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) -> (B, N, heads*d), as the hosts' head-major attention functions return it."""
        n_text = self._n_text(q.shape[2], k.shape[2])
        if n_text == 0:
            out = sinkhorn.adversarial_sinkhorn_attention_heads(q, k, v, iterations=self.iterations,
                                                                epsilon=self.epsilon)
        else:
            out = joint_scope.image_only_sinkhorn_attention_heads(q, k, v, n_text=n_text, iterations=self.iterations,
                                                                  epsilon=self.epsilon)
        batch, heads, n, dim_head = out.shape
        return out.transpose(1, 2).reshape(batch, n, heads * dim_head)


# ------------------------------------------------------------------------------------------ call layouts
# Each layout: (parse(args, kwargs) -> (tensors, constants) or None, sinkhorn(tensors, constants, attend) -> out,
# host(original, tensors, constants) -> out). `tensors` are the per-row inputs the batched mode splits.

def _parse_flat(args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """attention(q, k, v, heads, mask=None); anything else is not ours to take over."""
    kwargs = dict(kwargs)
    if len(args) == 3 and "heads" in kwargs:
        args = (*args, kwargs.pop("heads"))
    if len(args) != 4 or set(kwargs) - {"mask"} or kwargs.get("mask") is not None:
        return None
    return args[:3], {"heads": args[3]}


def _sinkhorn_flat(tensors: tuple, constants: dict, attend: _Attend) -> torch.Tensor:
    # block_mixing hands v over as split_qkv left it, (B, N, heads, d); q and k come flattened after QK-norm.
    # The host's attention views all three as (B, N, heads, d); flatten them alike.
    q, k, v = (t.reshape(t.shape[0], t.shape[1], -1) for t in tensors)
    return attend.flat(q, k, v, constants["heads"])


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
    def sinkhorn_heads_rope(tensors: tuple, constants: dict, attend: _Attend) -> torch.Tensor:
        q, k, v, pe = (*tensors, constants["pe"]) if "pe" in constants else tensors
        q, k = apply_rope(q, k, pe)  # exactly as flux.attention does before its attention_function
        return attend.heads(q, k, v)
    return sinkhorn_heads_rope


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


def _sinkhorn_function(tensors: tuple, constants: dict, attend: _Attend) -> torch.Tensor:
    if not constants["rest"].get("skip_reshape"):
        return _sinkhorn_flat(tensors, constants, attend)
    return attend.heads(*tensors)


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
                rows: Rows | None, attend_with: _Attend) -> Callable:
    """A stand-in for the module's attention function: Sinkhorn inside chosen blocks, `original` elsewhere."""
    parse, sinkhorn_layout, host = _layout(family, layout)

    def attend(tensors: tuple, constants: dict) -> torch.Tensor:
        return sinkhorn_layout(tensors, constants, attend_with)

    def attention(*args: Any, **kwargs: Any) -> torch.Tensor:
        key = running.current()
        parsed = parse(args, kwargs) if key is not None else None
        if parsed is None or (family.perturbs is not None and not family.perturbs(args, kwargs)):
            return original(*args, **kwargs)
        tensors, constants = parsed
        if rows is None:
            out = attend(tensors, constants)
            calls.ran(key)
            return out
        total, start, stop = rows
        if tensors[0].shape[0] != total:  # the batch was regrouped on the way: do not guess where the rows went
            calls.fail(f"{key} got {tensors[0].shape[0]} rows in a call of {total}")
            return original(*args, **kwargs)
        try:
            out = mixed_rows(lambda *t: host(original, t, constants),
                             lambda *t: attend(t, constants), tensors, start, stop)
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


def _count_image_tokens(model: torch.nn.Module | None, family: Family | None, running: _Running) -> list:
    """Hook the patch embedder named by the blocks' family row: each model call records its image token count."""
    embedder = _submodule(model, family.image_tokens) if model is not None and family is not None else None
    if embedder is None:
        raise RuntimeError(f"the image-only scope needs the model's `{getattr(family, 'image_tokens', '')}`")

    def count(_module: Any, _args: Any, out: Any) -> None:
        running.image_tokens = out.shape[1]

    return [embedder.register_forward_hook(count)]


@contextmanager
def perturbed_blocks(blocks: Mapping[Hashable, torch.nn.Module], *, iterations: int, epsilon: float,
                     rows: Rows | None = None, calls: SinkhornCalls | None = None, scope: str = "joint",
                     model: torch.nn.Module | None = None) -> Iterator[SinkhornCalls]:
    """Inside the `with`: every attention call made by one of `blocks` (key -> block) is the adversarial
    Sinkhorn attention on `rows` (None = every row) in `scope` ("image" needs the diffusion `model` whose
    patch embedder counts the image tokens, see families.effective_scope()); yields the Sinkhorn call counts per key.

    Blocks must be of a class listed in the family table (refusal() says why not, before this is entered)."""
    calls = SinkhornCalls() if calls is None else calls
    running = _Running()
    model_family = families.by_model(model) if model is not None else None
    family = families.by_block(next(iter(blocks.values())), model_family) if blocks else None
    image_only = families.effective_scope(family, scope) == "image" and family is not None and family.has_scope
    attend = _Attend(iterations, epsilon, running if image_only else None)
    swapped: list[tuple[types.ModuleType, str, Callable, Callable]] = []
    handles: list = []
    try:
        if image_only:
            handles.extend(_count_image_tokens(model, family, running))
        for block in blocks.values():
            family = families.by_block(block, model_family)
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
            dispatcher = _dispatcher(original, family, layout, running, calls, rows, attend)
            setattr(module, name, dispatcher)
            swapped.append((module, name, original, dispatcher))
        for key, block in blocks.items():
            family = families.by_block(block, model_family)
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
