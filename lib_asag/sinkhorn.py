"""Adversarial Sinkhorn attention: the degraded self-attention that ASAG guides away from.

Ordinary attention softmax(S), S = QK^T/sqrt(d), is the entropic optimal-transport plan for the cost
-S with only the row marginal enforced. ASAG flips the cost to +S (similar query/key pairs become
expensive) and enforces both marginals with a few Sinkhorn iterations, which yields a high-entropy,
nearly doubly-stochastic plan. See docs/method.md for the formulation and its sources.

Everything is computed from the log-kernel -S/epsilon in float32 whatever the input dtype and whatever
autocast the host samples under (each public entry turns autocast off for its device; A1111 wraps
sampling in fp16 CUDA or bf16 CPU autocast, under which an attention sink overflows the scalings), so
fp16/bf16 inputs with large scores neither overflow nor underflow; results come back in the input dtype.
Fast path: the log-kernel is exponentiated once, stabilised by its row maxima and row-normalised (a fused
in-place softmax, which is also the first row step); Sinkhorn then runs on the two scaling vectors (one
matrix-vector product per half-iteration, no N x N temporaries) and the final row step is folded into the
product with V. Items (batch*head) whose scalings leave the range where this is exact to float32 rounding
are redone with full log-domain iterations (a log-sum-exp per half-iteration). Work is chunked over batch x
heads so that at most `chunk_mb` megabytes of N_q x N_k float32 matrices exist at once (one matrix per item
on the fast path, two on the log-domain path).
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, TypeVar

import torch

_F = TypeVar("_F", bound=Callable[..., torch.Tensor])

DEFAULT_CHUNK_MB = 256.0
"""Memory budget for the N_q x N_k float32 work matrices of one chunk."""

_MATRICES_FAST = 1  # the fast path holds only the stabilised kernel
_MATRICES_LOG = 2  # the log-domain path holds the log-plan and one scratch buffer

_CPU_CHUNK_MB = 8.0
"""On CPU chunks stay below this even when the budget allows more: the work buffer is faulted in
once per call and reused by every chunk, and a small matrix stays in cache between passes. At
N = 1024 x 20 heads this made the call 1.3x (1 thread) to 1.5x (2 threads) faster than 256 MiB chunks."""

_LOG2_E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * log2(e)); torch's exp2 is ~3x cheaper on CPU

_MAX_SCALING = 1e25
"""Bound on max(u) * max(v) for the scaling path. Kernel entries below float32's normal range
(1.2e-38, or flushed to zero) are then worth < 1e-13 in the plan, far below float32 rounding."""


# ----------------------------------------------------------------------------- log-domain path

_FUSED_SOFTMAX: dict[str, bool] = {}


def _fused_softmax_works(device: torch.device) -> bool:
    """Whether `torch.softmax(x, -1, out=x)` and `torch.log_softmax(x, -1, out=x)` work in place on
    this device type (checked once).

    One fused pass instead of five, with no N x N temporary; aliasing `out` with the input is not
    documented, so it is compared with the out-of-place result before being trusted."""
    if device.type not in _FUSED_SOFTMAX:
        x = torch.randn(3, 5, 1031, generator=torch.Generator().manual_seed(0)).mul_(8).to(device)
        expected = torch.softmax(x, -1)
        try:
            y = x.clone()
            _FUSED_SOFTMAX[device.type] = (
                torch.allclose(torch.softmax(x, -1, out=x), expected, rtol=1e-6, atol=0)
                and torch.allclose(torch.log_softmax(y, -1, out=y), expected.log(), rtol=1e-5, atol=1e-5))
        except (TypeError, RuntimeError):
            _FUSED_SOFTMAX[device.type] = False
    return _FUSED_SOFTMAX[device.type]


def _log_normalise_(log_plan: torch.Tensor, dim: int, log_target: float, scratch: torch.Tensor) -> torch.Tensor:
    """Shift `log_plan` in place so that its sums along `dim` equal exp(log_target).

    Returns the shift that was applied (before the target), i.e. log of the sums found; a stable
    logsumexp that reuses `scratch` instead of allocating an N x N temporary. Terms below 2**-126
    of the largest cannot change a float32 sum; they are clamped to it because producing
    subnormal numbers makes exp several times slower on x86 (seen at small epsilon)."""
    peak = log_plan.amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    torch.sub(log_plan, peak, out=scratch).mul_(_LOG2_E).clamp_min_(-126.0).exp2_()
    log_sums = scratch.sum(dim=dim, keepdim=True).log_().add_(peak)
    log_plan.sub_(log_sums - log_target)
    return log_sums - log_target


def _log_normalise_rows_(log_plan: torch.Tensor, scratch: torch.Tensor, want_shift: bool) -> torch.Tensor | None:
    """Row step of `_sinkhorn_log_`: a fused in-place log_softmax where that works (one pass
    instead of five); the shift is then read off the row maxima, only when asked for."""
    if not _fused_softmax_works(log_plan.device):
        return _log_normalise_(log_plan, -1, 0.0, scratch)
    peak = log_plan.amax(dim=-1, keepdim=True) if want_shift else None
    torch.log_softmax(log_plan, -1, out=log_plan)
    return peak - log_plan.amax(dim=-1, keepdim=True) if want_shift else None


def _sinkhorn_log_(log_plan: torch.Tensor, iterations: int, tol: float | None) -> torch.Tensor:
    """Sinkhorn iterations in place on a float32 log-kernel of shape (batch, N_q, N_k); returns the
    plan itself (probabilities, in the same storage).

    Rows are normalised to sum 1 and columns to N_q/N_k (N_q times the plan with uniform
    marginals), ending with a row normalisation so every query's weights sum to 1. With `tol`,
    stops once the row sums found before a row step are within `tol` of 1."""
    n_q, n_k = log_plan.shape[-2:]
    log_col_target = math.log(n_q / n_k)
    scratch = torch.empty_like(log_plan)
    for step in range(iterations):
        check = tol is not None and step > 0
        row_shift = _log_normalise_rows_(log_plan, scratch, check)
        if check and float(row_shift.abs().amax()) < tol:
            return log_plan.exp_()
        _log_normalise_(log_plan, -2, log_col_target, scratch)
    if _fused_softmax_works(log_plan.device):  # final row step and exp in one pass
        return torch.softmax(log_plan, -1, out=log_plan)
    _log_normalise_(log_plan, -1, 0.0, scratch)
    return log_plan.exp_()


# ----------------------------------------------------------------------------- scaling fast path

def _stabilised_kernel_(log_kernel: torch.Tensor) -> torch.Tensor:
    """exp(log_kernel - row max) / row sum, in place: the first Sinkhorn row step, with nothing
    able to overflow; its largest entry per row is >= 1/N_k.

    Fused softmax where it works in place; otherwise exp2((L - max) * log2(e)) (torch's exp2 is
    ~3x cheaper than exp on CPU; changing base after the max is subtracted keeps exp's accuracy,
    folding log2(e) into the log-kernel measurably did not)."""
    if _fused_softmax_works(log_kernel.device):
        return torch.softmax(log_kernel, -1, out=log_kernel)
    peak = log_kernel.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    kernel = log_kernel.sub_(peak).mul_(_LOG2_E).clamp_min_(-126.0).exp2_()
    return kernel.div_(kernel.sum(dim=-1, keepdim=True))


def _row_sums(kernel: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """K @ col_scale, (batch, N_q, 1). On CPU a batched GEMM with one column is ~5x slower than
    matrix-vector products and its rounding depends on the batch size, so it loops over items."""
    if kernel.device.type == "cpu":
        return torch.stack([torch.mv(k, c) for k, c in zip(kernel, col_scale[..., 0])]).unsqueeze(-1)
    return torch.bmm(kernel, col_scale)


def _max_log_ratio(ratios: torch.Tensor) -> float:
    """max |log r|, infinite when any r is 0, inf or NaN (the `tol` test; syncs with the device)."""
    return float(torch.nan_to_num(ratios, nan=0.0).log_().abs_().amax())


def _sinkhorn_scalings(kernel: torch.Tensor, iterations: int,
                       tol: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sinkhorn on the scalings of a row-normalised kernel K of shape (batch, N_q, N_k).

    The plan after the final row step is diag(1 / row_sums) K diag(col_scale). Returns
    (col_scale (batch, N_k, 1), row_sums (batch, N_q, 1), exact (batch,) bool): `exact` is False for
    items whose scalings left the safe range (or went non-finite) and must be redone in log domain.
    Same steps and the same `tol` rule as `_sinkhorn_log_`; each half-iteration reads K once."""
    batch, n_q, n_k = kernel.shape
    col_target = n_q / n_k
    col_scale = kernel.new_ones(batch, n_k, 1)
    row_sums = kernel.new_ones(batch, n_q, 1)  # the kernel comes row-normalised
    worst = kernel.new_zeros(batch)
    for step in range(iterations):
        row_scale = row_sums.reciprocal()
        col_scale = torch.bmm(row_scale.transpose(1, 2), kernel).reciprocal_().mul_(col_target).transpose(1, 2)
        row_sums = _row_sums(kernel, col_scale)
        worst = torch.maximum(worst, row_scale.amax(dim=(1, 2)) * col_scale.amax(dim=(1, 2)))
        if tol is not None and step + 1 < iterations and _max_log_ratio(row_sums * row_scale) < tol:
            break
    worst = torch.maximum(worst, row_sums.reciprocal().amax(dim=(1, 2)) * col_scale.amax(dim=(1, 2)))
    return col_scale, row_sums, worst <= _MAX_SCALING  # NaN compares False


# ----------------------------------------------------------------------------- public API

def _turn_autocast_off(stack: contextlib.ExitStack, device: torch.device) -> None:
    """Disable autocast for `device`'s type until `stack` closes; nothing where torch has no autocast
    for that type (meta; MPS on older torch; a backend such as DirectML that registers none), since
    nothing can then be autocast there."""
    try:
        stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
    except (RuntimeError, AssertionError, ValueError):
        pass


def owns_precision(fn: _F) -> _F:
    """Run the Sinkhorn entry `fn` with autocast off for its input's device: inside a host's autocast the
    matrix products that do not write into float32 buffers would run in fp16/bf16, which is inexact and,
    on an attention sink, overflows and mixes dtypes (issue 15)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> torch.Tensor:
        first = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        with contextlib.ExitStack() as stack:
            _turn_autocast_off(stack, first.device)
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _check(iterations: int, epsilon: float) -> None:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")


@owns_precision
def sinkhorn_plan(scores: torch.Tensor, *, iterations: int, epsilon: float,
                  tol: float | None = None) -> torch.Tensor:
    """The row-normalised adversarial Sinkhorn plan for similarity `scores` of shape (..., N_q, N_k).

    Cost is +scores (similar pairs are expensive), log-kernel -scores/epsilon. Returns float32
    probabilities of the same shape; each row sums to 1. iterations=0 gives softmax(-scores/epsilon)."""
    _check(iterations, epsilon)
    shape = scores.shape
    flat = scores.reshape(-1, shape[-2], shape[-1])
    plan = _stabilised_kernel_(flat.to(torch.float32) * (-1.0 / epsilon))
    col_scale, row_sums, exact = _sinkhorn_scalings(plan, iterations, tol)
    plan.mul_(col_scale.transpose(1, 2)).div_(row_sums)
    redo = (~exact).nonzero().flatten()
    if len(redo):
        log_plan = flat[redo].to(torch.float32) * (-1.0 / epsilon)
        plan[redo] = _sinkhorn_log_(log_plan, iterations, tol)
    return plan.reshape(shape)


def _chunk_size(items: int, n_q: int, n_k: int, chunk_mb: float, matrices: int) -> int:
    per_item = matrices * n_q * n_k * 4
    return max(1, min(items, int(chunk_mb * 2**20 // per_item)))


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B*heads, N, d): a strided view when B == 1, a copy otherwise."""
    batch, n, inner = t.shape
    return t.reshape(batch, n, heads, inner // heads).transpose(1, 2).reshape(batch * heads, n, inner // heads)


def _merge_heads(t: torch.Tensor, batch: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(B*heads, N, d) float32 -> (B, N, heads*d) in `dtype`, one pass."""
    _, n, dim_head = t.shape
    merged = torch.empty(batch, n, heads * dim_head, dtype=dtype, device=t.device)
    merged.view(batch, n, heads, dim_head).copy_(t.view(batch, heads, n, dim_head).transpose(1, 2))
    return merged


def _float32(t: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """`t` itself when already float32, else converted into `buffer`."""
    return t if buffer is None else buffer.copy_(t)


def _log_kernel(q_h: torch.Tensor, k_h: torch.Tensor, factor: float) -> torch.Tensor:
    """factor * Q K^T in float32, with the factor folded into the (small) query matrix."""
    return torch.bmm(q_h.to(torch.float32) * factor, k_h.to(torch.float32).transpose(1, 2))


def _attend_log_domain(q_h: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor, factor: float, iterations: int,
                       tol: float | None) -> torch.Tensor:
    """Full log-domain iterations for items the scaling path cannot represent exactly (float32 out)."""
    plan = _sinkhorn_log_(_log_kernel(q_h, k_h, factor), iterations, tol)
    return torch.bmm(plan, v_h.to(torch.float32))


class _ChunkBuffers:
    """Float32 work buffers sized for one chunk and reused by every chunk of a call: on CPU each
    fresh buffer costs page faults worth more than the arithmetic done in it."""

    def __init__(self, step: int, n_q: int, n_k: int, dim_head: int, k: torch.Tensor, v: torch.Tensor) -> None:
        def new(*shape: int) -> torch.Tensor:
            return torch.empty(step, *shape, dtype=torch.float32, device=k.device)
        self.kernel = new(n_q, n_k)
        self.q = new(n_q, dim_head)
        self.k = None if k.dtype == torch.float32 else new(n_k, dim_head)
        self.v = None if v.dtype == torch.float32 else new(n_k, dim_head)
        self.scaled_v = new(n_k, dim_head)

    def take(self, size: int) -> dict[str, torch.Tensor | None]:
        return {name: None if buf is None else buf[:size] for name, buf in vars(self).items()}


def _attend_fast(q_h: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor, factor: float, iterations: int,
                 tol: float | None, buffers: dict[str, torch.Tensor | None], out: torch.Tensor) -> torch.Tensor:
    """Scaling-path attention for one chunk into `out` (float32); returns the per-item `exact`
    flags. The final row step is folded in: out = (K diag(v) V) / (K v)."""
    q_scaled = buffers["q"].copy_(q_h).mul_(factor)
    log_kernel = torch.bmm(q_scaled, _float32(k_h, buffers["k"]).transpose(1, 2), out=buffers["kernel"])
    kernel = _stabilised_kernel_(log_kernel)
    col_scale, row_sums, exact = _sinkhorn_scalings(kernel, iterations, tol)
    scaled_v = torch.mul(_float32(v_h, buffers["v"]), col_scale, out=buffers["scaled_v"])
    torch.bmm(kernel, scaled_v, out=out).div_(row_sums)
    return exact


@owns_precision
def adversarial_sinkhorn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: int,
                                   iterations: int, epsilon: float, tol: float | None = None,
                                   chunk_mb: float = DEFAULT_CHUNK_MB) -> torch.Tensor:
    """Drop-in for `softmax(QK^T/sqrt(d)) V` with the adversarial Sinkhorn plan in place of softmax.

    q: (B, N_q, heads*d); k, v: (B, N_k, heads*d), the projected tensors hosts hand to attention
    functions (UNet attn1, MMDiT's joint `attention(q, k, v, heads)`). Returns (B, N_q, heads*d) in q's
    dtype; the caller applies the output projection."""
    batch, _, inner = q.shape
    if inner % heads:
        raise ValueError(f"inner dim {inner} is not divisible by {heads} heads")
    out = _attend_items(_heads(q, heads), _heads(k, heads), _heads(v, heads), iterations=iterations,
                        epsilon=epsilon, tol=tol, chunk_mb=chunk_mb)
    return _merge_heads(out, batch, heads, q.dtype)


@owns_precision
def adversarial_sinkhorn_attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, iterations: int,
                                         epsilon: float, tol: float | None = None,
                                         chunk_mb: float = DEFAULT_CHUNK_MB) -> torch.Tensor:
    """The same for head-major tensors, as Flux-style attention receives them after QK-norm and RoPE.

    q: (B, heads, N_q, d); k, v: (B, heads, N_k, d). Returns (B, heads, N_q, d) in q's dtype."""
    batch, heads, n_q, dim_head = q.shape
    flat = [t.reshape(batch * heads, t.shape[2], dim_head) for t in (q, k, v)]
    out = _attend_items(*flat, iterations=iterations, epsilon=epsilon, tol=tol, chunk_mb=chunk_mb)
    return out.view(batch, heads, n_q, dim_head).to(q.dtype)


def _attend_items(q_h: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor, *, iterations: int, epsilon: float,
                  tol: float | None, chunk_mb: float) -> torch.Tensor:
    """Adversarial Sinkhorn attention over items (batch x heads): (items, N, d) -> float32 (items, N_q, d)."""
    _check(iterations, epsilon)
    items, n_q, dim_head = q_h.shape
    n_k = k_h.shape[1]
    # Fold 1/sqrt(d) and -1/epsilon into q so the matmul yields the log-kernel directly.
    factor = -1.0 / (math.sqrt(dim_head) * epsilon)
    out = torch.empty(items, n_q, dim_head, dtype=torch.float32, device=q_h.device)
    if q_h.device.type == "cpu":
        chunk_mb = min(chunk_mb, _CPU_CHUNK_MB)
    step = _chunk_size(items, n_q, n_k, chunk_mb, _MATRICES_FAST)
    buffers = _ChunkBuffers(min(step, items), n_q, n_k, dim_head, k_h, v_h)
    redo = []
    for start in range(0, items, step):
        part, size = slice(start, start + step), min(step, items - start)
        exact = _attend_fast(q_h[part], k_h[part], v_h[part], factor, iterations, tol, buffers.take(size),
                             out[part])
        redo.append((~exact).nonzero().flatten() + start)
    del buffers
    redo_items = torch.cat(redo) if redo else torch.empty(0, dtype=torch.long)
    step = _chunk_size(max(1, len(redo_items)), n_q, n_k, chunk_mb, _MATRICES_LOG)
    for start in range(0, len(redo_items), step):
        idx = redo_items[start:start + step]
        out[idx] = _attend_log_domain(q_h[idx], k_h[idx], v_h[idx], factor, iterations, tol)
    return out
