"""The degraded self-attentions the guidance methods push away from, and a patch that never leaks.

- PAG (Ahn et al. 2024): identity attention, output = V.
- SEG (Hong 2024): softmax attention with queries Gaussian-blurred over the token grid (sigma = inf:
  every query is the mean query).
- ASAG: `lib_asag.sinkhorn.adversarial_sinkhorn_attention`, the very function the extension uses.

Layers are chosen with the extension's own `lib_asag.layers` grammar ("middle", "all", ...).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from lib_asag.layers import find_self_attention, resolve_layers
from lib_asag.sinkhorn import adversarial_sinkhorn_attention

from .tiny_unet import AttentionFn, softmax_attention


def pag_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Perturbed-attention guidance: the attention map is the identity, so each token keeps its V."""
    return v


def _blur_tokens(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, N, C) tokens laid out on a square grid (reflect padding)."""
    b, n, c = q.shape
    side = math.isqrt(n)
    if math.isinf(sigma):
        return q.mean(dim=1, keepdim=True).expand_as(q)
    radius = min(math.ceil(3 * sigma), side - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=q.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    img = q.transpose(1, 2).reshape(b * c, 1, side, side)
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), kernel.reshape(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), kernel.reshape(1, 1, -1, 1))
    return img.reshape(b, c, n).transpose(1, 2)


def seg_attention(sigma: float) -> AttentionFn:
    """Smoothed-energy guidance: blur the queries, then ordinary attention."""
    return lambda q, k, v, heads: softmax_attention(_blur_tokens(q, sigma), k, v, heads)


def asag_attention(iterations: int, epsilon: float) -> AttentionFn:
    """The extension's adversarial Sinkhorn attention with T iterations and temperature epsilon."""
    return lambda q, k, v, heads: adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=iterations,
                                                                 epsilon=epsilon)


@contextlib.contextmanager
def perturbed(unet: torch.nn.Module, layers: str, attention: AttentionFn) -> Iterator[None]:
    """Replace the attn1 of `layers` (lib_asag grammar) for the duration of the block only."""
    modules = find_self_attention(unet)
    chosen = [modules[ref] for ref in resolve_layers(layers, modules)]
    try:
        for module in chosen:
            module.attention_override = attention
        yield
    finally:
        for module in chosen:
            module.attention_override = None
