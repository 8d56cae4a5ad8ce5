"""Stand-in of ldm/modules/diffusionmodules/util.py: timestep_embedding (sinusoidal, same formula)."""
from __future__ import annotations

import math

import torch


def timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
