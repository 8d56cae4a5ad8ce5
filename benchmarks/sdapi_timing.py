"""Wall time per image through a running WebUI's /sdapi: no guidance vs ASAG, interleaved rounds.

    python benchmarks/sdapi_timing.py --url http://127.0.0.1:7865 --rounds 3 [--label "A1111 batched"]

Same prompt, seed and settings for both cases (defaults: 256x256, 8 Euler steps, CFG 5, ASAG layers
`middle`, the issue-12 settings). Each round times one image of every case, rotating the order so that a
drift in machine load (the benchmark machine may be shared) hits both cases alike; the result is the median
time per case and the median of the per-round ratios ASAG / no guidance. One warm-up image (ASAG) first.
Which perturbed-pass mode the server uses is the server's business (env ASAG_BATCH=0 forces the separate
call; the server log says which mode ran). Prints a Markdown row and writes JSON with --json;
--save-image writes the last ASAG image (PNG, same seed every time) to compare two servers' modes with
benchmarks/compare_images.py.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
import urllib.request


def payload(args: argparse.Namespace, asag: bool) -> dict:
    body = {"prompt": "a photograph of a lighthouse on a cliff", "negative_prompt": "", "seed": args.seed,
            "width": args.size, "height": args.size, "steps": args.steps, "cfg_scale": args.cfg,
            "sampler_name": "Euler", "batch_size": 1, "n_iter": 1, "save_images": False,
            "send_images": asag and bool(args.save_image),
            "override_settings": {"s_min_uncond": 0, "batch_cond_uncond": True, "skip_early_cond": 0},
            "alwayson_scripts": {}}
    if asag:
        body["alwayson_scripts"]["ASAG"] = {"args": [{"enabled": True, "scale": 3.0, "layers": args.layers}]}
    return body


def generate(url: str, body: dict, timeout: float, image_path: str = "") -> float:
    request = urllib.request.Request(f"{url}/sdapi/v1/txt2img", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    elapsed = time.perf_counter() - start
    info = json.loads(reply["info"])
    if image_path and reply.get("images"):
        with open(image_path, "wb") as f:
            f.write(base64.b64decode(reply["images"][0]))
    if "ASAG" in json.dumps(body["alwayson_scripts"]) and "ASAG scale" not in info.get("infotexts", [""])[0]:
        raise RuntimeError(f"ASAG did not run: {info.get('infotexts')}")
    return elapsed


def summary(args: argparse.Namespace, times: dict[str, list[float]]) -> dict:
    ratios = [a / b for a, b in zip(times["asag"], times["none"])]
    return {"label": args.label, "settings": {k: v for k, v in vars(args).items() if k not in ("json", "label")},
            "times": times, "ratios": ratios, "median_none": statistics.median(times["none"]),
            "median_asag": statistics.median(times["asag"]), "median_ratio": statistics.median(ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7865")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--layers", default="middle")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--save-image", default="", help="write the last ASAG image (PNG) here")
    parser.add_argument("--warmup", type=int, default=1, help="ASAG images before timing (0: server already warm)")
    args = parser.parse_args()

    cases = {"none": payload(args, False), "asag": payload(args, True)}
    for _ in range(args.warmup):  # first-call allocations
        generate(args.url, cases["asag"], args.timeout)
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_index in range(args.rounds):
        order = names[round_index % 2:] + names[:round_index % 2]
        for name in order:
            times[name].append(generate(args.url, cases[name], args.timeout, args.save_image))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f} s" for n in names), file=sys.stderr)
        result = summary(args, times)  # after every round, so that an interrupted run keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    print(f"| {args.label} | {result['median_none']:.1f} s | {result['median_asag']:.1f} s | "
          f"{result['median_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
