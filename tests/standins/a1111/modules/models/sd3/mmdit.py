"""Stand-in of modules/models/sd3/mmdit.py (A1111 v1.10, SD3 medium MMDiT), minimal.

Kept as in the real file: `attention` imported into this module's globals from other_impls, `block_mixing`
(text and image q/k/v concatenated, text first, one `attention(q, k, v, heads)` call, split back),
`JointBlock(context_block, x_block)` whose forward calls block_mixing, `DismantledBlock.pre_attention /
post_attention` with adaLN modulation, `SelfAttention.pre_attention` (qkv split, optional QK-norm),
the last block `pre_only` (no context output), `MMDiT.joint_blocks`, hidden = 64 * depth with `depth` heads,
and `MMDiT.forward(x, t, y, context)`. Simplified: a fixed learned position embedding instead of the cropped
sin-cos grid, and no register tokens, rmsnorm, swiglu or scale_mod_only variants."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from modules.models.sd3.other_impls import attention, Mlp


def modulate(x, shift, scale):
    if shift is None:
        shift = torch.zeros_like(scale)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim, dtype=None, device=None):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True,
                              dtype=dtype, device=device)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256, dtype=None, device=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, dtype=dtype, device=device),
                                 nn.SiLU(), nn.Linear(hidden_size, hidden_size, dtype=dtype, device=device))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t, dtype, **kwargs):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class VectorEmbedder(nn.Module):
    def __init__(self, input_dim: int, hidden_size: int, dtype=None, device=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_size, bias=True, dtype=dtype, device=device),
                                 nn.SiLU(), nn.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device))

    def forward(self, x):
        return self.mlp(x)


def split_qkv(qkv, head_dim):
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).movedim(2, 0)
    return qkv[0], qkv[1], qkv[2]


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, pre_only=False, qk_norm=None, dtype=None, device=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, device=device)
        if not pre_only:
            self.proj = nn.Linear(dim, dim, dtype=dtype, device=device)
        self.pre_only = pre_only
        if qk_norm == "ln":
            self.ln_q = nn.LayerNorm(self.head_dim, elementwise_affine=True, eps=1.0e-6, dtype=dtype, device=device)
            self.ln_k = nn.LayerNorm(self.head_dim, elementwise_affine=True, eps=1.0e-6, dtype=dtype, device=device)
        else:
            self.ln_q = nn.Identity()
            self.ln_k = nn.Identity()

    def pre_attention(self, x):
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
        return (q, k, v)

    def post_attention(self, x):
        assert not self.pre_only
        return self.proj(x)

    def forward(self, x):
        (q, k, v) = self.pre_attention(x)
        return self.post_attention(attention(q, k, v, self.num_heads))


class DismantledBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qkv_bias=False, pre_only=False, qk_norm=None,
                 dtype=None, device=None, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias, pre_only=pre_only,
                                  qk_norm=qk_norm, dtype=dtype, device=device)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
            self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                           act_layer=nn.GELU(approximate="tanh"), dtype=dtype, device=device)
        n_mods = 6 if not pre_only else 2
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mods * hidden_size, bias=True,
                                                                   dtype=dtype, device=device))
        self.pre_only = pre_only

    def pre_attention(self, x, c):
        if not self.pre_only:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa))
            return qkv, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=1)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa))
        return qkv, None

    def post_attention(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        assert not self.pre_only
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x

    def forward(self, x, c):
        assert not self.pre_only
        (q, k, v), intermediates = self.pre_attention(x, c)
        attn = attention(q, k, v, self.attn.num_heads)
        return self.post_attention(attn, *intermediates)


def block_mixing(context, x, context_block, x_block, c):
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, x_intermediates = x_block.pre_attention(x, c)
    q, k, v = tuple(torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3))
    attn = attention(q, k, v, x_block.attn.num_heads)
    context_attn, x_attn = (attn[:, : context_qkv[0].shape[1]], attn[:, context_qkv[0].shape[1]:])
    if not context_block.pre_only:
        context = context_block.post_attention(context_attn, *context_intermediates)
    else:
        context = None
    x = x_block.post_attention(x_attn, *x_intermediates)
    return context, x


class JointBlock(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
        pre_only = kwargs.pop("pre_only")
        qk_norm = kwargs.pop("qk_norm", None)
        self.context_block = DismantledBlock(*args, pre_only=pre_only, qk_norm=qk_norm, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, qk_norm=qk_norm, **kwargs)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels, dtype=None, device=None):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True, dtype=dtype,
                                device=device)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True,
                                                                   dtype=dtype, device=device))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MMDiT(nn.Module):
    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 16, depth: int = 3,
                 mlp_ratio: float = 4.0, adm_in_channels: Optional[int] = None, context_dim: int = 24,
                 qk_norm: Optional[str] = None, qkv_bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.dtype = dtype
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.patch_size = patch_size
        hidden_size = 64 * depth  # the real "magic": head size 64, `depth` heads
        num_heads = depth
        self.num_heads = num_heads
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, dtype=dtype, device=device)
        self.t_embedder = TimestepEmbedder(hidden_size, dtype=dtype, device=device)
        if adm_in_channels is not None:
            self.y_embedder = VectorEmbedder(adm_in_channels, hidden_size, dtype=dtype, device=device)
        self.context_embedder = nn.Linear(context_dim, hidden_size, dtype=dtype, device=device)
        self.pos_embed = nn.Parameter(torch.randn(1, (input_size // patch_size) ** 2, hidden_size) * 0.02)
        self.joint_blocks = nn.ModuleList([
            JointBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pre_only=i == depth - 1,
                       qk_norm=qk_norm, dtype=dtype, device=device)
            for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, dtype=dtype, device=device)

    def unpatchify(self, x, hw):
        c, p = self.out_channels, self.patch_size
        h, w = hw[0] // p, hw[1] // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward_core_with_concat(self, x, c_mod, context=None):
        for block in self.joint_blocks:
            context, x = block(context, x, c=c_mod)
        return self.final_layer(x, c_mod)

    def forward(self, x, t, y=None, context=None):
        hw = x.shape[-2:]
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None:
            c = c + self.y_embedder(y)
        context = self.context_embedder(context)
        x = self.forward_core_with_concat(x, c, context)
        return self.unpatchify(x, hw=hw)
