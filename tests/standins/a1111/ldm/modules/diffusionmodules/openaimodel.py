"""Stand-in of ldm/modules/diffusionmodules/openaimodel.py: a tiny UNetModel with the real module layout
(input_blocks.N = TimestepEmbedSequential(ResBlock, SpatialTransformer), middle_block = (ResBlock,
SpatialTransformer, ResBlock), output_blocks.N = (ResBlock, SpatialTransformer[, Upsample])), so attn1 paths
read `input_blocks.1.1.transformer_blocks.0.attn1` etc., and forward(x, timesteps, context, y) as in ldm/sgm.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import timestep_embedding


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif hasattr(layer, "transformer_blocks"):  # a SpatialTransformer of ldm or sgm
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(8, out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    """in -> [res+attn] -> down -> [res+attn(depth 2)] -> middle(res, attn, res) -> 4 output blocks with attn.

    attn1 layers: input.1.0, input.3.0, input.3.1, middle.0, middle.1 (with middle_depth=2),
    output.0.0 ... output.3.0."""

    transformer_class = SpatialTransformer

    def __init__(self, in_channels=4, out_channels=4, model_channels=16, n_heads=2, d_head=8, context_dim=24,
                 adm_in_channels=None, middle_depth=1):
        super().__init__()
        c, emb = model_channels, model_channels * 4
        attn = lambda depth=1: self.transformer_class(c, n_heads, d_head, depth=depth, context_dim=context_dim)  # noqa: E731
        self.model_channels = model_channels
        self.time_embed = nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.num_classes = "sequential" if adm_in_channels else None
        if adm_in_channels:
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm_in_channels, emb), nn.SiLU(), nn.Linear(emb, emb)))
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(in_channels, c, 3, padding=1)),
            TimestepEmbedSequential(ResBlock(c, emb), attn()),
            TimestepEmbedSequential(Downsample(c)),
            TimestepEmbedSequential(ResBlock(c, emb), attn(2)),
        ])
        self.middle_block = TimestepEmbedSequential(ResBlock(c, emb), attn(middle_depth), ResBlock(c, emb))
        self.output_blocks = nn.ModuleList([
            TimestepEmbedSequential(ResBlock(2 * c, emb, c), attn()),
            TimestepEmbedSequential(ResBlock(2 * c, emb, c), attn(), Upsample(c)),
            TimestepEmbedSequential(ResBlock(2 * c, emb, c), attn()),
            TimestepEmbedSequential(ResBlock(2 * c, emb, c), attn()),
        ])
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
