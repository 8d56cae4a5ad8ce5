"""Guided sampling of the tiny MMDiT: CFG plus one perturbation term, active on a window of the steps.

    D = D_u + w (D_c - D_u) + s_t (D_c - D_pert)      (D_u skipped when w = 1)
    s_t = s while start <= step / STEPS < end (lib_asag.guidance.is_active, the extension's rule), else 0

combined with the extension's own `lib_asag.guidance.asag_guidance`; the Euler sampler, Karras
sigmas and the per-seed-set noise are the UNet experiment's (experiments/digits).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from experiments.digits.data import NULL_CLASS
from experiments.digits.edm import Denoiser, karras_sigmas, sample_euler
from experiments.digits.sampling import STEPS, seed_batch
from lib_asag.guidance import asag_guidance, is_active

from .perturbation import perturbed

LABELS = {"none": "", "pag": "PAG (image x image identity)", "slg": "SLG (block skipped)",
          "asag_joint": "ASAG whole-joint", "asag_image": "ASAG image-only"}


@dataclass(frozen=True)
class Method:
    kind: str = "none"       # none | pag | slg | asag_joint | asag_image
    scale: float = 0.0       # s
    cfg: float = 1.0         # w
    start: float = 0.0       # window: active while start <= step / STEPS < end
    end: float = 1.0
    layers: str = "joint.2"  # lib_asag layer spec
    iterations: int = 3      # ASAG T
    epsilon: float = 1.0     # ASAG temperature

    @property
    def guided(self) -> bool:
        return self.kind != "none" and self.scale != 0

    def active_steps(self) -> int:
        return sum(is_active(i, STEPS, start=self.start, end=self.end) for i in range(STEPS)) if self.guided else 0

    def nfe(self) -> int:
        """Model evaluations per image: cond (+ uncond with CFG) every step, + perturbed on active steps."""
        return STEPS * (1 + (self.cfg != 1)) + self.active_steps()

    def label(self) -> str:
        parts = [f"CFG w={self.cfg:g}" if self.cfg != 1 else ""]
        if self.guided:
            extra = f", T={self.iterations}, eps={self.epsilon:g}" if self.kind.startswith("asag") else ""
            parts.append(f"{LABELS[self.kind]} s={self.scale:g} [{self.start:g}-{self.end:g}{extra}]")
        return " + ".join(p for p in parts if p) or "conditional, no guidance"

    def key(self) -> str:
        return "dit|" + "|".join(f"{k}={v}" for k, v in asdict(self).items())


def guided_denoise(denoiser: Denoiser, method: Method, y: torch.Tensor):
    """`denoise(x, sigma, step)` for the sampler, conditional on labels y."""
    use_uncond = method.cfg != 1

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        sig = sigma.expand(len(x))
        if use_uncond:
            both = denoiser(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([torch.full_like(y, NULL_CLASS), y]))
            uncond, cond = both.chunk(2)
        else:
            uncond, cond = None, denoiser(x, sig, y)
        if not (method.guided and is_active(step, STEPS, start=method.start, end=method.end)):
            return asag_guidance(uncond, cond, cond, cfg_scale=method.cfg, scale=0.0)
        with perturbed(denoiser.model, method.layers, method.kind, method.iterations, method.epsilon):
            pert = denoiser(x, sig, y)
        return asag_guidance(uncond, cond, pert, cfg_scale=method.cfg, scale=method.scale)

    return denoise


def generate(denoiser: Denoiser, method: Method, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Samples clamped to [-1, 1], their labels (0..9 cycling), and the CPU seconds taken."""
    noise, labels = seed_batch(seed, n, conditional=True)
    start = time.process_time()
    images = sample_euler(guided_denoise(denoiser, method, labels), noise, karras_sigmas(STEPS))
    return images.clamp(-1, 1), labels, time.process_time() - start
