"""One sampling step of CFG, PAG-style identity perturbation and ASAG on Forge's real diffusion transformers.

Run by hand with a Python that has the Forge backend's dependencies (torch, einops), pointing at a Forge
`backend/`-era checkout (dfdcbab6); prints ONE JSON line:

    OMP_NUM_THREADS=1 /path/to/forge/venv/bin/python benchmarks/dit_step.py --forge /path/to/forge/webui

Models: the real `backend.nn.flux.IntegratedFluxTransformer2DModel` and `backend.nn.mmditx.MMDiTX` (SD3.5 code),
narrow and shallow, random weights, 64x64 latents (32x32 = 1024 image tokens after 2x2 patches). ASAG's perturbed
rows go through the shipped `lib_asag.perturb.dit.perturbed_blocks` (module-global swap + block hooks, row-aware
dispatcher); PAG-style identity is the same mechanism with the Sinkhorn attention replaced by `softmax -> identity`
(output = V, after RoPE for Flux), so both differ only in the attention of the chosen blocks.
Steps:
  cfg           SD3.5: one call on batch 2 (cond, uncond); Flux dev at CFG 1: one call on the cond row
  pag, asag     separate (ASAG_BATCH=0): cfg + one call on the cond row with the chosen blocks' attention =
                identity / adversarial Sinkhorn (T=3, eps=1)
  pag_batched,  batched (the default): ONE call on the cfg rows + a copy of the cond row, the chosen blocks'
  asag_batched  attention = the host's on the cfg rows and identity / Sinkhorn on the appended row
Ratios are paired within rounds (every round times each step once, rotating order), median over rounds, as
[median, spread] (spread = half the IQR / median), for the wall clock and for this process's CPU time (steadier on
a shared machine with one thread).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import median, paired_ratio  # noqa: E402

from lib_asag.layers import LayerRef  # noqa: E402


def interleaved_both(cases, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """timing.interleaved, recording wall-clock and this process's CPU time of every call. With one thread
    on a shared, overloaded machine the CPU time is far less sensitive to other jobs than the wall clock."""
    names = list(cases)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            w0, c0 = time.perf_counter(), time.process_time()
            cases[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return wall, cpu


def load_forge(path: str) -> None:
    sys.path.insert(0, path)
    sys.path.insert(0, os.path.join(path, "packages_3rdparty"))
    if not os.path.isfile(os.path.join(path, "backend", "nn", "flux.py")):
        sys.exit(f"{path} has no backend/nn/flux.py (need a Forge backend/-era checkout)")
    argv, sys.argv = sys.argv, sys.argv[:1]  # backend.args parses the command line
    from backend import args as backend_args
    sys.argv = argv
    backend_args.args.always_cpu = True


def init_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if "scale" in name or "weight" in name else 0.0)
            else:
                param.copy_(torch.randn(param.shape, generator=g) / param[0].numel() ** 0.5)
    return model.eval()


def flux_setup(args):
    from backend import attention as backend_attention
    from backend.nn import flux
    if args.host_attention == "pytorch":
        flux.attention_function = backend_attention.attention_pytorch  # SDPA, Forge's GPU default
    hidden = 128 * args.flux_heads
    model = init_weights(flux.IntegratedFluxTransformer2DModel(
        in_channels=16, vec_in_dim=768, context_in_dim=4096 // 8, hidden_size=hidden, mlp_ratio=4.0,
        num_heads=args.flux_heads, depth=args.flux_depth, depth_single_blocks=args.flux_single, axes_dim=[16, 56, 56],
        theta=10000, qkv_bias=True, guidance_embed=True))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, args.latent, args.latent, generator=g)
    inputs = dict(x=x, timestep=torch.full((1,), 0.7), context=torch.randn(1, args.flux_text, 512, generator=g),
                  y=torch.randn(1, 768, generator=g), guidance=torch.full((1,), 3.5))
    blocks = {LayerRef("double", i, 0): model.double_blocks[i] for i in args.flux_blocks}
    return model, blocks, caller(model, inputs), 1  # CFG 1: the host makes one cond call


def sd3_setup(args):
    from backend.nn.mmditx import MMDiTX
    depth = args.sd3_depth
    model = init_weights(MMDiTX(input_size=None, patch_size=2, in_channels=16, depth=depth, adm_in_channels=2048,
                                context_embedder_config={"target": "torch.nn.Linear",
                                                         "params": {"in_features": 4096 // 8, "out_features": 64 * depth}},
                                pos_embed_max_size=96, num_patches=96 * 96, qk_norm="rms",
                                x_block_self_attn_layers=[]))
    g = torch.Generator().manual_seed(1)
    two = dict(x=torch.randn(2, 16, args.latent, args.latent, generator=g), t=torch.full((2,), 700.0),
               y=torch.randn(2, 2048, generator=g), context=torch.randn(2, args.sd3_text, 512, generator=g))
    blocks = {LayerRef("joint", i, 0): model.joint_blocks[i] for i in args.sd3_blocks}
    return model, blocks, caller(model, two), 2  # rows (cond, uncond)


def caller(model, base: dict):
    """call(rows): the model on the first `rows` rows of `base` (row 0 = cond), or on all of them followed by
    copies of the cond row (the batched call's appended rows)."""
    n = next(iter(base.values())).shape[0]
    cache: dict[int, dict] = {}

    def inputs(rows: int) -> dict:
        if rows not in cache:
            cache[rows] = {k: v[:rows] if rows <= n else torch.cat([v, v[:1].expand(rows - n, *v.shape[1:])])
                           for k, v in base.items()}
        return cache[rows]

    return lambda rows: model(**inputs(rows))


def steps(model, blocks, call, cfg_rows, scope):
    from lib_asag import joint_scope, sinkhorn
    from lib_asag.perturb import dit
    kernels = ((sinkhorn, "adversarial_sinkhorn_attention_heads", lambda q, k, v, **_: v),
               (sinkhorn, "adversarial_sinkhorn_attention", lambda q, k, v, heads, **_: v.reshape(q.shape)),
               (joint_scope, "image_only_sinkhorn_attention_heads", lambda q, k, v, **_: v),
               (joint_scope, "image_only_sinkhorn_attention", lambda q, k, v, heads, **_: v.reshape(q.shape)))
    options = dict(iterations=3, epsilon=1.0, scope=scope, model=model)

    def perturbed(kind, batched):
        def step():
            if kind == "identity":  # PAG: the chosen blocks' attention output is V (same dispatcher, same scope)
                saved = [getattr(owner, name) for owner, name, _ in kernels]
                for owner, name, identity in kernels:
                    setattr(owner, name, identity)
            try:
                if batched:  # one call: cfg rows + the appended cond row, perturbed on that row only
                    rows = (cfg_rows + 1, cfg_rows, cfg_rows + 1)
                    with dit.perturbed_blocks(blocks, rows=rows, **options) as calls:
                        out = call(cfg_rows + 1)
                    calls.check(blocks)
                    return out
                out = call(cfg_rows)
                with dit.perturbed_blocks(blocks, **options) as calls:
                    extra = call(1)
                calls.check(blocks)
            finally:
                if kind == "identity":
                    for (owner, name, _), original in zip(kernels, saved):
                        setattr(owner, name, original)
            return out, extra
        return step

    return {"cfg": lambda: call(cfg_rows), "pag": perturbed("identity", False), "asag": perturbed("sinkhorn", False),
            "pag_batched": perturbed("identity", True), "asag_batched": perturbed("sinkhorn", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forge", default=os.environ.get("ASAG_FORGE_PATH", ""), help="Forge backend/-era checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 -> 1024 image tokens)")
    parser.add_argument("--models", nargs="+", default=["flux", "sd3"], choices=["flux", "sd3"])
    parser.add_argument("--host-attention", default="pytorch", choices=["pytorch", "default"],
                        help="Flux's attention_function: SDPA (Forge's GPU choice) or what Forge picked here")
    parser.add_argument("--flux-heads", type=int, default=3)
    parser.add_argument("--flux-depth", type=int, default=4)
    parser.add_argument("--flux-single", type=int, default=8)
    parser.add_argument("--flux-text", type=int, default=128)
    parser.add_argument("--flux-blocks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sd3-depth", type=int, default=6, help="MMDiT depth (hidden = 64 * depth, heads = depth)")
    parser.add_argument("--sd3-text", type=int, default=154)
    parser.add_argument("--sd3-blocks", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--scope", default="image", choices=["image", "joint"],
                        help="ASAG's DiT scope (lib_asag/params.py): image = the default since the DiT experiment")
    args = parser.parse_args()
    if not args.forge:
        sys.exit("--forge or ASAG_FORGE_PATH: a Forge backend/-era checkout")
    torch.set_num_threads(args.threads)
    load_forge(args.forge)
    result: dict[str, object] = {"machine": platform.machine(), "cpu": platform.processor() or platform.platform(),
                                 "threads": args.threads, "torch": torch.__version__, "rounds": args.rounds,
                                 "latent": args.latent, "image_tokens": (args.latent // 2) ** 2, "scope": args.scope}
    for name in args.models:
        started = time.perf_counter()
        model, blocks, call, cfg_rows = (flux_setup if name == "flux" else sd3_setup)(args)
        cases = steps(model, blocks, call, cfg_rows, args.scope)
        with torch.inference_mode():
            for fn in cases.values():
                fn()  # warm up
            wall, cpu = interleaved_both(cases, args.rounds)
        figures: dict[str, object] = {
            "model": type(model).__name__, "blocks": list(map(str, blocks)), "cfg_rows": cfg_rows,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "wall_seconds": {mode: round(median(values), 4) for mode, values in wall.items()},
            "cpu_seconds": {mode: round(median(values), 4) for mode, values in cpu.items()}}
        for clock, times in (("wall", wall), ("cpu", cpu)):
            for label, top, bottom in (("asag_over_pag", "asag", "pag"), ("asag_over_cfg", "asag", "cfg"),
                                       ("pag_over_cfg", "pag", "cfg"),
                                       ("batched_asag_over_pag", "asag_batched", "pag_batched"),
                                       ("batched_asag_over_cfg", "asag_batched", "cfg"),
                                       ("batched_pag_over_cfg", "pag_batched", "cfg"),
                                       ("batched_asag_over_separate_pag", "asag_batched", "pag")):
                ratio, noise = paired_ratio(times, top, bottom)
                figures[f"{clock}_{label}"] = [round(ratio, 3), noise]
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        result[name] = figures
        print(f"{name}: {json.dumps(figures)}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
