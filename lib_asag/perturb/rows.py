"""The perturbed rows inside the host's own model call: what the batched mode of every backbone shares.

An adapter adds copies of the cond rows to the host's normal batch (Forge appends them, A1111 inserts them
between the cond and the uncond rows); at the chosen layers/blocks those rows get the adversarial Sinkhorn
attention and every other row the host's own attention, so one model call yields both the normal predictions
and the perturbed one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Rows = tuple[int, int, int]  # (rows of the call, first perturbed row, end): which rows of one call are ASAG's


def mixed_rows(normal: Callable[..., torch.Tensor], perturbed: Callable[..., torch.Tensor],
               tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of `tensors` through `perturbed`, all other rows (in one call) through `normal`;
    the outputs back in the original row order. Both functions take the row-sliced tensors positionally."""
    rows = tensors[0].shape[0]
    start, stop = max(0, start), min(rows, stop)
    if start >= stop:
        return normal(*tensors)
    inner = perturbed(*(t[start:stop] for t in tensors))
    if start == 0 and stop == rows:
        return inner
    if stop == rows:  # appended rows (Forge): the normal rows are a view, no copy
        outer = normal(*(t[:start] for t in tensors))
        return torch.cat([outer, inner.to(outer.dtype)])
    outer = normal(*(torch.cat([t[:start], t[stop:]]) for t in tensors))
    return torch.cat([outer[:start], inner.to(outer.dtype), outer[start:]])


def is_interrupt(error: BaseException) -> bool:
    """The hosts' interrupt/skip exceptions (A1111 InterruptedException, Forge InterruptProcessingException)
    must propagate, never be turned into a fallback."""
    return "interrupt" in type(error).__name__.lower()
