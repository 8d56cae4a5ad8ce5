"""SD3 in AUTOMATIC1111 1.10: the joint attention of chosen MMDiT blocks replaced by the adversarial Sinkhorn plan.

In A1111's modules/models/sd3/mmdit.py a `JointBlock` owns no attention module: `JointBlock.forward` calls the
module function `block_mixing(context, x, context_block, x_block, c)`, which concatenates the text and image
q/k/v (B, N_text + N_image, heads*64, after QK-norm) and calls mmdit's module-level
`attention(q, k, v, heads)` (imported from other_impls: SDPA). So for the perturbed call only:

- mmdit's module global `attention` is swapped for a dispatcher, and
- every chosen JointBlock gets an instance-level `forward` that marks the block as running;

the dispatcher runs Sinkhorn while a chosen block runs and the original otherwise (the other blocks, and any
other caller of `attention`). Both are put back in `finally`. The plan covers all text and image query rows
over all keys (docs/method.md, section 2b). The main CFG call never sees either patch.
"""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from . import sinkhorn

_MISSING = object()


def is_joint_block(module: torch.nn.Module) -> bool:
    """An MMDiT JointBlock: the two streams of one block, mixed by `block_mixing`."""
    return hasattr(module, "context_block") and hasattr(module, "x_block")


def _host_module(block: torch.nn.Module) -> types.ModuleType | None:
    """The module whose `block_mixing` runs this block and whose global `attention` it looks up."""
    module = sys.modules.get(type(block).__module__)
    if module is None or not callable(getattr(module, "block_mixing", None)) \
            or not callable(getattr(module, "attention", None)):
        return None
    return module


def unsupported(diffusion_model: torch.nn.Module) -> str | None:
    """Why this MMDiT cannot be perturbed, or None. Guards against a host whose mmdit.py changed shape."""
    blocks = [m for m in getattr(diffusion_model, "joint_blocks", ()) if is_joint_block(m)]
    if not blocks:
        return "ASAG found no MMDiT joint blocks in this SD3 model. Generating without ASAG."
    if _host_module(blocks[0]) is None:
        return (f"ASAG does not know this SD3 implementation ({type(blocks[0]).__module__} has no module-level "
                "`block_mixing` and `attention`). Generating without ASAG.")
    return None


class _Running:
    """How many chosen blocks are running right now (0 or 1: blocks do not nest)."""

    def __init__(self) -> None:
        self.depth = 0


def _dispatcher(original, running: _Running, iterations: int, epsilon: float):
    def attention(q, k, v, heads, *args, **kwargs):
        if running.depth and not args and kwargs.get("mask") is None:
            # block_mixing hands v over as split_qkv left it, (B, N, heads, d); q and k come flattened after
            # QK-norm. The host's attention views all three as (B, N, heads, d); flatten them alike.
            q, k, v = (t.reshape(t.shape[0], t.shape[1], -1) for t in (q, k, v))
            return sinkhorn.adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=iterations,
                                                           epsilon=epsilon)
        return original(q, k, v, heads, *args, **kwargs)

    attention.asag = True
    return attention


def _marking_forward(previous, running: _Running, ran: set[int]):
    def forward(self, *args, **kwargs):
        ran.add(id(self))
        running.depth += 1
        try:
            return previous(*args, **kwargs)
        finally:
            running.depth -= 1

    forward.asag = True
    return forward


@contextmanager
def patched_joint_attention(blocks: list[torch.nn.Module], iterations: int, epsilon: float,
                            ran: set[int] | None = None) -> Iterator[None]:
    """Sinkhorn joint attention in these JointBlock instances while the context is open; nothing after it.
    `ran` collects id() of the blocks that ran (so the caller can tell a block that was never reached)."""
    ran = set() if ran is None else ran
    running = _Running()
    saved_globals: list[tuple[types.ModuleType, Any]] = []
    saved_forwards: list[tuple[torch.nn.Module, Any]] = []
    try:
        for block in blocks:
            module = _host_module(block)
            if module is None:
                raise RuntimeError(f"{type(block).__module__}.{type(block).__name__} is not an MMDiT JointBlock "
                                   "mixed by a module-level block_mixing/attention")
            if not any(m is module for m, _ in saved_globals):
                saved_globals.append((module, module.__dict__["attention"]))
                module.attention = _dispatcher(module.attention, running, iterations, epsilon)
            saved_forwards.append((block, block.__dict__.get("forward", _MISSING)))
            block.forward = types.MethodType(_marking_forward(block.forward, running, ran), block)
        yield
    finally:
        for block, previous in reversed(saved_forwards):
            if previous is _MISSING:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
        for module, previous in reversed(saved_globals):
            module.attention = previous
