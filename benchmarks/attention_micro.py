"""The Sinkhorn attention layer alone against torch's scaled_dot_product_attention.

SDXL at 1024^2 has self-attention over N = 4096 tokens (64^2 latent level, 640 channels = 10 heads
of 64) and N = 1024 tokens (32^2 level, 1280 channels = 20 heads). Time: interleaved medians in this
process. Peak memory: each measurement in a fresh subprocess, as the kernel's resident high-water
mark (VmHWM after resetting it through /proc/self/clear_refs) minus the resident size just before
the call, so inputs and the interpreter do not count; on CUDA, torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch
from timing import interleaved, median, spread

ROOT = Path(__file__).resolve().parents[1]
CASES = ((1024, 20), (4096, 10))  # (tokens, heads), head dim 64, batch 1 (the cond row)

_PEAK_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from lib_asag.sinkhorn import adversarial_sinkhorn_attention
impl, n, heads, device, dtype, iterations, epsilon, chunk_mb, threads = sys.argv[2:]
n, heads, iterations, epsilon, chunk_mb = int(n), int(heads), int(iterations), float(epsilon), float(chunk_mb)
torch.set_num_threads(int(threads))
device, dtype = torch.device(device), getattr(torch, dtype)

def run(q, k, v, h):
    if impl == "sdpa":
        b, m, inner = q.shape
        split = lambda t: t.view(b, m, h, inner // h).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return adversarial_sinkhorn_attention(q, k, v, heads=h, iterations=iterations, epsilon=epsilon,
                                          chunk_mb=chunk_mb)

def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

small = torch.randn(1, 64, heads * 64, device=device, dtype=dtype)
run(small, small, small, heads)  # warm up code paths and thread pools
q, k, v = (torch.randn(1, n, heads * 64, device=device, dtype=dtype) for _ in range(3))
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    run(q, k, v, heads); torch.cuda.synchronize()
    print(json.dumps((torch.cuda.max_memory_allocated() - base) / 2**20))
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS:")
    run(q, k, v, heads)
    print(json.dumps((status_kb("VmHWM:") - before) / 1024))
"""


def peak_mb(impl: str, n: int, heads: int, device: torch.device, dtype: torch.dtype, iterations: int,
            epsilon: float, chunk_mb: float, threads: int) -> float | None:
    """Peak extra memory (MiB) of one call, in a fresh process; None when it cannot be measured."""
    args = [sys.executable, "-c", _PEAK_SCRIPT, str(ROOT), impl, str(n), str(heads), device.type,
            str(dtype).removeprefix("torch."), str(iterations), str(epsilon), str(chunk_mb), str(threads)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode:
        print(f"peak memory of {impl} at N={n} not measured: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return round(json.loads(result.stdout.strip().splitlines()[-1]), 1)


def attention_figures(device: torch.device, dtype: torch.dtype, iterations: int, epsilon: float, chunk_mb: float,
                      rounds: int, threads: int) -> dict[str, float | None]:
    """ms and peak MiB of sinkhorn vs sdpa for each case, flat keys for the one-line JSON."""
    from lib_asag.sinkhorn import adversarial_sinkhorn_attention

    figures: dict[str, float | None] = {}
    for n, heads in CASES:
        q, k, v = (torch.randn(1, n, heads * 64, device=device, dtype=dtype) for _ in range(3))
        q4, k4, v4 = (t.view(1, n, heads, 64).transpose(1, 2) for t in (q, k, v))
        cases = {
            "sdpa": partial(torch.nn.functional.scaled_dot_product_attention, q4, k4, v4),
            "sinkhorn": partial(adversarial_sinkhorn_attention, q, k, v, heads=heads, iterations=iterations,
                                epsilon=epsilon, chunk_mb=chunk_mb),
        }
        for fn in cases.values():
            fn()  # warm up
        times = interleaved(cases, rounds, device)
        key = f"n{n}_h{heads}"
        for impl in cases:
            figures[f"attn_{key}_{impl}_ms"] = round(median(times[impl]) * 1e3, 2)
            figures[f"attn_{key}_{impl}_ms_spread"] = spread(times[impl])
            figures[f"attn_{key}_{impl}_peak_mb"] = peak_mb(impl, n, heads, device, dtype, iterations, epsilon,
                                                            chunk_mb, threads)
        figures[f"attn_{key}_sinkhorn_over_sdpa"] = round(median(times["sinkhorn"]) / median(times["sdpa"]), 2)
    return figures
