"""Train the tiny class-conditional EDM model with classifier-free-guidance label dropout.

    .venv/bin/python -m experiments.digits.train_diffusion            # writes weights/unet_ema.pt

Deterministic for a given seed and thread count on CPU. Saves only the EMA weights in float16
(about 2 MB for the 1.0 M parameters) plus the config needed to rebuild the model.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from .data import NULL_CLASS, split
from .edm import Denoiser, edm_loss
from .tiny_unet import TinyUNet

WEIGHTS = Path(__file__).resolve().parent / "weights"
CONFIG = {"ch": 32, "context_tokens": 4, "context_dim": 64, "dim_head": 16, "dropout": 0.0}


def build_denoiser(config: dict | None = None) -> Denoiser:
    return Denoiser(TinyUNet(**(config or CONFIG)))


def load_weights(path: Path = WEIGHTS / "unet_ema.pt") -> dict:
    """The saved {"config", "state_dict", "train"} dict. Loaded with torch's safe `weights_only`
    unpickler; older files store `train["torch"]` as a `TorchVersion`, which has to be allowed."""
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_denoiser(path: Path = WEIGHTS / "unet_ema.pt") -> Denoiser:
    """The trained EMA denoiser in float32 eval mode."""
    saved = load_weights(path)
    denoiser = build_denoiser(saved["config"])
    denoiser.model.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    return denoiser.eval().requires_grad_(False)


def drop_labels(y: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by NULL_CLASS with probability p (CFG training)."""
    drop = torch.rand(len(y), generator=generator) < p
    return torch.where(drop, torch.full_like(y, NULL_CLASS), y)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1 - decay)


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def train(steps: int, batch: int, lr: float, label_dropout: float, ema_decay: float, seed: int,
          log_every: int = 100) -> tuple[Denoiser, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = split()["train"]
    denoiser = build_denoiser()
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    start, losses = time.time(), []
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
            recent = sum(losses[-log_every:]) / log_every
            print(f"step {step + 1}/{steps}  loss {recent:.4f}  {time.time() - start:.0f}s", flush=True)
    info = {"steps": steps, "batch": batch, "lr": lr, "label_dropout": label_dropout, "ema_decay": ema_decay,
            "seed": seed, "train_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
            "final_loss": sum(losses[-log_every:]) / min(log_every, len(losses)), "torch": str(torch.__version__)}
    return ema, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--label-dropout", type=float, default=0.15)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS / "unet_ema.pt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ema, info = train(args.steps, args.batch, args.lr, args.label_dropout, args.ema_decay, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in ema.model.state_dict().items()}
    torch.save({"config": CONFIG, "state_dict": state, "train": info}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {info}")


if __name__ == "__main__":
    main()
