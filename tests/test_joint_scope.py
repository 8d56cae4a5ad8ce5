"""The image-only ASAG scope and diffusers-style joint PAG (lib_asag/joint_scope.py) against float64 references.

The references are written here from the definition (docs/method.md 2b), independently of the
implementation: build the model's full joint attention matrix A = softmax(QK^T/sqrt(d)) in float64,
then replace ONLY its image x image block by (that block's row mass) x (textbook Sinkhorn plan of the
image x image scores) and multiply by V: text query rows and image-to-text weights stay exactly as in
A. Joint PAG the diffusers way masks only the image x image block of the scores (-inf off its diagonal).
"""
from __future__ import annotations

import math

import pytest
import torch

from lib_asag.joint_scope import (image_identity_attention, image_only_sinkhorn_attention,
                                  image_only_sinkhorn_attention_heads)
from lib_asag.sinkhorn import adversarial_sinkhorn_attention
from sinkhorn_reference import masked_attention_reference, reference_plan


def _masked_reference(q, k, v, heads: int, n_text: int, block_fn) -> torch.Tensor:
    return masked_attention_reference(q, k, v, heads, n_text, block_fn)


def _sinkhorn_block(iterations: int, epsilon: float):
    def block(a_ii, s_ii):
        return a_ii.sum(1, keepdim=True) * reference_plan(s_ii, iterations, epsilon)
    return block


def _pag_reference(q, k, v, heads: int, n_text: int) -> torch.Tensor:
    """float64 diffusers PAGJointAttnProcessor2_0 (text first here): image x image SCORES are -inf off the
    diagonal, so an image query's softmax runs over itself and the text keys; text rows see everything."""
    b, n, inner = q.shape
    d = inner // heads
    mask = torch.zeros(n, n, dtype=torch.float64)
    mask[n_text:, n_text:] = torch.where(torch.eye(n - n_text, dtype=torch.bool), 0.0, -math.inf)
    out = torch.empty(b, n, inner, dtype=torch.float64)
    for i in range(b):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            s = q[i, :, cols].double() @ k[i, :, cols].double().T / math.sqrt(d)
            out[i, :, cols] = torch.softmax(s + mask, 1) @ v[i, :, cols].double()
    return out


def _joint(batch: int, n_text: int, n_img: int, heads: int, dim_head: int, seed: int) -> list[torch.Tensor]:
    """q, k, v with text tokens first; the two streams have different statistics, as in a DiT."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        text = torch.randn(batch, n_text, heads * dim_head, generator=g) * 0.7 + 0.3
        image = torch.randn(batch, n_img, heads * dim_head, generator=g) * 1.5
        out.append(torch.cat([text, image], dim=1))
    return out


def _head_major(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2).contiguous()


@pytest.mark.parametrize("batch,n_text,n_img,heads,dim_head,iterations,epsilon", [
    (1, 4, 16, 2, 16, 3, 1.0), (2, 7, 25, 3, 16, 0, 0.5), (2, 12, 36, 2, 32, 10, 2.0), (1, 1, 9, 1, 8, 1, 0.3)])
def test_image_only_matches_masked_reference(batch, n_text, n_img, heads, dim_head, iterations, epsilon):
    q, k, v = _joint(batch, n_text, n_img, heads, dim_head, seed=n_text * 31 + n_img)
    out = image_only_sinkhorn_attention(q, k, v, heads=heads, n_text=n_text, iterations=iterations,
                                        epsilon=epsilon)
    ref = _masked_reference(q, k, v, heads, n_text, _sinkhorn_block(iterations, epsilon))
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_text_rows_are_the_models_attention_and_image_rows_are_not():
    q, k, v = _joint(2, 5, 20, 2, 16, seed=3)
    out = image_only_sinkhorn_attention(q, k, v, heads=2, n_text=5, iterations=3, epsilon=1.0)
    plain = _masked_reference(q, k, v, 2, 5, lambda a_ii, s_ii: a_ii)
    torch.testing.assert_close(out[:, :5].double(), plain[:, :5], atol=1e-5, rtol=1e-5)
    assert (out[:, 5:].double() - plain[:, 5:]).abs().max() > 1e-2  # the image rows really are perturbed


def test_head_major_equals_flat():
    q, k, v = _joint(2, 6, 16, 3, 16, seed=5)
    flat = image_only_sinkhorn_attention(q, k, v, heads=3, n_text=6, iterations=3, epsilon=1.0)
    hm = image_only_sinkhorn_attention_heads(_head_major(q, 3), _head_major(k, 3), _head_major(v, 3), n_text=6,
                                             iterations=3, epsilon=1.0)
    torch.testing.assert_close(hm, _head_major(flat, 3), atol=1e-6, rtol=1e-6)


def test_chunking_does_not_change_the_result():
    q, k, v = _joint(3, 4, 30, 4, 16, seed=7)
    whole = image_only_sinkhorn_attention(q, k, v, heads=4, n_text=4, iterations=3, epsilon=1.0)
    tiny = image_only_sinkhorn_attention(q, k, v, heads=4, n_text=4, iterations=3, epsilon=1.0, chunk_mb=1e-4)
    torch.testing.assert_close(tiny, whole, atol=1e-6, rtol=1e-6)


def test_no_text_tokens_is_the_whole_sequence_plan():
    q, k, v = _joint(1, 0, 16, 2, 16, seed=9)
    out = image_only_sinkhorn_attention(q, k, v, heads=2, n_text=0, iterations=3, epsilon=1.0)
    whole = adversarial_sinkhorn_attention(q, k, v, heads=2, iterations=3, epsilon=1.0)
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_large_scores_stay_finite(dtype):
    q, k, v = _joint(1, 4, 16, 2, 16, seed=11)
    q = q * 30
    out = image_only_sinkhorn_attention(q.to(dtype), k.to(dtype), v.to(dtype), heads=2, n_text=4, iterations=3,
                                        epsilon=1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = _masked_reference(q.to(dtype), k.to(dtype), v.to(dtype), 2, 4, _sinkhorn_block(3, 1.0))
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("n_text", [-1, 20, 25])
def test_bad_text_length_is_a_clear_error(n_text):
    q, k, v = _joint(1, 4, 16, 2, 16, seed=1)
    with pytest.raises(ValueError, match="n_text"):
        image_only_sinkhorn_attention(q, k, v, heads=2, n_text=n_text, iterations=3, epsilon=1.0)
    with pytest.raises(ValueError, match="n_text"):
        image_identity_attention(q, k, v, heads=2, n_text=n_text)


@pytest.mark.parametrize("batch,n_text,n_img,heads", [(1, 4, 16, 2), (2, 9, 25, 3)])
def test_pag_identity_masks_only_the_image_block(batch, n_text, n_img, heads):
    q, k, v = _joint(batch, n_text, n_img, heads, 16, seed=n_img)
    out = image_identity_attention(q, k, v, heads=heads, n_text=n_text)
    ref = _pag_reference(q, k, v, heads, n_text)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
