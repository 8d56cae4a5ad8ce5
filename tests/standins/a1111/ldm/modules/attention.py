"""Stand-in of ldm/modules/attention.py (Stability-AI/stablediffusion): CrossAttention,
BasicTransformerBlock, SpatialTransformer with the real attribute names (heads, scale, to_q/to_k/to_v,
to_out = Sequential(Linear, Dropout), attn1/attn2, transformer_blocks) and call signatures.

A1111 replaces `CrossAttention.forward` on the class with its optimised forwards
(modules/sd_hijack_optimizations.py, SdOptimization*.apply); tests do the same with `install_forward`.
"""
from __future__ import annotations

import torch
from torch import nn


def default(value, fallback):
    return fallback if value is None else value


def softmax_attention_forward(self, x, context=None, mask=None, **kwargs):
    """Plain softmax attention in the shape of A1111's optimised forwards (self, x, context, mask, **kwargs)."""
    h = self.heads
    context = default(context, x)
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, inner = q.shape
    d = inner // h
    q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, inner)
    return self.to_out(out)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, mask=None):
        return softmax_attention_forward(self, x, context, mask)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    attention_class = CrossAttention

    def __init__(self, dim, n_heads, d_head, context_dim=None, disable_self_attn=False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = self.attention_class(query_dim=dim, heads=n_heads, dim_head=d_head,
                                          context_dim=context_dim if disable_self_attn else None)
        self.ff = FeedForward(dim)
        self.attn2 = self.attention_class(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None):
        return self._forward(x, context)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """(B, C, H, W) -> tokens -> transformer_blocks -> (B, C, H, W), residual; linear proj_in/out as in SD2/SDXL."""

    block_class = BasicTransformerBlock

    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None):
        super().__init__()
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(8, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [self.block_class(inner, n_heads, d_head, context_dim=context_dim) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + x_in
