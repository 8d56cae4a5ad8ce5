"""Stand-in of backend/nn/wan.py (ersatzForge fca12a2; Wan 2.1 / 2.2 text-to-image: `WanModel`), reduced to what
ASAG depends on, with the real names and signatures:
- the attention function is this module's global **`optimized_attention`** (`from backend.attention import
  attention_function as optimized_attention`), called flat `optimized_attention(q, k, v, heads=self.num_heads)`
  on (B, N, heads*d);
- `WanSelfAttention.forward(x, freqs)`: q/k RMS-normed over the full width (`norm_q`/`norm_k`), RoPE inline,
  one call; `WanT2VCrossAttention(WanSelfAttention).forward(x, context, **kwargs)` calls the SAME global with
  keys/values from the text;
- `WanAttentionBlock(cross_attn_type, dim, ffn_dim, num_heads, ...)` with `.self_attn`, `.cross_attn`, `.ffn`,
  `.modulation`; `forward(x, e, freqs, context, context_img_len=257)`;
- `WanModel.blocks`, `forward_orig(x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs)`
  (honours `transformer_options["patches_replace"]["dit"][("double_block", i)]`), `forward(x, timestep, context,
  clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs)`.
Left out: the I2V cross-attention and CLIP image embedding, the 3D patch embedding (2x2 spatial patches of a
single frame here), the sinusoidal time embedding (one linear layer), the head's modulation."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_function as optimized_attention
from backend.nn.flux import EmbedND, patchify, unpatchify


class WanSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6):
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, freqs):
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)
        _shape = q.shape
        _reshape = list(_shape[:-1]) + [-1, 1, 2]
        q = q.to(torch.float32).reshape(*_reshape)
        q = (freqs[..., 0] * q[..., 0] + freqs[..., 1] * q[..., 1]).reshape(*_shape).type_as(x)
        k = self.norm_k(self.k(x)).view(b, s, n, d).to(torch.float32).reshape(*_reshape)
        k = (freqs[..., 0] * k[..., 0] + freqs[..., 1] * k[..., 1]).reshape(*_shape).type_as(x)
        x = optimized_attention(q.view(b, s, n * d), k.view(b, s, n * d), self.v(x).view(b, s, n * d),
                                heads=self.num_heads)
        return self.o(x)


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context, **kwargs):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        v = self.v(context)
        return self.o(optimized_attention(q, k, v, heads=self.num_heads))


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

    def forward(self, x, e, freqs, context, context_img_len=257):
        e = (self.modulation.to(x) + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], freqs)
        x = x + y * e[2]
        x = x + self.cross_attn(self.norm3(x), context, context_img_len=context_img_len)
        y = self.ffn(self.norm2(x) * (1 + e[4]) + e[3])
        return x + y * e[5]


class WanModel(nn.Module):
    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=4, dim=16, ffn_dim=32,
                 freq_dim=256, text_dim=8, out_dim=4, num_heads=2, num_layers=2, window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6, **kwargs):
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.patch_embedding = nn.Linear(in_dim * 4, dim)
        self.text_embedding = nn.Linear(text_dim, dim)
        self.time_embedding = nn.Linear(1, dim)
        self.time_projection = nn.Linear(dim, 6 * dim)
        self.blocks = nn.ModuleList(WanAttentionBlock("t2v_cross_attn", dim, ffn_dim, num_heads, window_size,
                                                      qk_norm, cross_attn_norm, eps) for _ in range(num_layers))
        self.head = nn.Linear(dim, out_dim * 4)
        d = dim // num_heads
        self.rope_embedder = EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])

    def forward_orig(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):
        e = self.time_embedding(t[:, None].to(x.dtype) / 1000)
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        context = self.text_embedding(context)
        blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.blocks):
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    return {"img": block(args["img"], context=args["txt"], e=args["vec"], freqs=args["pe"])}
                x = blocks_replace[("double_block", i)]({"img": x, "txt": context, "vec": e0, "pe": freqs},
                                                        {"original_block": block_wrap})["img"]
            else:
                x = block(x, e=e0, freqs=freqs, context=context)
        return self.head(x)

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        img, img_ids = patchify(x)
        freqs = self.rope_embedder(img_ids).movedim(1, 2)
        out = self.forward_orig(self.patch_embedding(img), timestep, context, clip_fea=clip_fea, freqs=freqs,
                                transformer_options=transformer_options)
        return unpatchify(out, x.shape)
