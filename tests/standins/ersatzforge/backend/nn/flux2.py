"""Stand-in of backend/nn/flux2.py (ersatzForge fca12a2, Flux.2 dev / Klein), reduced to what ASAG depends on,
with the real names and signatures: `from .flux import attention, ...` -- the blocks call flux's `attention`,
which looks `attention_function` up in backend.nn.flux (so that is the global ASAG swaps for Flux.2 too);
`DoubleStreamBlock.forward(img, txt, vec, negpip, pe)` (txt and img q/k/v concatenated txt first along the
sequence after `norm(q, k)`, one `attention` call), `SingleStreamBlock.forward(x, vec, pe)`,
`IntegratedFlux2Transformer2DModel.double_blocks` / `.single_blocks`, `forward_orig(img, img_ids, txt, txt_ids,
timesteps, negpip, guidance=None, control=None)`, `forward(x, timestep, context, negpip=None, guidance=None,
ref_latents=None, control=None, **kwargs)`. Left out: global modulation, SiLU-gated MLPs, reference latents,
Klein latents; 3 position axes here (real: 4)."""
from __future__ import annotations

import torch
from torch import nn

from .flux import EmbedND, QKNorm, attention, heads_of, patchify, unpatchify


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim, bias=False)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False, modulation=True):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = nn.Linear(hidden_size, hidden_size)

    def forward(self, img, txt, vec, negpip, pe):
        img_q, img_k, img_v = heads_of(self.img_attn.qkv(img + vec[:, None]), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k)
        txt_q, txt_k, txt_v = heads_of(self.txt_attn.qkv(txt), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k)
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        attn = attention(q, k, v, pe=pe)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + self.img_attn.proj(img_attn)
        img = img + self.img_mlp(torch.tanh(img))
        txt = txt + self.txt_attn.proj(txt_attn)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None, modulation=True):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3, bias=False)
        self.linear2 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = QKNorm(hidden_size // num_heads)

    def forward(self, x, vec, pe):
        q, k, v = heads_of(self.linear1(x + vec[:, None]), self.num_heads)
        q, k = self.norm(q, k)
        attn = attention(q, k, v, pe=pe)
        return x + self.linear2(attn)


class IntegratedFlux2Transformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_in_dim=8, hidden_size=16, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(2, 2, 4), theta=2000, mlp_ratio=3.0, qkv_bias=False, **kwargs):
        super().__init__()
        self.in_channels = self.out_channels = in_channels * 4
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size, bias=False)
        self.time_in = nn.Linear(1, hidden_size, bias=False)
        self.txt_in = nn.Linear(context_in_dim, hidden_size, bias=False)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, self.out_channels, bias=False)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, negpip, guidance=None, control=None):
        img = self.img_in(img)
        vec = self.time_in(timesteps[:, None].to(img.dtype) / 1000)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, negpip=negpip, pe=pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, negpip=None, guidance=None, ref_latents=None, control=None, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, negpip, guidance, control)
        return unpatchify(out, x.shape)
