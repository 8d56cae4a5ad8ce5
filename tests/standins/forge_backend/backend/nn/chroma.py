"""Stand-in of backend/nn/chroma.py (Forge dfdcbab6): its own DoubleStreamBlock / SingleStreamBlock classes whose
forwards call `attention`, imported by name from backend.nn.flux (`from backend.nn.flux import attention, ...`):
the name the blocks look up is this module's global. Modulation comes from one vector per block (real: the
`distilled_guidance_layer` Approximator and `distribute_modulations`); forward(x, timestep, context, **kwargs)."""
from __future__ import annotations

import torch
from torch import nn

from backend.nn.flux import EmbedND, QKNorm, SelfAttention, _heads, attention, patchify, unpatchify


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = nn.Linear(hidden_size, hidden_size)

    def forward(self, img, txt, mod, pe):
        img_q, img_k, img_v = _heads(self.img_attn.qkv(img + mod), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = _heads(self.txt_attn.qkv(txt), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
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
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3)
        self.linear2 = nn.Linear(hidden_size, hidden_size)
        self.norm = QKNorm()

    def forward(self, x, mod, pe):
        q, k, v = _heads(self.linear1(x + mod), self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe)
        return x + self.linear2(attn)


class IntegratedChromaTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_in_dim=8, hidden_size=16, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(2, 2, 4), theta=10000, mlp_ratio=2.0, qkv_bias=True):
        super().__init__()
        self.in_channels = self.out_channels = in_channels * 4
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.distilled_guidance_layer = nn.Linear(1, hidden_size * (depth + depth_single_blocks))
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, self.out_channels)

    def forward(self, x, timestep, context, **kwargs):
        img, img_ids = patchify(x)
        img = self.img_in(img)
        mods = self.distilled_guidance_layer(timestep[:, None].to(img.dtype) / 1000)
        mods = mods.view(x.shape[0], len(self.double_blocks) + len(self.single_blocks), 1, -1).unbind(1)
        txt = self.txt_in(context)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block, mod in zip(self.double_blocks, mods):
            img, txt = block(img=img, txt=txt, mod=mod, pe=pe)
        img = torch.cat((txt, img), 1)
        for block, mod in zip(self.single_blocks, mods[len(self.double_blocks):]):
            img = block(img, mod=mod, pe=pe)
        return unpatchify(self.final_layer(img[:, txt.shape[1]:, ...]), x.shape)
