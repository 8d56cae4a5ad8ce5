"""The whole experiment: tune each guidance's knobs on one seed set, then measure on two others.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.digits.run    # from the repository root

Uses the committed weights (experiments/digits/weights/unet_ema.pt; `--retrain` rebuilds them with
train_diffusion's defaults first), retrains the feature classifier (seconds, deterministic), and
writes experiments/digits/results.json, docs/experiment.md and docs/experiment_grid.png.

Protocol (same for every method, so nobody gets extra tuning):
1. Tuning, seed set 100, N_TUNE samples: per method, the layers and scale with the lowest Frechet
   distance; for ASAG also T and epsilon one at a time around the best; for CFG the weight w.
2. Final, seed sets 1 and 2, N_FINAL samples each: the tuned settings plus ASAG at the extension's
   defaults. Reported as the mean of the two seed sets and their half-difference (+-).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from lib_asag.params import DEFAULTS

from .classifier import train_classifier
from .data import split
from .evaluate import Reference, dump, file_id, run_setting
from .metrics import frechet_distance
from .sampling import STEPS, Method
from .train_diffusion import WEIGHTS, load_denoiser, load_weights

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
TUNE_SEED, FINAL_SEEDS = 100, (1, 2)
N_TUNE, N_FINAL = 500, 1000
LAYER_CHOICES = ("middle", "all")
SCALES = (1.0, 2.0, 3.0)
COND_SCALES = (0.5, 1.0, 2.0)
CFG_WEIGHTS = (1.5, 2.0, 3.0, 4.0)
ASAG_ITERATIONS = (0, 1, 10)
ASAG_EPSILONS = (0.3, 3.0)
# The extension's defaults (its default layer preset for SD is "middle").
DEFAULT_ASAG = Method("asag", DEFAULTS.scale, layers="middle", iterations=DEFAULTS.iterations,
                      epsilon=DEFAULTS.epsilon)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_reference(weights: Path) -> Reference:
    classifier, acc = train_classifier()
    x_train, _ = split()["train"]
    x_test, _ = split()["test"]
    with torch.no_grad():
        real = classifier.features(x_train).numpy()
        test = classifier.features(x_test).numpy()
    floor = frechet_distance(real, test)
    log(f"classifier test accuracy {acc:.4f}; FD(test split vs train split) = {floor:.3f}")
    return Reference(classifier, real, file_id(weights), {"classifier_test_acc": acc, "fd_real_test": floor,
                                                          "n_real": len(real), "n_test": len(test)})


class Runner:
    """Runs settings and remembers every result by (phase, conditional, method)."""

    def __init__(self, denoiser, ref: Reference):
        self.denoiser, self.ref, self.rows = denoiser, ref, []

    def run(self, phase: str, method: Method, conditional: bool, seeds: tuple[int, ...], n: int) -> float:
        for row in self.rows:
            if (row["phase"], row["conditional"], row["method"]) == (phase, conditional, asdict(method)):
                return float(np.mean([r["fd"] for r in row["per_seed"]]))
        per_seed = [run_setting(self.denoiser, self.ref, method, seed, n, conditional) for seed in seeds]
        row = {"phase": phase, "conditional": conditional, "method": asdict(method),
               "label": method.label(conditional), "nfe": method.nfe(conditional),
               "seeds": list(seeds), "n": n, "per_seed": per_seed}
        self.rows.append(row)
        fds = ", ".join(f"{r['fd']:.3f}" for r in per_seed)
        log(f"{phase:5s} {'cond  ' if conditional else 'uncond'} {row['label']}: FD {fds} "
            f"({sum(r['seconds'] for r in per_seed):.0f}s)")
        return float(np.mean([r["fd"] for r in per_seed]))

    def tune(self, candidates: list[Method], conditional: bool) -> Method:
        """The candidate with the lowest Frechet distance on the tuning seed set."""
        scores = [(self.run("tune", m, conditional, (TUNE_SEED,), N_TUNE), i) for i, m in enumerate(candidates)]
        return candidates[min(scores)[1]]


def tune_unconditional(runner: Runner) -> dict[str, Method]:
    runner.run("tune", Method(), False, (TUNE_SEED,), N_TUNE)
    best = {}
    for kind in ("pag", "seg", "asag"):
        grid = [Method(kind, s, layers=layers) for layers in LAYER_CHOICES for s in SCALES]
        best[kind] = runner.tune(grid, False)
    around = best["asag"]
    grid = [around] + [replace(around, iterations=t) for t in ASAG_ITERATIONS if t != around.iterations]
    grid += [replace(around, epsilon=e) for e in ASAG_EPSILONS if e != around.epsilon]
    best["asag"] = runner.tune(grid, False)
    return best


def tune_conditional(runner: Runner, uncond_best: dict[str, Method]) -> dict[str, Method]:
    best = {"cfg": runner.tune([Method(cfg=w) for w in CFG_WEIGHTS], True)}
    w = best["cfg"].cfg
    for kind in ("pag", "seg", "asag"):
        base = replace(uncond_best[kind], cfg=w)
        best[kind] = runner.tune([replace(base, scale=s) for s in COND_SCALES], True)
    return best


def final(runner: Runner, uncond_best: dict[str, Method], cond_best: dict[str, Method]) -> None:
    uncond = [Method(), uncond_best["pag"], uncond_best["seg"], uncond_best["asag"], DEFAULT_ASAG]
    cond = [Method(), cond_best["cfg"], cond_best["pag"], cond_best["seg"], cond_best["asag"],
            replace(DEFAULT_ASAG, cfg=cond_best["cfg"].cfg)]
    for conditional, methods in ((False, uncond), (True, cond)):
        for method in dict.fromkeys(methods):
            runner.run("final", method, conditional, FINAL_SEEDS, N_FINAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true",
                        help="retrain the diffusion model first (~25 min on one core)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = WEIGHTS / "unet_ema.pt"
    if args.retrain or not weights.exists():
        subprocess.run([sys.executable, "-m", "experiments.digits.train_diffusion", "--threads", str(args.threads)],
                       check=True)
    denoiser = load_denoiser(weights)
    ref = build_reference(weights)
    runner = Runner(denoiser, ref)
    uncond_best = tune_unconditional(runner)
    cond_best = tune_conditional(runner, uncond_best)
    final(runner, uncond_best, cond_best)
    train = load_weights(weights)["train"]
    train["torch"] = str(train["torch"])  # older weight files store a TorchVersion
    dump(RESULTS, {"weights_id": ref.weights_id, "reference": ref.extra, "train": train, "steps": STEPS,
                   "tune_seed": TUNE_SEED,
                   "final_seeds": FINAL_SEEDS, "n_tune": N_TUNE, "n_final": N_FINAL, "rows": runner.rows,
                   "best_uncond": {k: asdict(v) for k, v in uncond_best.items()},
                   "best_cond": {k: asdict(v) for k, v in cond_best.items()}})
    from .report import write_report
    write_report(RESULTS)


if __name__ == "__main__":
    main()
