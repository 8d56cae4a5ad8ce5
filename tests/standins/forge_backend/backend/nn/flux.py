"""Stand-in of backend/nn/flux.py (Forge dfdcbab6): IntegratedFluxTransformer2DModel's module tree as far as
ASAG looks at it: joint attention in double_blocks.N.img_attn / txt_attn and single_blocks, no UNet attn1."""
from __future__ import annotations

from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.img_attn = SelfAttention(hidden_size, num_heads)
        self.txt_attn = SelfAttention(hidden_size, num_heads)


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, hidden_size=16, num_heads=2, depth=2):
        super().__init__()
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads) for _ in range(depth))
        self.single_blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(depth))

    def forward(self, x, timestep, context, **kwargs):
        raise NotImplementedError("stand-in: ASAG must refuse this model before sampling")
