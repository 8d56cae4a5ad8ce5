"""Sinkhorn plan and attention against independent references (POT, plain softmax attention)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_asag import sinkhorn
from lib_asag.sinkhorn import adversarial_sinkhorn_attention, sinkhorn_plan
from sinkhorn_reference import reference_attention, reference_plan
from tensor_memory import PeakTensorMemory


def _pot_plan(scores: torch.Tensor, epsilon: float) -> np.ndarray:
    """POT's log-domain Sinkhorn with uniform marginals and cost = +scores, scaled so rows sum to 1."""
    n_q, n_k = scores.shape
    plan = ot.sinkhorn(np.full(n_q, 1.0 / n_q), np.full(n_k, 1.0 / n_k), scores.double().numpy(), reg=epsilon,
                       method="sinkhorn_log", numItermax=200_000, stopThr=1e-13)
    return plan * n_q


def _entropy(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.double()
    return -(rows * rows.clamp_min(1e-300).log()).sum(-1)


@pytest.mark.parametrize("n_q,n_k,epsilon", [(6, 6, 0.5), (9, 4, 1.0), (3, 11, 2.0), (32, 32, 0.3)])
def test_plan_matches_pot(n_q, n_k, epsilon):
    scores = torch.randn(n_q, n_k, generator=torch.Generator().manual_seed(n_q * n_k)) * 2
    plan = sinkhorn_plan(scores, iterations=5000, epsilon=epsilon)
    np.testing.assert_allclose(plan.numpy(), _pot_plan(scores, epsilon), atol=1e-4)


def test_rows_sum_to_one_and_columns_converge():
    scores = torch.randn(4, 24, 24, generator=torch.Generator().manual_seed(1)) * 3
    errors = []
    for iterations in (0, 1, 4, 16, 64, 512):
        plan = sinkhorn_plan(scores, iterations=iterations, epsilon=1.0)
        torch.testing.assert_close(plan.sum(-1), torch.ones(4, 24), atol=1e-5, rtol=0)
        errors.append(float((plan.sum(-2) - 1).abs().max()))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-3 < errors[0]


def test_columns_target_ratio_when_rectangular():
    scores = torch.randn(12, 4, generator=torch.Generator().manual_seed(2))
    plan = sinkhorn_plan(scores, iterations=500, epsilon=1.0)
    torch.testing.assert_close(plan.sum(-2), torch.full((4,), 3.0), atol=1e-4, rtol=0)


def test_zero_iterations_is_anti_softmax():
    scores = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(3)) * 4
    plan = sinkhorn_plan(scores, iterations=0, epsilon=0.8)
    torch.testing.assert_close(plan, torch.softmax(-scores / 0.8, dim=-1), atol=1e-6, rtol=1e-5)


def test_large_epsilon_tends_to_uniform():
    scores = torch.randn(16, 20, generator=torch.Generator().manual_seed(4)) * 5
    plan = sinkhorn_plan(scores, iterations=3, epsilon=1e6)
    torch.testing.assert_close(plan, torch.full_like(plan, 1 / 20), atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(16, 96), dim=st.sampled_from([16, 40, 64, 160]), seed=st.integers(0, 2**31 - 1),
       spread=st.floats(0.1, 4.0), epsilon=st.floats(1.0, 4.0), iterations=st.integers(1, 8))
