"""Stand-in of backend/nn/unet.py (Forge dfdcbab6): CrossAttention, BasicTransformerBlock (same attn1/attn2
patch protocol as ldm_patched: replace looked up by (block, number, block_index), then (block, number)),
SpatialTransformer (sets block_index) and IntegratedUNet2DConditionModel (sets transformer_options["block"]),
with the real module paths; tiny, random, single resolution."""
from __future__ import annotations

import torch
from torch import nn


def attention_basic(q, k, v, heads, mask=None):
    """Softmax attention on projected (B, N, heads*d) tensors (the real optimized_attention family)."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, -1, inner)


# Real: `from backend.attention import attention_function` (pytorch, xformers, split, sub-quadratic);
# CrossAttention.forward calls it.
attention_function = attention_basic


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, value=None, mask=None, transformer_options=None):
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(context if value is None else value)
        return self.to_out(attention_function(q, k, v, self.heads, mask))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim=None):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.n_heads = n_heads
        self.d_head = d_head

    def forward(self, x, context=None, transformer_options={}):
        return self._forward(x, context, transformer_options)

    def _forward(self, x, context=None, transformer_options={}):
        extra_options = {}
        block = transformer_options.get("block", None)
        block_index = transformer_options.get("block_index", 0)
        transformer_patches = {}
        transformer_patches_replace = {}
        for k in transformer_options:
            if k == "patches":
                transformer_patches = transformer_options[k]
            elif k == "patches_replace":
                transformer_patches_replace = transformer_options[k]
            else:
                extra_options[k] = transformer_options[k]
        extra_options["n_heads"] = self.n_heads
        extra_options["dim_head"] = self.d_head

        n = self.norm1(x)
        context_attn1 = None
        value_attn1 = None
        if "attn1_patch" in transformer_patches:
            context_attn1 = n
            value_attn1 = context_attn1
            for p in transformer_patches["attn1_patch"]:
                n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra_options)

        transformer_block = (block[0], block[1], block_index) if block is not None else None
        attn1_replace_patch = transformer_patches_replace.get("attn1", {})
        block_attn1 = transformer_block
        if block_attn1 not in attn1_replace_patch:
            block_attn1 = block
        if block_attn1 in attn1_replace_patch:
            if context_attn1 is None:
                context_attn1 = n
                value_attn1 = n
            n = self.attn1.to_q(n)
            context_attn1 = self.attn1.to_k(context_attn1)
            value_attn1 = self.attn1.to_v(value_attn1)
            n = attn1_replace_patch[block_attn1](n, context_attn1, value_attn1, extra_options)
            n = self.attn1.to_out(n)
        else:
            n = self.attn1(n, context=context_attn1, value=value_attn1, transformer_options=extra_options)
        x = x + n

        n = self.norm2(x)
        context_attn2 = context
        value_attn2 = None
        attn2_replace_patch = transformer_patches_replace.get("attn2", {})
        block_attn2 = transformer_block
        if block_attn2 not in attn2_replace_patch:
            block_attn2 = block
        if block_attn2 in attn2_replace_patch:
            value_attn2 = context_attn2
            n = self.attn2.to_q(n)
            context_attn2 = self.attn2.to_k(context_attn2)
            value_attn2 = self.attn2.to_v(value_attn2)
            n = attn2_replace_patch[block_attn2](n, context_attn2, value_attn2, extra_options)
            n = self.attn2.to_out(n)
        else:
            n = self.attn2(n, context=context_attn2, value=value_attn2, transformer_options=extra_options)
        x = x + n
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None):
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(1, in_channels)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim=context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(self, x, context=None, transformer_options={}):
        b, c, h, w = x.shape
        x_in = x
        x = self.proj_in(self.norm(x).reshape(b, c, h * w).transpose(1, 2))
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context=context, transformer_options=transformer_options)
        return self.proj_out(x).transpose(1, 2).reshape(b, c, h, w) + x_in
SD1_LAYOUT = {"input": {1: 1, 2: 1, 4: 1, 5: 1, 7: 1, 8: 1}, "middle": 1, "output": {i: 1 for i in range(3, 12)},
              "blocks": 12}
SDXL_LAYOUT = {"input": {4: 2, 5: 2, 7: 3, 8: 3}, "middle": 3, "output": {0: 3, 1: 3, 2: 3, 3: 2, 4: 2, 5: 2},
               "blocks": 9}  # depths cut from 10 to 3 to stay tiny; the multi-block middle is what matters


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None, transformer_options={}):
        for layer in self:
            if isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
            else:
                x = layer(x) + emb
        return x


class IntegratedUNet2DConditionModel(nn.Module):
    def __init__(self, in_channels=4, model_channels=16, num_heads=2, context_dim=8, layout=SD1_LAYOUT):
        super().__init__()
        ch, d_head = model_channels, model_channels // num_heads

        def block(depth):
            layers = [nn.Conv2d(ch, ch, 3, padding=1)]
            if depth:
                layers.append(SpatialTransformer(ch, num_heads, d_head, depth=depth, context_dim=context_dim))
            return TimestepEmbedSequential(*layers)

        self.time_embed = nn.Linear(1, ch)
        self.proj = nn.Conv2d(in_channels, ch, 1)
        self.input_blocks = nn.ModuleList(block(layout["input"].get(i, 0)) for i in range(layout["blocks"]))
        self.middle_block = TimestepEmbedSequential(
            nn.Conv2d(ch, ch, 3, padding=1),
            SpatialTransformer(ch, num_heads, d_head, depth=layout["middle"], context_dim=context_dim),
            nn.Conv2d(ch, ch, 3, padding=1))
        self.output_blocks = nn.ModuleList(block(layout["output"].get(i, 0)) for i in range(layout["blocks"]))
        self.out = nn.Conv2d(ch, in_channels, 1)
        self.dtype = torch.float32

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        emb = self.time_embed(timesteps.reshape(-1, 1).float())[:, :, None, None]
        h, hs = self.proj(x), []
        for id, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", id)
            h = module(h, emb, context, transformer_options)
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, transformer_options)
        for id, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", id)
            h = module(h + hs.pop(), emb, context, transformer_options)
        return self.out(h)
