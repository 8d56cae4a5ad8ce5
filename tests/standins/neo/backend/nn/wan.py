"""Stand-in of backend/nn/wan.py (Forge Neo, "https://github.com/comfyanonymous/ComfyUI/blob/v0.3.64/comfy/ldm/wan/
model.py"; not in the index of Haoming02/sd-webui-forge-classic: read in a copy of Neo's tree, docs/hosts-forks.md;
Wan 2.1 / 2.2 text-to-image: `WanModel`), reduced to what ASAG depends on, with the real names and signatures:
- `from backend.attention import attention_function` and a module-level wrapper `attention(*args, **kwargs)` ("for
  Radial Attention") that returns `attention_function(*args, **kwargs)`; there is no `optimized_attention`;
- `WanSelfAttention.forward(x, freqs, transformer_options={})`: q/k RMS-normed over the full width, RoPE
  (`apply_rope1` from backend.nn.flux), then `attention(q, k, v, heads=self.num_heads,
  transformer_options=transformer_options)` flat on (B, N, heads*d);
- `WanT2VCrossAttention(WanSelfAttention).forward(x, context, **kwargs)` calls `attention_function(q, k, v,
  heads=self.num_heads)` itself (the other global) with keys/values from the text;
- `WanAttentionBlock(cross_attn_type, dim, ffn_dim, num_heads, ...)` with `.self_attn`, `.cross_attn`, `.ffn`,
  `.modulation`; `WanModel.blocks`; `forward(x, timestep, context, clip_fea=None, time_dim_concat=None,
  transformer_options={}, **kwargs)` on 5-D latents (B, C, T, H, W).
Left out: the I2V cross-attention and CLIP image embedding, the 3D patch embedding (2x2 spatial patches of the
first frame here: the tests' latents have T = 1 and come in 4-D), the sinusoidal time embedding (one linear layer),
the head's modulation, `patches_replace`."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_function
from backend.nn.flux import EmbedND, apply_rope1, patchify, unpatchify


def attention(*args, **kwargs):  # for Radial Attention
    return attention_function(*args, **kwargs)


class WanSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6):
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, freqs, transformer_options={}):
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = apply_rope1(self.norm_q(self.q(x)).view(b, s, n, d), freqs)
        k = apply_rope1(self.norm_k(self.k(x)).view(b, s, n, d), freqs)
        x = attention(q.view(b, s, n * d), k.view(b, s, n * d), self.v(x).view(b, s, n * d), heads=self.num_heads,
                      transformer_options=transformer_options)
        return self.o(x)


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context, **kwargs):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        v = self.v(context)
        return self.o(attention_function(q, k, v, heads=self.num_heads))


WAN_CROSSATTENTION_CLASSES = {"t2v_cross_attn": WanT2VCrossAttention}


class WanAttentionBlock(nn.Module):
    def __init__(self, cross_attn_type, dim, ffn_dim, num_heads, window_size=(-1, -1), qk_norm=True,
                 cross_attn_norm=False, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WAN_CROSSATTENTION_CLASSES[cross_attn_type](dim, num_heads, (-1, -1), qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, e, freqs, context, context_img_len=257, transformer_options={}):
        e = (self.modulation.to(x) + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], freqs, transformer_options=transformer_options)
        x = x + y * e[2]
        x = x + self.cross_attn(self.norm3(x), context, context_img_len=context_img_len)
        y = self.ffn(self.norm2(x) * (1 + e[4]) + e[3])
        return x + y * e[5]


class WanModel(nn.Module):
    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=4, dim=16, ffn_dim=32,
                 freq_dim=256, text_dim=8, out_dim=4, num_heads=2, num_layers=2, window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6, **kwargs):
        super().__init__()
        self.dim, self.out_dim, self.in_dim = dim, out_dim, in_dim
        self.patch_embedding = nn.Linear(in_dim * 4, dim)
        self.text_embedding = nn.Linear(text_dim, dim)
        self.time_embedding = nn.Linear(1, dim)
        self.time_projection = nn.Linear(dim, 6 * dim)
        self.blocks = nn.ModuleList(WanAttentionBlock("t2v_cross_attn", dim, ffn_dim, num_heads, window_size,
                                                      qk_norm, cross_attn_norm, eps) for _ in range(num_layers))
        self.head = nn.Linear(dim, out_dim * 4)
        d = dim // num_heads
        self.rope_embedder = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        img, img_ids = patchify(x)
        freqs = self.rope_embedder(img_ids).movedim(1, 2)
        e = self.time_embedding(timestep[:, None].to(x.dtype) / 1000)
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        context = self.text_embedding(context)
        h = self.patch_embedding(img)
        for block in self.blocks:
            h = block(h, e=e0, freqs=freqs, context=context, transformer_options=transformer_options)
        return unpatchify(self.head(h), x.shape)
