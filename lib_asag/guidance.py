"""The guidance rule: CFG plus the ASAG term, its schedule over the steps, and optional rescale.

All tensors are predictions in the space where the host combines CFG (the denoised x0 estimate in
A1111 and Forge). Pure functions of tensors and floats: no host types.
"""
from __future__ import annotations

import math

import torch

ADAPTIVE_MODES = ("constant", "linear", "cosine")


def asag_term(cond: torch.Tensor, perturbed: torch.Tensor, scale: float) -> torch.Tensor:
    """s * (D_c - D_asag): the push away from the prediction made with degraded self-attention."""
    return (cond - perturbed) * scale


def asag_guidance(uncond: torch.Tensor | None, cond: torch.Tensor, perturbed: torch.Tensor, *,
                  cfg_scale: float, scale: float) -> torch.Tensor:
    """D_u + w (D_c - D_u) + s (D_c - D_asag); without an unconditional prediction, D_c + s (D_c - D_asag)."""
    guided = cond if uncond is None else uncond + (cond - uncond) * cfg_scale
    return guided + asag_term(cond, perturbed, scale)


def step_progress(step: int, total_steps: int) -> float:
    """Fraction of the sampling already done before `step` (0-based): 0 at the first step."""
    return step / total_steps if total_steps > 0 else 0.0


def is_active(step: int, total_steps: int, *, start: float, end: float) -> bool:
    """Whether ASAG runs at `step`: start <= progress < end, progress = step / total_steps."""
    progress = step_progress(step, total_steps)
    return start <= progress < end


def scheduled_scale(scale: float, progress: float, mode: str) -> float:
    """The scale at `progress` in [0, 1] of the active range: constant, or decaying to 0 at the end.

    Decay follows the intuition shared by PAG/SEG practice that structure is decided early and
    guidance late in sampling mostly sharpens artefacts."""
    progress = min(max(progress, 0.0), 1.0)
    if mode == "linear":
        return scale * (1.0 - progress)
    if mode == "cosine":
        return scale * 0.5 * (1.0 + math.cos(math.pi * progress))
    if mode == "constant":
        return scale
    raise ValueError(f"unknown adaptive mode {mode!r}; expected one of {ADAPTIVE_MODES}")


def effective_scale(params, step: int, total_steps: int) -> float:
    """The ASAG scale to use at `step` for an ASAGParams-like object; 0.0 outside the active range."""
    if not is_active(step, total_steps, start=params.start, end=params.end):
        return 0.0
    width = params.end - params.start
    within = (step_progress(step, total_steps) - params.start) / width if width > 0 else 0.0
    return scheduled_scale(params.scale, within, params.adaptive)


def rescale_guidance(guided: torch.Tensor, reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Blend `guided` with a copy rescaled to the per-sample std of `reference` (Lin et al. 2023).

    Counters the over-saturation large guidance terms cause; phi = 0 returns `guided` unchanged."""
    if phi == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = reference.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return guided * (phi * ratio + (1.0 - phi))
