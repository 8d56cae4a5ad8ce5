"""ASAG performance benchmark (issue 5): run by hand, prints ONE JSON line on stdout.

    .venv/bin/pip install -r benchmarks/requirements.txt
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py --threads 1   # CPU, ~17 min on 1 core
    .venv/bin/python benchmarks/run.py --device cuda --dtype float16  # on a GPU

Ratios are paired: every round times each mode once (rotating order), the ratio is taken within a
round and the median over rounds is reported, with its spread (half the IQR / median).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_micro import attention_figures
from timing import interleaved, median, paired_ratio
from unet_step import LAYER_SETS, Perturbation, build_unet, install, make_inputs, step_functions

from lib_asag.params import ASAGParams
from lib_asag.sinkhorn import DEFAULT_CHUNK_MB

RATIOS = (("asag_over_pag", "asag", "pag"), ("asag_over_cfg", "asag", "cfg"), ("pag_over_cfg", "pag", "cfg"),
          ("asag_b_over_pag_b", "asag_b", "pag_b"), ("asag_b_over_cfg", "asag_b", "cfg"),
          ("pag_b_over_cfg", "pag_b", "cfg"))


def unet_figures(args, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    started = time.perf_counter()
    unet = build_unet(device, dtype)
    print(f"UNet built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    inputs = make_inputs(args.latent, device, dtype)
    figures: dict[str, object] = {}
    for set_name in args.layers:
        state = Perturbation(iterations=args.iterations, epsilon=args.epsilon)
        install(unet, LAYER_SETS[set_name], state)
        steps = step_functions(unet, state, inputs)
        with torch.inference_mode():
            for fn in steps.values():
                fn()  # warm up
            times = interleaved(steps, args.rounds, device)
        prefix = "" if set_name == "mid" else f"{set_name}_"
        for mode, values in times.items():
            figures[f"{prefix}{mode}_ms"] = round(median(values) * 1e3, 1)
        for name, top, bottom in RATIOS:
            ratio, noise = paired_ratio(times, top, bottom)
            figures[f"{prefix}{name}"] = round(ratio, 3)
            figures[f"{prefix}{name}_spread"] = noise
        print(f"{set_name}: " + json.dumps({k: v for k, v in figures.items() if k.startswith(prefix)}),
              file=sys.stderr)
    return figures


def main() -> None:
    defaults = ASAGParams()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--layers", nargs="+", default=list(LAYER_SETS), choices=list(LAYER_SETS),
                        help="layer sets to measure (see LAYER_SETS in unet_step.py)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the UNet steps")
    parser.add_argument("--attn-rounds", type=int, default=9, help="interleaved rounds of the attention layer")
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--epsilon", type=float, default=defaults.epsilon)
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_MB)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-attention", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    result: dict[str, object] = dict(
        device=str(device), dtype=args.dtype, threads=args.threads, torch=torch.__version__,
        cpu=platform.processor() or platform.machine(), latent=args.latent, iterations=args.iterations,
        epsilon=args.epsilon, chunk_mb=args.chunk_mb, rounds=args.rounds)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    if not args.skip_unet:
        result.update(unet_figures(args, device, dtype))
    if not args.skip_attention:
        result.update(attention_figures(device, dtype, args.iterations, args.epsilon, args.chunk_mb,
                                        args.attn_rounds, args.threads))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
