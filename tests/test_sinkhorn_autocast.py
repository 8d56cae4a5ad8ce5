"""The Sinkhorn core owns its precision: exact to float32 whatever autocast the host samples under.

A1111 samples inside `devices.autocast()` (modules/devices.py `autocast`, v1.10.1 82a973c0): on CUDA that is
`torch.autocast("cuda")` in fp16, with its FP8 weight option on CPU `torch.autocast("cpu", bfloat16)`.
Matrix products that do not write into a float32 buffer then run in fp16/bf16; on a head with an attention
sink the column scalings overflow fp16 (issue 15). CI has no GPU, so the CUDA-only branch of `_row_sums`
(a batched GEMM instead of a loop of matrix-vector products) is forced on CPU, and CPU autocast stands in
for CUDA autocast (the same op lists decide what runs in low precision)."""
from __future__ import annotations

import math

import pytest
import torch

from lib_asag import sinkhorn
from lib_asag.sinkhorn import adversarial_sinkhorn_attention, adversarial_sinkhorn_attention_heads, sinkhorn_plan
from sinkhorn_reference import reference_plan, sinkhorn_attention_reference

HEADS, DIM_HEAD = 8, 64
ATOL, RTOL = 2e-5, 1e-4  # float32 tolerance, as in test_sinkhorn.py


@pytest.fixture(params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def autocast_dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=["cuda_row_sums", "cuda_row_sums_log_domain", "cpu_row_sums"])
def device_path(request, monkeypatch) -> str:
    """The CUDA branch of `_row_sums` (torch.bmm, as on a GPU), that branch with every item sent to the
    log-domain redo, and the CPU branch (torch.mv loop) as it runs on a CPU host."""
    if request.param.startswith("cuda"):
        monkeypatch.setattr(sinkhorn, "_row_sums", lambda kernel, col_scale: torch.bmm(kernel, col_scale))
    if request.param.endswith("log_domain"):
        monkeypatch.setattr(sinkhorn, "_MAX_SCALING", -1.0)
    return request.param


