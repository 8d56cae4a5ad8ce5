"""Stand-in of k_diffusion/external.py: CompVisDenoiser(model) -> forward(input, sigma, **kwargs) returns the
denoised x0 = input - sigma * eps, eps = model.apply_model(input * c_in, t(sigma), **kwargs); DiscreteSchedule,
the base class of SD3's SD3Denoiser."""
from __future__ import annotations

import torch
from torch import nn


class CompVisDenoiser(nn.Module):
    def __init__(self, model, quantize=False, device="cpu"):
        super().__init__()
        self.inner_model = model
        sigmas = ((1 - model.alphas_cumprod) / model.alphas_cumprod) ** 0.5
        self.register_buffer("log_sigmas", sigmas.log())
        self.sigma_data = 1.0

    def sigma_to_t(self, sigma):
        # Linear interpolation of t over log sigma, as DiscreteSchedule.sigma_to_t does.
        log_sigma = sigma.log()
        dists = log_sigma[:, None] - self.log_sigmas[None]
        low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=self.log_sigmas.shape[0] - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def forward(self, input, sigma, **kwargs):
        c_out = -sigma[:, None, None, None]
        c_in = 1 / (sigma[:, None, None, None] ** 2 + self.sigma_data ** 2) ** 0.5
        eps = self.inner_model.apply_model(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input + eps * c_out


class DiscreteSchedule(nn.Module):
    """k_diffusion/external.py DiscreteSchedule: sigmas/log_sigmas buffers (SD3Denoiser's base class)."""

    def __init__(self, sigmas, quantize):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize
