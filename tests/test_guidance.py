"""The guidance rule against its formula, written out independently per element."""
from __future__ import annotations

import math

import pytest
import torch

from lib_asag.guidance import (asag_guidance, asag_term, effective_scale, is_active, rescale_guidance,
                               scheduled_scale)
from lib_asag.params import ASAGParams


def _preds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_guidance_equals_formula_elementwise():
    u, c, p = _preds()
    out = asag_guidance(u, c, p, cfg_scale=7.0, scale=2.5)
    for idx in [(0, 0, 0, 0), (1, 3, 7, 2), (0, 2, 5, 5)]:
        expected = u[idx].item() + 7.0 * (c[idx].item() - u[idx].item()) + 2.5 * (c[idx].item() - p[idx].item())
        assert out[idx].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_scale_zero_is_plain_cfg_exactly():
    u, c, p = _preds(1)
    u, c, p = u.float(), c.float(), p.float()
    cfg = u + (c - u) * 7.5
    assert torch.equal(asag_guidance(u, c, p, cfg_scale=7.5, scale=0.0), cfg)
    assert torch.equal(cfg + asag_term(c, p, 0.0), cfg)


def test_without_uncond_pushes_from_cond():
    _, c, p = _preds(2)
    torch.testing.assert_close(asag_guidance(None, c, p, cfg_scale=7.0, scale=3.0), c + 3.0 * (c - p))


def test_active_range_over_steps():
    active = [is_active(i, 20, start=0.25, end=0.75) for i in range(20)]
    assert active == [False] * 5 + [True] * 10 + [False] * 5
    assert all(is_active(i, 7, start=0.0, end=1.0) for i in range(7))


@pytest.mark.parametrize("mode,at_half", [("constant", 4.0), ("linear", 2.0), ("cosine", 2.0)])
def test_schedules(mode, at_half):
    assert scheduled_scale(4.0, 0.0, mode) == pytest.approx(4.0)
    assert scheduled_scale(4.0, 0.5, mode) == pytest.approx(at_half)
    assert scheduled_scale(4.0, 0.25, "cosine") == pytest.approx(2.0 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError):
        scheduled_scale(1.0, 0.5, "exponential")


def test_effective_scale_follows_range_and_decay():
    params = ASAGParams(enabled=True, scale=2.0, start=0.2, end=0.6, adaptive="linear")
    scales = [effective_scale(params, i, 10) for i in range(10)]
    assert scales == pytest.approx([0, 0, 2.0, 1.5, 1.0, 0.5, 0, 0, 0, 0])


def test_rescale_matches_reference_std_and_is_identity_at_zero():
    u, c, p = _preds(3)
    guided = asag_guidance(u, c, p, cfg_scale=12.0, scale=4.0)
    assert rescale_guidance(guided, c, 0.0) is guided
    full = rescale_guidance(guided, c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)))
    half = rescale_guidance(guided, c, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)
