"""Stand-in of backend/nn/flux.py (ersatzForge fca12a2), reduced to what ASAG depends on, with the real names and
signatures:
- module-level `attention(q, k, v, pe)` applies RoPE *inline* (the same maths as `apply_rope`, which still
  exists) and calls this module's global `attention_function(q, k, v, q.shape[1], skip_reshape=True)` on
  (B, heads, N, d); backend/nn/flux2.py imports this `attention`, so Flux.2 blocks end up here too;
- `QKNorm.forward(q, k)` (two arguments; dfdcbab6 has three);
- `DoubleStreamBlock.forward(scratchQ, scratchK, scratchV, img, txt, vec, pe)`: the model preallocates
  `scratchQ/K/V` of shape (B, heads, T+N, d) and each block writes its txt (first) and img q/k/v into them
  before one `attention` call; `SingleStreamBlock.forward(scratchA, x, vec, pe)` writes the attention output
  into `scratchA[:, :, :hidden]` and its MLP activation after it;
- `IntegratedFluxTransformer2DModel.double_blocks` / `.single_blocks`, `inner_forward(img, img_ids, txt, txt_ids,
  timestep, y, guidance, timestep_scaling)`, `forward(x, timestep, context, y, guidance=None, **kwargs)`.
The real model hard-codes the scratch shapes for 24 heads x 128 (3072 wide, `scratchA` 15360); here they follow
the configured width. Left out: modulation details, the MLP embedders of timestep / `y` / `guidance` (one linear
layer of the timestep stands in), dynamic PE, fp16 fixes; `y` defaults to None here (the stand-in KModel does
not pass it)."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function


def attention(q, k, v, pe):
    _shape = q.shape
    _reshape = list(_shape[:-1]) + [-1, 1, 2]
    q = q.to(torch.float32).reshape(*_reshape)
    q = torch.add(torch.mul(pe[..., 0], q[..., 0]), torch.mul(pe[..., 1], q[..., 1]))
    q = q.reshape(*_shape).type_as(v)
    k = k.to(torch.float32).reshape(*_reshape)
    k = torch.add(torch.mul(pe[..., 0], k[..., 0]), torch.mul(pe[..., 1], k[..., 1]))
    k = k.reshape(*_shape).type_as(v)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)


def rope(pos, dim, theta, timestep_scaling=1.0):
    scale = torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    out = timestep_scaling * pos.unsqueeze(-1) * omega.unsqueeze(0)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    b, n, d, _ = out.shape
    return out.view(b, n, d, 2, 2).to(torch.float32)


def apply_rope(xq, xk, freqs_cis):
    xq_ = xq.to(torch.float32).reshape(*xq.shape[:-1], -1, 1, 2)
    xq_out = (freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]).reshape(*xq.shape).type_as(xq)
    xk_ = xk.to(torch.float32).reshape(*xk.shape[:-1], -1, 1, 2)
    xk_out = (freqs_cis[..., 0] * xk_[..., 0] + freqs_cis[..., 1] * xk_[..., 1]).reshape(*xk.shape).type_as(xk)
    return xq_out, xk_out


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids, timestep_scaling=1.0):
        emb = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta, timestep_scaling)
                         for i in range(ids.shape[-1])], dim=-3)
        return emb.unsqueeze(1)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, q, k):
        q = self.query_norm(q)
        k = self.key_norm(k)
        return q.to(k), k


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


def heads_of(qkv, heads):
    """(B, L, 3*H*D) -> q, k, v (B, H, L, D), as the real blocks' view + permute (test helper name)."""
    b, length, _ = qkv.shape
    return qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.img_mod = nn.Linear(hidden_size, hidden_size)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = nn.Linear(hidden_size, hidden_size)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_mlp = nn.Linear(hidden_size, hidden_size)

    def forward(self, scratchQ, scratchK, scratchV, img, txt, vec, pe):
        T = txt.shape[1]
        scratchQ[:, :, T:], scratchK[:, :, T:], scratchV[:, :, T:] = heads_of(
            self.img_attn.qkv(img + self.img_mod(vec)[:, None]), self.num_heads)
        scratchQ[:, :, T:], scratchK[:, :, T:] = self.img_attn.norm(scratchQ[:, :, T:], scratchK[:, :, T:])
        scratchQ[:, :, :T], scratchK[:, :, :T], scratchV[:, :, :T] = heads_of(self.txt_attn.qkv(txt), self.num_heads)
        scratchQ[:, :, :T], scratchK[:, :, :T] = self.txt_attn.norm(scratchQ[:, :, :T], scratchK[:, :, :T])
        attn = attention(scratchQ, scratchK, scratchV, pe=pe)
        txt_attn, img_attn = attn[:, :T], attn[:, T:]
        img = img + self.img_attn.proj(img_attn)
        img = img + self.img_mlp(torch.tanh(img))
        txt = txt + self.txt_attn.proj(txt_attn)
        txt = txt + self.txt_mlp(torch.tanh(txt))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.modulation = nn.Linear(hidden_size, hidden_size)

    def forward(self, scratchA, x, vec, pe):
        qkv, mlp = torch.split(self.linear1(x + self.modulation(vec)[:, None]),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = heads_of(qkv, self.num_heads)
        q, k = self.norm(q, k)
        scratchA[:, :, :self.hidden_size] = attention(q, k, v, pe=pe)
        scratchA[:, :, self.hidden_size:] = torch.tanh(mlp)
        return x + self.linear2(scratchA)


def patchify(x):
    """(B, C, H, W) -> (B, H/2 * W/2, 4C) and the image position ids (B, N, 3), as the real forward."""
    b, c, h, w = x.shape
    img = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return img, ids.reshape(1, -1, 3).expand(b, -1, -1).to(x)


def unpatchify(img, shape):
    b, c, h, w = shape
    return img.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(shape)


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_in_dim=8, hidden_size=16, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(2, 2, 4), theta=10000, mlp_ratio=2.0, qkv_bias=True, guidance_embed=False, **kwargs):
        super().__init__()
        self.in_channels = self.out_channels = in_channels * 4
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.time_in = nn.Linear(1, hidden_size)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timestep, y, guidance=None, timestep_scaling=1.0):
        img = self.img_in(img)
        vec = self.time_in(timestep[:, None].to(img.dtype) / 1000)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1), timestep_scaling)
        b, n, heads = img.shape[0], img.shape[1] + txt.shape[1], self.num_heads
        scratchQ, scratchK, scratchV = (img.new_empty(b, heads, n, self.hidden_size // heads) for _ in range(3))
        for block in self.double_blocks:
            img, txt = block(scratchQ, scratchK, scratchV, img=img, txt=txt, vec=vec, pe=pe)
        img = torch.cat((txt, img), 1)
        scratchA = img.new_empty(b, n, self.hidden_size + self.single_blocks[0].mlp_hidden_dim
                                 if len(self.single_blocks) else self.hidden_size)
        for block in self.single_blocks:
            img = block(scratchA, img, vec=vec, pe=pe)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, y=None, guidance=None, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        return unpatchify(self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance), x.shape)
