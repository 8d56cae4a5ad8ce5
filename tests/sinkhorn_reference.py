"""The one float64 reference of the adversarial Sinkhorn attention every test compares against.

Written from docs/method.md, independently of lib_asag.sinkhorn: textbook log-domain iterations, one
(batch, head) at a time, no stabilisation tricks."""
from __future__ import annotations

import math
from typing import Callable

import torch


def reference_plan(scores: torch.Tensor, iterations: int, epsilon: float) -> torch.Tensor:
    """Textbook float64 log-domain Sinkhorn on (N_q, N_k) scores: rows to 1, columns to N_q/N_k, final row step."""
    n_q, n_k = scores.shape
    log_p = -scores.double() / epsilon
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, 1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, 0, keepdim=True) + math.log(n_q / n_k)
    return torch.softmax(log_p, 1)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        weights_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Plain per-head attention (B, N, heads*d) with an explicit weight matrix weights_fn(QK^T/sqrt(d)), float64."""
    b, n_q, inner = q.shape
    d = inner // heads
    out = torch.empty(b, n_q, inner, dtype=torch.float64)
    for i in range(b):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            s = q[i, :, cols].double() @ k[i, :, cols].double().T / math.sqrt(d)
            out[i, :, cols] = weights_fn(s) @ v[i, :, cols].double()
    return out


def sinkhorn_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, iterations: int,
                                 epsilon: float) -> torch.Tensor:
    """Adversarial Sinkhorn attention on projected q, k, v, float64."""
    return reference_attention(q, k, v, heads, lambda s: reference_plan(s, iterations, epsilon))


def masked_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, n_text: int,
                               block_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """float64 joint attention (B, N, heads*d), text tokens first, whose image x image block of
    A = softmax(QK^T/sqrt(d)) is replaced by block_fn(A_ii, S_ii); every other entry of A is the model's."""
    def weights(s: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(s, 1)
        a[n_text:, n_text:] = block_fn(a[n_text:, n_text:], s[n_text:, n_text:])
        return a
    return reference_attention(q, k, v, heads, weights)


def image_only_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, n_text: int,
                                   iterations: int, epsilon: float) -> torch.Tensor:
    """The image-only ASAG scope (docs/method.md 2b), float64: the image x image block of A becomes its row mass
    times the adversarial plan of the image x image scores; text rows and image-to-text weights are kept."""
    return masked_attention_reference(
        q, k, v, heads, n_text, lambda a_ii, s_ii: a_ii.sum(1, keepdim=True) * reference_plan(s_ii, iterations, epsilon))