def test_plan_entropy_not_below_softmax_attention(n, dim, seed, spread, epsilon, iterations):
    """On self-attention-like scores (a Gram matrix X X^T / sqrt(d)), the adversarial plan at
    epsilon >= 1 is at least as spread out as ordinary attention softmax(S).

    Not a theorem for arbitrary matrices (isotropic random S can break it for tiny N); the regime
    here is the one that matters: N >= 16 tokens, real head dims, temperatures >= attention's."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    scores = x @ x.T / math.sqrt(dim)
    plan = sinkhorn_plan(scores, iterations=iterations, epsilon=epsilon)
    assert _entropy(plan).sum() >= _entropy(torch.softmax(scores, -1)).sum() - 1e-6


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), low=st.floats(0.2, 2.0), ratio=st.floats(1.1, 5.0))
def test_entropy_grows_with_epsilon(n, seed, low, ratio):
    """Higher temperature never makes the converged plan sharper (entropic OT is monotone in reg)."""
    scores = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    cold = sinkhorn_plan(scores, iterations=300, epsilon=low)
    hot = sinkhorn_plan(scores, iterations=300, epsilon=low * ratio)
    assert _entropy(hot).sum() >= _entropy(cold).sum() - 1e-5


def test_early_exit_tolerance_meets_marginals():
    scores = torch.randn(2, 40, 40, generator=torch.Generator().manual_seed(5))
    plan = sinkhorn_plan(scores, iterations=10_000, epsilon=1.0, tol=1e-6)
    torch.testing.assert_close(plan.sum(-2), torch.ones(2, 40), atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads,dim_head,n_q,n_k", [(8, 40, 64, 64), (8, 160, 16, 16), (5, 64, 17, 77),
                                                    (10, 64, 1, 1), (20, 64, 33, 9)])
def test_attention_matches_reference(heads, dim_head, n_q, n_k):
    g = torch.Generator().manual_seed(heads * n_q)
    q = torch.randn(2, n_q, heads * dim_head, generator=g)
    k = torch.randn(2, n_k, heads * dim_head, generator=g)
    v = torch.randn(2, n_k, heads * dim_head, generator=g)
    out = adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=4, epsilon=0.7)
    ref = reference_attention(q, k, v, heads, lambda s: reference_plan(s, 4, 0.7))
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_attention_converged_matches_pot_per_head():
    heads, d, n = 2, 8, 10
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, n, heads * d, generator=g) for _ in range(3))
    out = adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=3000, epsilon=0.5)
    ref = reference_attention(q, k, v, heads, lambda s: torch.from_numpy(_pot_plan(s, 0.5)))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


def test_zero_iterations_attention_equals_softmax_attention_of_negated_scores():
    """T = 0 and epsilon = 1 is ordinary attention with the sign of the scores flipped (via -q)."""
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 12, 4 * 16, generator=g) for _ in range(3))
    out = adversarial_sinkhorn_attention(q, k, v, heads=4, iterations=0, epsilon=1.0)
    split = lambda t: t.view(2, -1, 4, 16).transpose(1, 2)  # noqa: E731
    ref = torch.nn.functional.scaled_dot_product_attention(split(-q), split(k), split(v))
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(2, 12, 64), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_large_scores_are_finite(dtype):
    g = torch.Generator().manual_seed(9)
    # |S| = |q.k|/sqrt(d) reaches ~1e4 with these magnitudes.
    q = (torch.randn(1, 256, 2 * 64, generator=g) * 40).to(dtype)
    k = (torch.randn(1, 256, 2 * 64, generator=g) * 40).to(dtype)
    v = torch.randn(1, 256, 2 * 64, generator=g).to(dtype)
    scores = q[0, :, :64].float() @ k[0, :, :64].float().T / 8
    assert scores.abs().max() > 1e3
    for epsilon in (0.05, 1.0, 10.0):
        out = adversarial_sinkhorn_attention(q, k, v, heads=2, iterations=5, epsilon=epsilon)
        assert out.dtype == dtype and torch.isfinite(out).all()
        plan = sinkhorn_plan(scores.to(dtype), iterations=5, epsilon=epsilon)
        assert torch.isfinite(plan).all()
        torch.testing.assert_close(plan.sum(-1), torch.ones(256), atol=1e-4, rtol=0)


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(3, 96, 5 * 32, generator=g) for _ in range(3))
    whole = adversarial_sinkhorn_attention(q, k, v, heads=5, iterations=3, epsilon=1.0, chunk_mb=1e6)
    tiny = adversarial_sinkhorn_attention(q, k, v, heads=5, iterations=3, epsilon=1.0, chunk_mb=1e-6)
    mid = adversarial_sinkhorn_attention(q, k, v, heads=5, iterations=3, epsilon=1.0, chunk_mb=0.2)
    torch.testing.assert_close(tiny, whole, atol=0, rtol=0)
    torch.testing.assert_close(mid, whole, atol=0, rtol=0)


def test_peak_probe_counts_live_tensors():
    """The probe itself: two 4 MiB tensors alive at once, then one freed before a third."""
    with PeakTensorMemory() as probe:
        a = torch.zeros(2**20)
        b = torch.zeros(2**20)
        view = a[::2]  # a view adds no storage
        del a, b
        c = torch.ones(2**20)
        del c
    assert probe.peak_mb == 8.0, probe.peak_mb
    assert probe.now == view.untyped_storage().nbytes()


def _peak_mb(monkeypatch, chunk_mb: float, cpu_cap: float) -> float:
    """Peak tensor memory of one call at N = 1024 x 16 heads (one N x N fp32 matrix = 4 MiB)."""
    monkeypatch.setattr(sinkhorn, "_CPU_CHUNK_MB", cpu_cap)
    q = torch.randn(1, 1024, 16 * 8, generator=torch.Generator().manual_seed(0))
    with PeakTensorMemory() as probe:
        adversarial_sinkhorn_attention(q, q, q, heads=16, iterations=2, epsilon=1.0, chunk_mb=chunk_mb)
    return probe.peak_mb


_SMALL_TENSORS_MB = 2.0  # float32 copies of q, k, v and the output (0.5 MiB each) plus vectors


def test_chunked_peak_memory_is_bounded(monkeypatch):
    unbounded = _peak_mb(monkeypatch, 1e6, cpu_cap=1e6)
    assert unbounded > 16 * 4, unbounded  # control: all 16 kernel matrices alive at once
    for budget in (16.0, 4.0):
        bounded = _peak_mb(monkeypatch, budget, cpu_cap=1e6)
        assert bounded < budget + _SMALL_TENSORS_MB, (budget, bounded)
    below_budget = _peak_mb(monkeypatch, 1e-3, cpu_cap=1e6)
    assert below_budget < 4 + _SMALL_TENSORS_MB, below_budget  # one item per chunk at least
    default_cpu = _peak_mb(monkeypatch, sinkhorn.DEFAULT_CHUNK_MB, cpu_cap=sinkhorn._CPU_CHUNK_MB)
    assert default_cpu < sinkhorn._CPU_CHUNK_MB + _SMALL_TENSORS_MB, default_cpu


def test_log_domain_fallback_peak_memory_is_bounded(monkeypatch):
    """Items the scaling path cannot represent are redone with two N x N matrices each, still in budget."""
    monkeypatch.setattr(sinkhorn, "_MAX_SCALING", -1.0)  # send every item to the log-domain path
    unbounded = _peak_mb(monkeypatch, 1e6, cpu_cap=1e6)
    assert unbounded > 16 * 4 * 2, unbounded
    bounded = _peak_mb(monkeypatch, 16.0, cpu_cap=1e6)
    assert bounded < 16 + _SMALL_TENSORS_MB, bounded
