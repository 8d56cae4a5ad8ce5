"""Compare two implementations of lib_asag/sinkhorn.py: outputs (max abs difference) and speed.

Usage: python benchmarks/compare_sinkhorn.py OLD.py [NEW.py]   (NEW defaults to lib_asag/sinkhorn.py)
Keep a copy of the old file before changing the module, e.g. `git show HEAD:lib_asag/sinkhorn.py > /tmp/old.py`.
Prints one JSON line per case. Single-threaded unless OMP_NUM_THREADS says otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def self_attention_inputs(n: int, heads: int, spread: float, seed: int, dim_head: int = 64):
    """q, k, v projected from shared token features, like a UNet self-attention layer."""
    g = torch.Generator().manual_seed(seed)
    width = heads * dim_head
    x = torch.randn(1, n, width, generator=g)
    w_q, w_k, w_v = (torch.randn(width, width, generator=g) / math.sqrt(width) for _ in range(3))
    return x @ w_q * spread, x @ w_k * spread, x @ w_v


def median_ms(fn, warmups: int, repeats: int = 1) -> float:
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=ROOT / "lib_asag" / "sinkhorn.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-outputs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    old, new = load(args.old, "sinkhorn_old"), load(args.new, "sinkhorn_new")

    if not args.skip_outputs:
        compare_outputs(old, new)
    if not args.skip_timing:
        compare_speed(old, new, args.repeats)


def compare_outputs(old, new) -> None:
    """Max abs difference of attention outputs and plans over a grid of realistic settings."""
    worst = 0.0
    for n, heads in ((256, 8), (1024, 10)):
        for spread in (1.0, 2.0, 3.0):
            for iterations, epsilon, tol in ((0, 1.0, None), (1, 1.0, None), (3, 1.0, None), (3, 0.5, None),
                                             (5, 2.0, None), (10, 1.0, None), (20, 0.3, 1e-4)):
                q, k, v = self_attention_inputs(n, heads, spread, seed=n + heads)
                kw = dict(heads=heads, iterations=iterations, epsilon=epsilon, tol=tol)
                diff = float((old.adversarial_sinkhorn_attention(q, k, v, **kw)
                              - new.adversarial_sinkhorn_attention(q, k, v, **kw)).abs().max())
                worst = max(worst, diff)
                scores = (q[0, :, :64] @ k[0, :, :64].T) / 8
                plan_diff = float((old.sinkhorn_plan(scores, iterations=iterations, epsilon=epsilon, tol=tol)
                                   - new.sinkhorn_plan(scores, iterations=iterations, epsilon=epsilon, tol=tol))
                                  .abs().max())
                print(json.dumps(dict(check="outputs", n=n, heads=heads, spread=spread, iterations=iterations,
                                      epsilon=epsilon, tol=tol, score_std=round(float(scores.std()), 2),
                                      max_abs_diff=diff, plan_max_abs_diff=plan_diff)))
    print(json.dumps(dict(check="outputs", worst_max_abs_diff=worst)))


def compare_speed(old, new, repeats: int) -> None:
    """Interleaved old/new calls at SDXL-like sizes (head dim 64), medians. `hard` has scores so
    large for its epsilon that every head needs full log-domain iterations."""
    cases = [(n, heads, iterations, 1.0, 1.0, "typical") for n, heads in ((1024, 20), (4096, 10))
             for iterations in (1, 3, 10)]
    cases.append((1024, 20, 3, 5.0, 0.3, "hard"))
    for n, heads, iterations, spread, epsilon, label in cases:
        q, k, v = self_attention_inputs(n, heads, spread, seed=0)
        kw = dict(heads=heads, iterations=iterations, epsilon=epsilon)
        timings = {"old": [], "new": []}
        for _ in range(repeats):  # interleaved
            for name, module in (("old", old), ("new", new)):
                timings[name].append(median_ms(partial(module.adversarial_sinkhorn_attention, q, k, v, **kw), 0))
        t_old, t_new = statistics.median(timings["old"]), statistics.median(timings["new"])
        print(json.dumps(dict(check="speed", case=label, n=n, heads=heads, iterations=iterations, epsilon=epsilon,
                              old_ms=round(t_old, 1), new_ms=round(t_new, 1), speedup=round(t_old / t_new, 2))),
              flush=True)


if __name__ == "__main__":
    main()
