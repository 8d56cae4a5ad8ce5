"""EDM-style denoiser (Karras et al. 2022), its training loss, Karras sigmas and the Euler sampler.

The denoiser returns the x0 estimate D(x, sigma), the "denoised" space in which the WebUIs (through
k-diffusion) combine CFG and in which the ASAG extension adds its term; the sampler takes any
`denoise(x, sigma) -> D` so every guidance variant plugs in the same way.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
P_MEAN, P_STD = -1.2, 1.2

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser(nn.Module):
    """D(x, sigma, y) = c_skip x + c_out F(c_in x, c_noise, y) with EDM preconditioning."""

    def __init__(self, model: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.model, self.sigma_data = model, sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1, 1, 1, 1).to(x.dtype).expand(len(x), 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        c_noise = sigma.log().flatten() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise, y)


def edm_loss(denoiser: Denoiser, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """EDM's weighted x0 loss with log-normal noise levels."""
    sigma = (torch.randn(len(x0), generator=generator) * P_STD + P_MEAN).exp()
    noise = torch.randn(x0.shape, generator=generator) * sigma.reshape(-1, 1, 1, 1)
    sd2 = denoiser.sigma_data ** 2
    weight = ((sigma ** 2 + sd2) / (sigma * denoiser.sigma_data) ** 2).reshape(-1, 1, 1, 1)
    return (weight * (denoiser(x0 + noise, sigma, y) - x0) ** 2).mean()


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> torch.Tensor:
    """k-diffusion's get_sigmas_karras: `steps` decreasing noise levels followed by 0."""
    ramp = torch.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def sample_euler(denoise: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
    """k-diffusion's deterministic sample_euler; `denoise(x, sigma, step)` returns the guided D."""
    x = noise * sigmas[0]
    for step in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[step], step)
        d = (x - denoised) / sigmas[step]
        x = x + d * (sigmas[step + 1] - sigmas[step])
    return x