def _sink_key(n: int, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v (1, n, heads*d) with an attention sink in every head: the queries share a direction and
    key 0 is aligned with it (sink score mean ~15, other scores std ~1.7). The adversarial plan gives the
    sink ~exp(-15) per query, so its column scale reaches ~1e6, beyond fp16's 65504."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(HEADS, DIM_HEAD, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    q = torch.randn(1, n, HEADS, DIM_HEAD, generator=g) * 1.2 + 6 * u
    k = torch.randn(1, n, HEADS, DIM_HEAD, generator=g) * 1.2
    k[:, 0] += 21 * u
    v = torch.randn(1, n, HEADS, DIM_HEAD, generator=g)
    return [t.reshape(1, n, HEADS * DIM_HEAD) for t in (q, k, v)]


def _wide_spread(n_q: int, n_k: int, seed: int = 1) -> list[torch.Tensor]:
    """Random q, k whose scores have std ~9 (|S| up to ~40): most items need the log-domain redo."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, HEADS * DIM_HEAD, generator=g) * s for n, s in ((n_q, 3.0), (n_k, 3.0), (n_k, 1.0))]


INPUTS = {"sink_key": lambda: _sink_key(256), "wide_spread": lambda: _wide_spread(96, 96),
          "wide_spread_joint": lambda: _wide_spread(40, 120)}


def _head_major(t: torch.Tensor) -> torch.Tensor:
    b, n, inner = t.shape
    return t.view(b, n, HEADS, inner // HEADS).transpose(1, 2)


def _attend(layout: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """One of the public entries, output back in the (B, N, heads*d) layout."""
    if layout == "head_major":
        out = adversarial_sinkhorn_attention_heads(_head_major(q), _head_major(k), _head_major(v), **kw)
        return out.transpose(1, 2).reshape(q.shape)
    return adversarial_sinkhorn_attention(q, k, v, heads=HEADS, **kw)


@pytest.mark.parametrize("layout", ["flat", "head_major"])
@pytest.mark.parametrize("chunk_mb", [sinkhorn.DEFAULT_CHUNK_MB, 0.1], ids=["whole", "chunked"])
@pytest.mark.parametrize("inputs", list(INPUTS))
def test_attention_is_exact_under_autocast(autocast_dtype, device_path, layout, chunk_mb, inputs):
    q, k, v = INPUTS[inputs]()
    ref = sinkhorn_attention_reference(q, k, v, HEADS, 4, 1.0)
    with torch.autocast("cpu", dtype=autocast_dtype):
        out = _attend(layout, q, k, v, iterations=4, epsilon=1.0, chunk_mb=chunk_mb)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("layout", ["flat", "head_major"])
def test_low_precision_input_under_autocast_keeps_its_dtype(autocast_dtype, device_path, layout):
    """What the host hands over under autocast: q, k, v already in the autocast dtype. The result is
    in that dtype and equals the float32-exact answer for those inputs up to one rounding to it."""
    q, k, v = (t.to(autocast_dtype) for t in _sink_key(256))
    ref = sinkhorn_attention_reference(q, k, v, HEADS, 4, 1.0)
    with torch.autocast("cpu", dtype=autocast_dtype):
        out = _attend(layout, q, k, v, iterations=4, epsilon=1.0)
    assert out.dtype == autocast_dtype
    rounding = torch.finfo(autocast_dtype).eps
    torch.testing.assert_close(out.double(), ref, atol=ATOL + rounding * ref.abs().max().item(), rtol=rounding)


@pytest.mark.parametrize("inputs", ["sink_key", "wide_spread"])
def test_plan_is_exact_under_autocast(autocast_dtype, device_path, inputs):
    q, k, _ = INPUTS[inputs]()
    scores = (q[0, :, :DIM_HEAD] @ k[0, :, :DIM_HEAD].T / math.sqrt(DIM_HEAD)).float()
    ref = reference_plan(scores, 4, 1.0)
    with torch.autocast("cpu", dtype=autocast_dtype):
        plan = sinkhorn_plan(scores, iterations=4, epsilon=1.0)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan.double(), ref, atol=1e-6, rtol=RTOL)


def test_autocast_state_is_left_as_found(autocast_dtype):
    """The core turns autocast off only inside its own call."""
    q, k, v = _sink_key(32)
    with torch.autocast("cpu", dtype=autocast_dtype):
        adversarial_sinkhorn_attention(q, k, v, heads=HEADS, iterations=2, epsilon=1.0)
        assert torch.is_autocast_enabled("cpu")
        assert (q @ k.transpose(1, 2)).dtype == autocast_dtype


@pytest.mark.parametrize("layout", ["flat", "head_major"])
@pytest.mark.parametrize("inputs", ["sink_key", "wide_spread"])
def test_image_only_scope_is_exact_under_autocast(autocast_dtype, device_path, layout, inputs):
    """The DiT default scope (lib_asag/joint_scope.py) owns its precision too: its text rows and image-to-text
    weights (scaled_dot_product_attention, bmm, logsumexp) would otherwise run in fp16/bf16."""
    from lib_asag.joint_scope import image_only_sinkhorn_attention, image_only_sinkhorn_attention_heads
    from sinkhorn_reference import image_only_attention_reference
    q, k, v = INPUTS[inputs]()
    n_text = 16
    ref = image_only_attention_reference(q, k, v, HEADS, n_text, 3, 1.0)
    with torch.autocast("cpu", dtype=autocast_dtype):
        if layout == "head_major":
            out = image_only_sinkhorn_attention_heads(_head_major(q), _head_major(k), _head_major(v), n_text=n_text,
                                                      iterations=3, epsilon=1.0).transpose(1, 2).reshape(q.shape)
        else:
            out = image_only_sinkhorn_attention(q, k, v, heads=HEADS, n_text=n_text, iterations=3, epsilon=1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=RTOL)
