"""A tiny class-conditional UNet laid out like the Stable Diffusion UNet (ldm openaimodel).

Same module names as SD, so `lib_asag.layers.find_self_attention` finds its self-attention layers
exactly as in a WebUI: `input_blocks.1.1.transformer_blocks.0.attn1`, `middle_block.1...attn1`,
`output_blocks.N.1...attn1`. Class conditioning enters like SD's text (cross-attention `attn2` over a
few context tokens per class) and like SDXL's `label_emb` (added to the timestep embedding). Index
`NULL_CLASS` is the empty label for classifier-free guidance.

Every `CrossAttention` computes softmax(QK^T/sqrt(d))V unless its `attention_override` is set to a
function `(q, k, v, heads) -> out`; that is the hook the guidance experiments use (perturbation.py),
the same place the WebUI adapters replace attention.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) float tensor, as in ldm's `timestep_embedding`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Ordinary multi-head attention on (B, N, heads*d) tensors."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, inner)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class TimestepEmbedSequential(nn.Sequential):
    """Runs children in order, handing the embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """ldm's CrossAttention: self-attention when context is None (attn1), cross-attention otherwise."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 2, dim_head: int = 16):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        self.attention_override: AttentionFn | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        attend = self.attention_override or softmax_attention
        return self.to_out(attend(q, k, v, self.heads))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image -> tokens -> transformer blocks -> image, with linear projections (SD2/SDXL style)."""

    def __init__(self, channels: int, context_dim: int, dim_head: int = 16, depth: int = 1):
        super().__init__()
        heads = channels // dim_head
        self.norm = norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads, dim_head) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TinyUNet(nn.Module):
    """8x8 -> 4x4 UNet with a self-attention transformer after every ResBlock (7 attn1 layers).

    Block layout mirrors SD: input_blocks [conv, Res+ST @8, Down, Res+ST @4], middle_block
    [Res, ST, Res] @4, output_blocks [Res+ST @4, Res+ST+Up, Res+ST @8, Res+ST @8]."""

    def __init__(self, ch: int = 32, num_classes: int = 10, context_tokens: int = 4, context_dim: int = 64,
                 dim_head: int = 16, dropout: float = 0.0):
        super().__init__()
        emb_dim = 4 * ch
        c1, c2 = ch, 2 * ch
        self.ch, self.num_classes = ch, num_classes
        self.context_tokens, self.context_dim = context_tokens, context_dim
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.context_emb = nn.Embedding(num_classes + 1, context_tokens * context_dim)

        def res_st(cin: int, cout: int, *extra: nn.Module) -> TimestepEmbedSequential:
            return TimestepEmbedSequential(ResBlock(cin, emb_dim, cout, dropout),
                                           SpatialTransformer(cout, context_dim, dim_head), *extra)

        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(1, c1, 3, padding=1)),
            res_st(c1, c1),
            TimestepEmbedSequential(Downsample(c1)),
            res_st(c1, c2),
        ])
        self.middle_block = TimestepEmbedSequential(ResBlock(c2, emb_dim, c2, dropout),
                                                    SpatialTransformer(c2, context_dim, dim_head),
                                                    ResBlock(c2, emb_dim, c2, dropout))
        self.output_blocks = nn.ModuleList([
            res_st(c2 + c2, c2),
            res_st(c2 + c1, c2, Upsample(c2)),
            res_st(c2 + c1, c1),
            res_st(c1 + c1, c1),
        ])
        self.out = nn.Sequential(norm(c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, 1, 8, 8), timesteps (B,) float noise level features, y (B,) labels (NULL_CLASS = none)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.ch)) + self.label_emb(y)
        context = self.context_emb(y).reshape(len(y), self.context_tokens, self.context_dim)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
