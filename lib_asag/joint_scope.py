"""Image-only scope of ASAG on a joint (text + image) attention: Sinkhorn on the image x image block only.

A DiT block attends over one joint sequence [text tokens, image tokens] (MMDiT `block_mixing`, Flux
double-stream blocks: text first). The whole-joint scope replaces the attention of every query over
every key by the adversarial plan (`sinkhorn.adversarial_sinkhorn_attention`). The image-only scope
degrades only what corresponds to a UNet's self-attention, the image x image block, and keeps the
model's own exchange with the text, like diffusers' `PAGJointAttnProcessor2_0`, which masks only the
image x image block:

    S = Q K^T / sqrt(d) over the joint sequence, A = softmax(S) row-wise (the model's attention)
    text query rows:   O_t = A_t V                                   (untouched)
    image query row i: m_i = sum_{j in text} A_ij                    (its softmax mass on text keys)
                       O_i = sum_{j in text} A_ij V_j + (1 - m_i) sum_{j in image} P_ij V_j
    P = sinkhorn.sinkhorn_plan(S_image,image, T, eps): the row-normalised adversarial plan of the block

so an image query keeps its weights on the text keys exactly, and only the distribution of its
remaining mass over image keys becomes the adversarial plan. Host-free: tensors in, tensors out; float32
inside whatever autocast the host samples under (`sinkhorn.owns_precision`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import sinkhorn

DEFAULT_CHUNK_MB = 64.0
"""Budget for the N_img x N_joint float32 score matrix of one chunk of (batch x head) items."""


def _check(n_text: int, n_tokens: int) -> None:
    if not 0 <= n_text < n_tokens:
        raise ValueError(f"n_text must be in [0, {n_tokens}) for a joint sequence of {n_tokens} tokens, got {n_text}")


def _text_part(q_img: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int,
               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For image queries (items, N_i, d) of one chunk: (sum_{j in text} A_ij V_j, m_i), float32.

    A_ij needs each image row's log-sum-exp over all joint keys, hence the N_i x N scores."""
    scores = torch.bmm(q_img * scale, k.transpose(1, 2))             # (items, N_i, N)
    log_total = torch.logsumexp(scores, dim=-1, keepdim=True)
    text_weights = (scores[..., :n_text] - log_total).exp_()          # A_ij for j in text
    mass = text_weights.sum(-1, keepdim=True)
    return torch.bmm(text_weights, v[:, :n_text]), mass


@sinkhorn.owns_precision
def image_only_sinkhorn_attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_text: int,
                                        iterations: int, epsilon: float, tol: float | None = None,
                                        chunk_mb: float = DEFAULT_CHUNK_MB) -> torch.Tensor:
    """Image-only ASAG on head-major joint tensors q, k, v: (B, heads, N, d), text tokens first.

    Returns (B, heads, N, d) in q's dtype (text rows: ordinary attention; image rows: see module doc)."""
    return _image_only(q, k, v, n_text=n_text, iterations=iterations, epsilon=epsilon, tol=tol, chunk_mb=chunk_mb)


def _image_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_text: int, iterations: int, epsilon: float,
                tol: float | None, chunk_mb: float) -> torch.Tensor:
    batch, heads, n_tokens, dim_head = q.shape
    _check(n_text, n_tokens)
    q32, k32, v32 = (t.reshape(batch * heads, n_tokens, dim_head).to(torch.float32) for t in (q, k, v))
    out = torch.empty_like(q32)
    if n_text:
        out[:, :n_text] = F.scaled_dot_product_attention(q32[:, :n_text], k32, v32)
    scale = 1.0 / math.sqrt(dim_head)
    n_img = n_tokens - n_text
    step = max(1, int(chunk_mb * 2**20 // (4 * n_img * n_tokens)))
    for start in range(0, batch * heads, step):
        part = slice(start, start + step)
        q_img, k_img, v_img = q32[part, n_text:], k32[part, n_text:], v32[part, n_text:]
        if n_text:
            text_out, mass = _text_part(q_img, k32[part], v32[part], n_text, scale)
        else:
            text_out, mass = 0.0, 0.0
        plan = sinkhorn.sinkhorn_plan(torch.bmm(q_img * scale, k_img.transpose(1, 2)), iterations=iterations,
                                      epsilon=epsilon, tol=tol)
        out[part, n_text:] = text_out + (1 - mass) * torch.bmm(plan, v_img)
    return out.reshape(batch, heads, n_tokens, dim_head).to(q.dtype)


@sinkhorn.owns_precision
def image_only_sinkhorn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: int, n_text: int,
                                  iterations: int, epsilon: float, tol: float | None = None,
                                  chunk_mb: float = DEFAULT_CHUNK_MB) -> torch.Tensor:
    """The same on (B, N, heads*d) tensors, as MMDiT's `attention(q, k, v, heads)` receives them.

    Returns (B, N, heads*d) in q's dtype; the caller applies the output projections."""
    batch, n_tokens, inner = q.shape
    if inner % heads:
        raise ValueError(f"inner dim {inner} is not divisible by {heads} heads")
    split = [t.reshape(batch, t.shape[1], heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
    out = _image_only(*split, n_text=n_text, iterations=iterations, epsilon=epsilon, tol=tol, chunk_mb=chunk_mb)
    return out.transpose(1, 2).reshape(batch, n_tokens, inner)


def image_identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: int,
                             n_text: int) -> torch.Tensor:
    """diffusers' PAG on joint attention (`PAGJointAttnProcessor2_0`, src/diffusers/models/attention_processor.py
    at 58eb52c0): the image x image block of the score matrix is -inf except its diagonal, so an image query
    attends to itself and to every text key; text rows are untouched. diffusers puts the image tokens first;
    here (B, N, heads*d) is text first, as the hosts' MMDiT and Flux blocks concatenate it."""
    batch, n_tokens, inner = q.shape
    _check(n_text, n_tokens)
    mask = torch.zeros(n_tokens, n_tokens, dtype=q.dtype, device=q.device)
    mask[n_text:, n_text:] = float("-inf")
    mask[n_text:, n_text:].fill_diagonal_(0)
    split = [t.reshape(batch, n_tokens, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*split, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, n_tokens, inner)
