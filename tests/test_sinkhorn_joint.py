"""Adversarial Sinkhorn attention on the joint text+image sequences of diffusion transformers.

Two stream layouts reach the core: MMDiT (SD3 / SD3.5) hands `attention(q, k, v, heads)` the
concatenation [context tokens, image tokens] as (B, N, heads*d) (A1111 modules/models/sd3/mmdit.py
`block_mixing`, Forge backend/nn/mmditx.py `block_mixing`); Flux and Chroma hand `attention(q, k, v, pe)`
head-major (B, heads, N, d) tensors, text then image tokens (double stream) or the single-stream sequence,
after QK-norm, with RoPE applied inside (Forge backend/nn/flux.py `attention`). The plan is taken over
the whole joint sequence (docs/method.md, "Diffusion transformers")."""
from __future__ import annotations

import pytest
import torch

from lib_asag import sinkhorn
from lib_asag.sinkhorn import adversarial_sinkhorn_attention, adversarial_sinkhorn_attention_heads
from sinkhorn_reference import sinkhorn_attention_reference
from tensor_memory import PeakTensorMemory


def _joint(batch: int, n_txt: int, n_img: int, heads: int, dim_head: int, seed: int) -> list[torch.Tensor]:
    """q, k, v of a joint sequence: text tokens first, then image tokens (different statistics)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        txt = torch.randn(batch, n_txt, heads * dim_head, generator=g) * 0.5
        img = torch.randn(batch, n_img, heads * dim_head, generator=g) * 1.5 + 0.2
        out.append(torch.cat([txt, img], dim=1))
    return out


@pytest.mark.parametrize("batch,n_txt,n_img,heads,dim_head", [(1, 7, 16, 2, 16), (2, 12, 36, 3, 32),
                                                                (1, 77, 64, 4, 64)])
def test_mmdit_layout_matches_reference(batch, n_txt, n_img, heads, dim_head):
    q, k, v = _joint(batch, n_txt, n_img, heads, dim_head, seed=n_txt + n_img)
    out = adversarial_sinkhorn_attention(q, k, v, heads=heads, iterations=3, epsilon=1.0)
    ref = sinkhorn_attention_reference(q, k, v, heads, 3, 1.0)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def _head_major(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2).contiguous()


@pytest.mark.parametrize("batch,n_txt,n_img,heads,dim_head,iterations,epsilon", [
    (1, 8, 16, 2, 16, 3, 1.0), (2, 5, 30, 3, 32, 0, 0.5), (1, 16, 64, 4, 64, 6, 2.0)])
def test_flux_layout_matches_reference(batch, n_txt, n_img, heads, dim_head, iterations, epsilon):
    q, k, v = _joint(batch, n_txt, n_img, heads, dim_head, seed=heads * 7 + n_img)
    out = adversarial_sinkhorn_attention_heads(_head_major(q, heads), _head_major(k, heads), _head_major(v, heads),
                                               iterations=iterations, epsilon=epsilon)
    assert out.shape == (batch, heads, n_txt + n_img, dim_head)
    ref = sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon)
    torch.testing.assert_close(out.transpose(1, 2).reshape(ref.shape).double(), ref, atol=2e-5, rtol=1e-4)


def test_both_layouts_agree_bit_for_bit():
    q, k, v = _joint(2, 9, 25, 4, 16, seed=3)
    flat = adversarial_sinkhorn_attention(q, k, v, heads=4, iterations=3, epsilon=1.0)
    heads = adversarial_sinkhorn_attention_heads(_head_major(q, 4), _head_major(k, 4), _head_major(v, 4),
                                                 iterations=3, epsilon=1.0)
    torch.testing.assert_close(heads.transpose(1, 2).reshape(flat.shape), flat, atol=0, rtol=0)


def test_head_major_accepts_non_contiguous_views():
    """Flux builds q, k, v by permuting one qkv tensor: strided views must give the same result."""
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, 40, 3, 2, 16, generator=g)  # B L (K H D) as in flux.py SingleStreamBlock
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = adversarial_sinkhorn_attention_heads(q, k, v, iterations=3, epsilon=1.0)
    ref = adversarial_sinkhorn_attention_heads(q.contiguous(), k.contiguous(), v.contiguous(),
                                               iterations=3, epsilon=1.0)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_txt", [154, 512])
def test_low_precision_real_sequence_length_is_finite(dtype, n_txt):
    """SD3 (154 text tokens) and Flux (512) at 1024^2 (4096 image tokens), head dim 64, large |S|."""
    g = torch.Generator().manual_seed(n_txt)
    q, k, v = (torch.randn(1, 1, n_txt + 4096, 64, generator=g).mul_(scale).to(dtype) for scale in (12.0, 12.0, 1.0))
    out = adversarial_sinkhorn_attention_heads(q, k, v, iterations=3, epsilon=0.1)  # |S|/eps up to ~1e4
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("n_txt", [154, 512])
def test_memory_budget_holds_at_real_size(monkeypatch, n_txt):
    """24 heads at 1024^2: all plans together would be 24 x 66..81 MiB; the budget keeps one or a few alive.

    Head dim 8 keeps the matrix products cheap; the N x N work, which is what the budget bounds, is real size."""
    monkeypatch.setattr(sinkhorn, "_CPU_CHUNK_MB", 1e6)
    n = n_txt + 4096
    one_plan_mb = n * n * 4 / 2**20
    q = torch.randn(1, 24, n, 8, generator=torch.Generator().manual_seed(1))
    budget = 2.5 * one_plan_mb  # two plans per chunk
    with PeakTensorMemory() as probe:
        out = adversarial_sinkhorn_attention_heads(q, q, q, iterations=2, epsilon=1.0, chunk_mb=budget)
    assert torch.isfinite(out).all()
    small = 4 * 24 * n * 8 * 4 / 2**20 + 1  # float32 q, k, v copies and the output, plus vectors
    assert probe.peak_mb < budget + small, (probe.peak_mb, budget)
    assert probe.peak_mb > 2 * one_plan_mb  # the control: two plans were alive, as the budget allows
