"""Adversarial Sinkhorn attention: the degraded self-attention that ASAG guides away from.

Ordinary attention softmax(S), S = QK^T/sqrt(d), is the entropic optimal-transport plan for the cost
-S with only the row marginal enforced. ASAG flips the cost to +S (similar query/key pairs become
expensive) and enforces both marginals with a few Sinkhorn iterations, which yields a high-entropy,
nearly doubly-stochastic plan. See docs/method.md for the formulation and its sources.

Everything runs in the log domain in float32 whatever the input dtype, so fp16/bf16 inputs with large
scores neither overflow nor underflow. Work is chunked over batch x heads so that at most
`chunk_mb` megabytes of N_q x N_k float32 matrices exist at once.
"""
from __future__ import annotations

import math

import torch

DEFAULT_CHUNK_MB = 256.0
"""Memory budget for the N_q x N_k float32 work matrices of one chunk (two per batch*head)."""

_MATRICES_PER_ITEM = 2  # the log-plan and one scratch buffer


def _log_normalise_(log_plan: torch.Tensor, dim: int, log_target: float, scratch: torch.Tensor) -> torch.Tensor:
    """Shift `log_plan` in place so that its sums along `dim` equal exp(log_target).

    Returns the shift that was applied (before the target), i.e. log of the sums found; a stable
    logsumexp that reuses `scratch` instead of allocating an N x N temporary."""
    peak = log_plan.amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    torch.sub(log_plan, peak, out=scratch).exp_()
    log_sums = scratch.sum(dim=dim, keepdim=True).log_().add_(peak)
    log_plan.sub_(log_sums - log_target)
    return log_sums - log_target


def _sinkhorn_log_(log_plan: torch.Tensor, iterations: int, tol: float | None) -> torch.Tensor:
    """Sinkhorn iterations in place on a float32 log-kernel of shape (batch, N_q, N_k).

    Rows are normalised to sum 1 and columns to N_q/N_k (N_q times the plan with uniform
    marginals), ending with a row normalisation so every query's weights sum to 1. With `tol`,
    stops once the row sums found before a row step are within `tol` of 1 (checked for free)."""
    n_q, n_k = log_plan.shape[-2:]
    log_col_target = math.log(n_q / n_k)
    scratch = torch.empty_like(log_plan)
    for step in range(iterations):
        row_shift = _log_normalise_(log_plan, -1, 0.0, scratch)
        if tol is not None and step > 0 and float(row_shift.abs().amax()) < tol:
            return log_plan
        _log_normalise_(log_plan, -2, log_col_target, scratch)
    _log_normalise_(log_plan, -1, 0.0, scratch)
    return log_plan


def _check(iterations: int, epsilon: float) -> None:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")


def sinkhorn_plan(scores: torch.Tensor, *, iterations: int, epsilon: float,
                  tol: float | None = None) -> torch.Tensor:
    """The row-normalised adversarial Sinkhorn plan for similarity `scores` of shape (..., N_q, N_k).

    Cost is +scores (similar pairs are expensive), log-kernel -scores/epsilon. Returns float32
    probabilities of the same shape; each row sums to 1. iterations=0 gives softmax(-scores/epsilon)."""
    _check(iterations, epsilon)
    shape = scores.shape
    log_plan = scores.reshape(-1, shape[-2], shape[-1]).to(torch.float32) * (-1.0 / epsilon)
    return _sinkhorn_log_(log_plan, iterations, tol).exp_().reshape(shape)


def _chunk_size(items: int, n_q: int, n_k: int, chunk_mb: float) -> int:
    per_item = _MATRICES_PER_ITEM * n_q * n_k * 4
    return max(1, min(items, int(chunk_mb * 2**20 // per_item)))


def adversarial_sinkhorn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: int,
                                   iterations: int, epsilon: float, tol: float | None = None,
                                   chunk_mb: float = DEFAULT_CHUNK_MB) -> torch.Tensor:
    """Drop-in for `softmax(QK^T/sqrt(d)) V` with the adversarial Sinkhorn plan in place of softmax.

    q: (B, N_q, heads*d); k, v: (B, N_k, heads*d), the projected tensors hosts hand to attention
    functions. Returns (B, N_q, heads*d) in q's dtype; the caller applies the output projection."""
    _check(iterations, epsilon)
    batch, n_q, inner = q.shape
    n_k = k.shape[1]
    if inner % heads:
        raise ValueError(f"inner dim {inner} is not divisible by {heads} heads")
    dim_head = inner // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2).reshape(-1, t.shape[1], dim_head)

    q_h, k_h, v_h = split(q), split(k), split(v)
    # Fold 1/sqrt(d) and -1/epsilon into q so the matmul yields the log-kernel directly.
    factor = -1.0 / (math.sqrt(dim_head) * epsilon)
    out = torch.empty(q_h.shape[0], n_q, v_h.shape[-1], dtype=q.dtype, device=q.device)
    step = _chunk_size(q_h.shape[0], n_q, n_k, chunk_mb)
    for start in range(0, q_h.shape[0], step):
        part = slice(start, start + step)
        log_plan = torch.bmm(q_h[part].to(torch.float32) * factor, k_h[part].to(torch.float32).transpose(1, 2))
        plan = _sinkhorn_log_(log_plan, iterations, tol).exp_()
        out[part] = torch.bmm(plan, v_h[part].to(torch.float32)).to(q.dtype)
        del log_plan, plan
    return out.reshape(batch, heads, n_q, dim_head).transpose(1, 2).reshape(batch, n_q, inner)
