"""Stand-in of ldm_patched/ldm/modules/diffusionmodules/openaimodel.py (Forge 33e381f1), UNetModel.

Keeps the module tree (`input_blocks.N.1.transformer_blocks.K.attn1`, `middle_block.1`, `output_blocks.N.1`)
and what forward writes into transformer_options (`original_shape`, `block` = ("input", id) / ("middle", 0) /
("output", id)). No resolution changes and a residual chain instead of real ResBlocks: tiny and random."""
from __future__ import annotations

import torch
from torch import nn

from ldm_patched.ldm.modules.attention import SpatialTransformer

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


class UNetModel(nn.Module):
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
