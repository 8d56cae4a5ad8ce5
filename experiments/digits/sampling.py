"""Guided sampling: one `Method` = CFG weight + which degraded attention + scale, combined in
denoised space with the extension's own `lib_asag.guidance.asag_guidance`, as in the WebUI.

Conditional:   D = D_u + w (D_c - D_u) + s (D_c - D_pert(c))      (D_u skipped when w = 1)
Unconditional: D = D_u + s (D_u - D_pert(null))                   (the model's null-label prediction)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from lib_asag.guidance import asag_guidance

from .data import NULL_CLASS, NUM_CLASSES
from .edm import Denoiser, karras_sigmas, sample_euler
from .perturbation import asag_attention, pag_attention, perturbed, seg_attention

STEPS = 16


@dataclass(frozen=True)
class Method:
    kind: str = "none"          # none | pag | seg | asag
    scale: float = 0.0          # s
    cfg: float = 1.0            # w (conditional runs only)
    layers: str = "middle"      # lib_asag layer spec
    iterations: int = 3         # ASAG T
    epsilon: float = 1.0        # ASAG temperature
    seg_sigma: float = math.inf  # SEG query blur

    @property
    def guided(self) -> bool:
        return self.kind != "none" and self.scale != 0

    def nfe(self, conditional: bool) -> int:
        """UNet evaluations per image: STEPS x (cond + uncond if CFG + perturbed if guided)."""
        return STEPS * (1 + (conditional and self.cfg != 1) + self.guided)

    def attention(self):
        if self.kind == "pag":
            return pag_attention
        if self.kind == "seg":
            return seg_attention(self.seg_sigma)
        if self.kind == "asag":
            return asag_attention(self.iterations, self.epsilon)
        raise ValueError(f"no perturbed attention for {self.kind!r}")

    def label(self, conditional: bool) -> str:
        parts = [f"CFG w={self.cfg:g}" if conditional and self.cfg != 1 else ""]
        if self.guided:
            extra = {"asag": f", T={self.iterations}, eps={self.epsilon:g}",
                     "seg": f", sigma={self.seg_sigma:g}"}.get(self.kind, "")
            parts.append(f"{self.kind.upper()} s={self.scale:g} [{self.layers}{extra}]")
        return " + ".join(p for p in parts if p) or ("conditional, no guidance" if conditional else "no guidance")

    def key(self, conditional: bool) -> str:
        fields = {k: v for k, v in asdict(self).items()}
        return ("cond" if conditional else "uncond") + "|" + "|".join(f"{k}={v}" for k, v in fields.items())


def guided_denoise(denoiser: Denoiser, method: Method, y: torch.Tensor):
    """`denoise(x, sigma, step)` for the sampler: y holds class labels, or NULL_CLASS everywhere."""
    unet = denoiser.model
    use_uncond = method.cfg != 1 and bool((y != NULL_CLASS).any())

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        sig = sigma.expand(len(x))
        if use_uncond:
            both = denoiser(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([torch.full_like(y, NULL_CLASS), y]))
            uncond, cond = both.chunk(2)
        else:
            uncond, cond = None, denoiser(x, sig, y)
        if not method.guided:
            return asag_guidance(uncond, cond, cond, cfg_scale=method.cfg, scale=0.0)
        with perturbed(unet, method.layers, method.attention()):
            pert = denoiser(x, sig, y)
        return asag_guidance(uncond, cond, pert, cfg_scale=method.cfg, scale=method.scale)

    return denoise


def seed_batch(seed: int, n: int, conditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting noise and labels of a seed set (labels cycle 0..9; NULL_CLASS if unconditional)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, 8, 8), generator=gen)
    labels = torch.arange(n) % NUM_CLASSES if conditional else torch.full((n,), NULL_CLASS)
    return noise, labels


def generate(denoiser: Denoiser, method: Method, seed: int, n: int, conditional: bool,
             chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Samples clamped to [-1, 1] (as decoding to an image would), their labels, and seconds taken."""
    noise, labels = seed_batch(seed, n, conditional)
    sigmas = karras_sigmas(STEPS)
    start, out = time.time(), []
    for part in range(0, n, chunk):
        y = labels[part:part + chunk]
        out.append(sample_euler(guided_denoise(denoiser, method, y), noise[part:part + chunk], sigmas))
    return torch.cat(out).clamp(-1, 1), labels, time.time() - start
