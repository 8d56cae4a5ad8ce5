"""Train the tiny MMDiT on the digits with the UNet experiment's EDM loss, CFG dropout and EMA.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.dit_digits.train     # writes weights/mmdit_ema.pt

Deterministic for a given seed and thread count on CPU. Saves the EMA weights in float16 plus the
config and the training facts (CPU seconds of this process, not wall time: the machine is shared).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from experiments.digits.data import split
from experiments.digits.edm import Denoiser, edm_loss
from experiments.digits.train_diffusion import drop_labels, ema_update, lr_at

from .mmdit import TinyMMDiT, parameter_count

WEIGHTS = Path(__file__).resolve().parent / "weights"
CONFIG = {"dim": 48, "depth": 5, "heads": 3, "patch": 2, "text_tokens": 4}


def build_denoiser(config: dict | None = None) -> Denoiser:
    return Denoiser(TinyMMDiT(**(config or CONFIG)))


def load_weights(path: Path = WEIGHTS / "mmdit_ema.pt") -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_denoiser(path: Path = WEIGHTS / "mmdit_ema.pt") -> Denoiser:
    """The trained EMA denoiser in float32 eval mode."""
    saved = load_weights(path)
    denoiser = build_denoiser(saved["config"])
    denoiser.model.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    return denoiser.eval().requires_grad_(False)


def train(steps: int, batch: int, lr: float, label_dropout: float, ema_decay: float, seed: int,
          log_every: int = 250) -> tuple[Denoiser, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = split()["train"]
    denoiser = build_denoiser()
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=0.0)
    start, cpu_start, losses = time.time(), time.process_time(), []
    for step in range(steps):
        idx = torch.randint(len(x_train), (batch,), generator=gen)
        y = drop_labels(y_train[idx], label_dropout, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = edm_loss(denoiser, x_train[idx], y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, denoiser, min(ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}  "
                  f"cpu {time.process_time() - cpu_start:.0f}s wall {time.time() - start:.0f}s", flush=True)
    info = {"steps": steps, "batch": batch, "lr": lr, "label_dropout": label_dropout, "ema_decay": ema_decay,
            "seed": seed, "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "wall_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
            "parameters": parameter_count(denoiser.model),
            "final_loss": sum(losses[-log_every:]) / min(log_every, len(losses)), "torch": str(torch.__version__)}
    return ema, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--label-dropout", type=float, default=0.15)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS / "mmdit_ema.pt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ema, info = train(args.steps, args.batch, args.lr, args.label_dropout, args.ema_decay, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in ema.model.state_dict().items()}
    torch.save({"config": CONFIG, "state_dict": state, "train": info}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {info}")


if __name__ == "__main__":
    main()
