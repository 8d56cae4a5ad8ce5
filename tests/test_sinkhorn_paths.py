"""Every internal path of the Sinkhorn attention (scaling fast path, log-domain fallback, unfused
softmax) against the same independent references as test_sinkhorn.py."""
from __future__ import annotations

import pytest
import torch

from lib_asag import sinkhorn
from lib_asag.sinkhorn import adversarial_sinkhorn_attention, sinkhorn_plan
from sinkhorn_reference import reference_attention, reference_plan
from test_sinkhorn import _pot_plan


@pytest.fixture(params=["scaling", "log_domain", "unfused"])
def sinkhorn_path(request, monkeypatch):
    """Scaling fast path; every item forced onto the log-domain fallback; no fused in-place softmax."""
    if request.param == "log_domain":
        monkeypatch.setattr(sinkhorn, "_MAX_SCALING", -1.0)
    if request.param == "unfused":
        monkeypatch.setitem(sinkhorn._FUSED_SOFTMAX, "cpu", False)
    return request.param


@pytest.mark.parametrize("heads,dim_head,n_q,n_k", [(8, 40, 64, 64), (5, 64, 17, 77), (20, 64, 33, 9)])
def test_every_path_matchesreference_attention(sinkhorn_path, heads, dim_head, n_q, n_k):
    g = torch.Generator().manual_seed(heads * n_q)
    q, k, v = (torch.randn(2, n, heads * dim_head, generator=g) for n in (n_q, n_k, n_k))
    for iterations in (0, 4):
        out = adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=iterations, epsilon=0.7)
        ref = reference_attention(q, k, v, heads, lambda s: reference_plan(s, iterations, 0.7))
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_every_path_matches_pot_and_tolerance(sinkhorn_path):
    scores = torch.randn(32, 32, generator=torch.Generator().manual_seed(32)) * 2
    plan = sinkhorn_plan(scores, iterations=5000, epsilon=0.3)
    assert abs(plan - torch.from_numpy(_pot_plan(scores, 0.3)).float()).max() < 1e-4
    early = sinkhorn_plan(scores, iterations=10_000, epsilon=1.0, tol=1e-6)
    torch.testing.assert_close(early.sum(-2), torch.ones(32), atol=1e-5, rtol=0)


def test_every_path_is_chunk_invariant(sinkhorn_path):
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(3, 96, 5 * 32, generator=g) for _ in range(3))
    whole = adversarial_sinkhorn_attention(q, k, v, heads=5, iterations=3, epsilon=1.0, chunk_mb=1e6)
    for chunk_mb in (1e-6, 0.2):
        part = adversarial_sinkhorn_attention(q, k, v, heads=5, iterations=3, epsilon=1.0, chunk_mb=chunk_mb)
        torch.testing.assert_close(part, whole, atol=0, rtol=0)


def test_heads_needing_log_domain_mix_with_fast_heads():
    """Two heads with scores of ~+-1e3 at epsilon 0.5 cannot use the scaling path; their results
    must land in the right rows whatever the chunking."""
    g = torch.Generator().manual_seed(11)
    heads, d, n = 6, 16, 48
    q, k, v = (torch.randn(2, n, heads * d, generator=g) for _ in range(3))
    scale = torch.ones(heads * d)
    scale[d:2 * d] = scale[4 * d:5 * d] = 12.0
    q, k = q * scale, k * scale
    ref = reference_attention(q, k, v, heads, lambda s: reference_plan(s, 3, 0.5))
    for chunk_mb in (1e6, 0.02, 1e-6):
        out = adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=3, epsilon=0.5, chunk_mb=chunk_mb)
        torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=1e-4)


def test_scaling_guard_under_flush_to_zero():
    """A column whose kernel entries sit at float32's subnormal edge: with denormals flushed to zero
    (a process-wide CPU setting a host may use) the scaling path would lose half of that column;
    the exactness guard must send the item to the log domain."""
    scores = torch.tensor([[0.0, 1.0, 86.0], [0.0, 1.0, 86.7], [0.0, 1.0, 87.4], [0.0, 1.0, 88.1]])
    if not torch.set_flush_denormal(True):
        pytest.skip("flush-to-zero is not supported on this CPU")
    try:
        plan = sinkhorn_plan(scores, iterations=3, epsilon=1.0)
    finally:
        torch.set_flush_denormal(False)
    torch.testing.assert_close(plan.double(), reference_plan(scores, 3, 1.0), atol=1e-6, rtol=0)
