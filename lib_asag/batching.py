"""The perturbed rows inside the host's own model call: what every adapter's batched mode shares.

An adapter adds copies of the cond rows to the host's normal batch (Forge appends them, A1111 inserts them
between the cond and the uncond rows); at the chosen self-attention layers those rows get the adversarial
Sinkhorn attention and every other row the host's own attention, so one model call yields both the normal
predictions and the perturbed one. Where that is not safe the adapter runs the perturbed rows in a call of
their own (the separate call) and says why, once per pass.

`ASAG_BATCH=0` in the WebUI's environment forces the separate call on every host (to compare the two modes).
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch

log = logging.getLogger("asag")

ENV = "ASAG_BATCH"


def switched_off() -> str | None:
    """Why batching is off by the user's choice (`ASAG_BATCH=0`), or None."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return f"{ENV}={os.environ[ENV]}"
    return None


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
    outer = normal(*(torch.cat([t[:start], t[stop:]]) for t in tensors))
    return torch.cat([outer[:start], inner.to(outer.dtype), outer[start:]])


def log_mode(reason: str | None, last: str | None) -> str:
    """Log how the perturbed prediction is computed, unless it is `last` (one line per pass and change).

    A fallback is a warning so that it reaches the console: the WebUIs configure no logging by default
    (A1111 modules/logging_config.py without --loglevel), which shows warnings only. The user's own switch
    and the batched mode are info."""
    text = ("ASAG: perturbed pass batched with cond/uncond" if reason is None
            else f"ASAG: perturbed pass in a separate call ({reason})")
    if text != last:
        quiet = reason is None or reason.startswith(ENV)
        log.log(logging.INFO if quiet else logging.WARNING, text)
    return text
