"""Stand-in of backend/nn/chroma.py (ersatzForge fca12a2, Chroma1-HD), reduced to what ASAG depends on, with the
real names and signatures. Unlike Forge dfdcbab6 (whose chroma.py imports flux's `attention`), the blocks here
apply RoPE inline and call this module's own global `attention_function` (`from backend.attention import
attention_function`) as `attention_function(q, k, v, q.shape[1], skip_reshape=True)` on (B, heads, N, d):
`DoubleStreamBlock.forward(scratchQ, scratchK, scratchV, img, txt, img_mod1, img_mod2, txt_mod1, txt_mod2, pe)`,
`SingleStreamBlock.forward(scratchA, x, shift, scale, gate, pe)`, `IntegratedChromaTransformer2DModel.
double_blocks` / `.single_blocks`, `inner_forward(img, img_ids, txt, txt_ids, timestep, guidance=None)`,
`forward(x, timestep, context, guidance=None, **kwargs)`. Left out: the `distilled_guidance_layer` Approximator
(real: hard-coded 3072 wide; one linear layer of the timestep gives the modulations here), modulation indices,
dynamic PE; scratch buffers follow the configured width (real: 24 heads x 128 hard-coded)."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function

from .flux import EmbedND, QKNorm, SelfAttention, heads_of, patchify, unpatchify


def _rope(t, pe):
    """The real blocks' inline RoPE (view to pairs, rotate, view back)."""
    shape = t.shape
    t = t.view(*(list(shape[:-1]) + [-1, 1, 2]))
    return torch.add(torch.mul(pe[..., 0], t[..., 0]), torch.mul(pe[..., 1], t[..., 1])).view(*shape)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = nn.Linear(hidden_size, hidden_size)

    def forward(self, scratchQ, scratchK, scratchV, img, txt, img_mod1, img_mod2, txt_mod1, txt_mod2, pe):
        T = txt.shape[1]
        scratchQ[:, :, T:], scratchK[:, :, T:], scratchV[:, :, T:] = heads_of(self.img_attn.qkv(img + img_mod1),
                                                                               self.num_heads)
        scratchQ[:, :, T:], scratchK[:, :, T:] = self.img_attn.norm(scratchQ[:, :, T:], scratchK[:, :, T:])
        scratchQ[:, :, :T], scratchK[:, :, :T], scratchV[:, :, :T] = heads_of(self.txt_attn.qkv(txt + txt_mod1),
                                                                               self.num_heads)
        scratchQ[:, :, :T], scratchK[:, :, :T] = self.txt_attn.norm(scratchQ[:, :, :T], scratchK[:, :, :T])
        attn = attention_function(_rope(scratchQ, pe), _rope(scratchK, pe), scratchV, scratchQ.shape[1],
                                  skip_reshape=True)
        txt_attn, img_attn = attn[:, :T], attn[:, T:]
        img = img + self.img_attn.proj(img_attn)
        img = img + self.img_mlp(torch.tanh(img + img_mod2))
        txt = txt + self.txt_attn.proj(txt_attn)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)

    def forward(self, scratchA, x, shift, scale, gate, pe):
        x_mod = torch.addcmul(shift, scale + 1, x)
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = heads_of(qkv, self.num_heads)
        q, k = self.norm(q, k)
        scratchA[:, :, :self.hidden_size] = attention_function(_rope(q, pe), _rope(k, pe), v, q.shape[1],
                                                               skip_reshape=True)
        scratchA[:, :, self.hidden_size:] = torch.tanh(mlp)
        return x + gate * self.linear2(scratchA)


class IntegratedChromaTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_in_dim=8, hidden_size=16, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(2, 2, 4), theta=10000, mlp_ratio=2.0, qkv_bias=True, **kwargs):
        super().__init__()
        self.in_channels = self.out_channels = in_channels * 4
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.distilled_guidance_layer = nn.Linear(1, 5 * hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timestep, guidance=None):
        img = self.img_in(img)
        mods = self.distilled_guidance_layer(timestep[:, None].to(img.dtype) / 1000)[:, None].chunk(5, dim=-1)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        b, n, heads = img.shape[0], img.shape[1] + txt.shape[1], self.num_heads
        scratchQ, scratchK, scratchV = (img.new_empty(b, heads, n, self.hidden_size // heads) for _ in range(3))
        for block in self.double_blocks:
            img, txt = block(scratchQ, scratchK, scratchV, img=img, txt=txt, img_mod1=mods[0], img_mod2=mods[1],
                             txt_mod1=mods[2], txt_mod2=mods[1], pe=pe)
        img = torch.cat((txt, img), 1)
        scratchA = img.new_empty(b, n, self.hidden_size + (self.single_blocks[0].mlp_hidden_dim
                                                           if len(self.single_blocks) else 0))
        for block in self.single_blocks:
            img = block(scratchA, img, shift=mods[3], scale=mods[4], gate=mods[2], pe=pe)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, guidance=None, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        return unpatchify(self.inner_forward(img, img_ids, context, txt_ids, timestep, guidance), x.shape)
