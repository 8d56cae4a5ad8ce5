"""Do two PNGs (e.g. the batched and the separate perturbed pass, same seed and settings) agree?

    python benchmarks/compare_images.py A.png B.png [--max-level 2] [--reference NO_ASAG.png]

Prints the largest and the mean absolute difference in 8-bit levels, and the share of pixels that differ.
With --reference (the image without ASAG, same seed) it also prints how far each image is from it, so the
agreement can be read against the size of ASAG's own effect. Exit status 1 when the largest difference
exceeds --max-level.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image


def load(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def describe(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a - b)
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 4), "differ": round(float((diff > 0).mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--max-level", type=int, default=2)
    parser.add_argument("--reference", default="")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    if a.shape != b.shape:
        print(f"shapes differ: {a.shape} vs {b.shape}")
        return 1
    result = {"a_vs_b": describe(a, b)}
    if args.reference:
        reference = load(args.reference)
        result["a_vs_reference"], result["b_vs_reference"] = describe(a, reference), describe(b, reference)
    print(result)
    return 0 if result["a_vs_b"]["max"] <= args.max_level else 1


if __name__ == "__main__":
    sys.exit(main())
