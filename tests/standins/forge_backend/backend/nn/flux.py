"""Stand-in of backend/nn/flux.py (Forge dfdcbab6), reduced to what ASAG depends on, with the real names and
signatures: module-level `attention(q, k, v, pe)` (RoPE by `apply_rope`, then `attention_function(...,
skip_reshape=True)`), `rope`, `EmbedND`, `QKNorm`, `SelfAttention`, and `DoubleStreamBlock.forward(img, txt, vec,
pe)` (txt and img q/k/v concatenated txt-first along the sequence, one `attention` call) /
`SingleStreamBlock.forward(x, vec, pe)` in `IntegratedFluxTransformer2DModel.double_blocks` / `.single_blocks`.
Left out: modulation details, MLP-embedders of timestep / `y` / `guidance`, the LastLayer's adaLN (a plain
linear stands in), padding. The model's forward patchifies 2x2 like the real one and ignores `y` / `guidance`."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function


def attention(q, k, v, pe):
    q, k = apply_rope(q, k, pe)
    x = attention_function(q, k, v, q.shape[1], skip_reshape=True)
    return x


def rope(pos, dim, theta):
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    out = pos.unsqueeze(-1) * omega.unsqueeze(0)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    b, n, d, _ = out.shape
    return out.view(b, n, d, 2, 2).float()


def apply_rope(xq, xk, freqs_cis):
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]
    xk_out = freqs_cis[..., 0] * xk_[..., 0] + freqs_cis[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids):
        emb = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])], dim=-3)
        return emb.unsqueeze(1)


class QKNorm(nn.Module):
    """Real: two RMSNorms with learned scale; here RMS normalisation without the scale."""

    def forward(self, q, k, v):
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6)
        return q.to(k), k.to(q)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm()
        self.proj = nn.Linear(dim, dim)


def _heads(qkv, heads):
    """(B, L, 3*H*D) -> q, k, v of shape (B, H, L, D), as the real blocks' view + permute."""
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

    def forward(self, img, txt, vec, pe):
        img_q, img_k, img_v = _heads(self.img_attn.qkv(img + self.img_mod(vec)[:, None]), self.num_heads)
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
        txt = txt + self.txt_mlp(torch.tanh(txt))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3)
        self.linear2 = nn.Linear(hidden_size, hidden_size)
        self.norm = QKNorm()
        self.modulation = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, vec, pe):
        q, k, v = _heads(self.linear1(x + self.modulation(vec)[:, None]), self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe)
        return x + self.linear2(attn)


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
                 axes_dim=(2, 2, 4), theta=10000, mlp_ratio=2.0, qkv_bias=True, guidance_embed=False):
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

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps):
        img = self.img_in(img)
        vec = self.time_in(timesteps[:, None].to(img.dtype) / 1000)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, y=None, guidance=None, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        return unpatchify(self.inner_forward(img, img_ids, context, txt_ids, timestep), x.shape)
