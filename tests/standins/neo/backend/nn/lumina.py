"""Stand-in of backend/nn/lumina.py (Forge Neo, stored commit e75b2422, "ComfyUI v0.3.75"; `NextDiT`, built for
Lumina 2 and Z-Image), reduced to what ASAG depends on, with the real names and signatures:
- `attention_function` is bound at import to `backend.attention.attention_xformers` or `attention_pytorch`
  (this module's global either way);
- `JointAttention.forward(x, x_mask, freqs_cis, transformer_options={})`: per-head `q_norm`/`k_norm`, RoPE
  (`apply_rotary_emb`), k/v repeated to `n_heads` (GQA), then `attention_function(xq.movedim(1, 2),
  xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, x_mask, skip_reshape=True,
  transformer_options=transformer_options)` on (B, heads, N, d);
- `JointTransformerBlock(layer_id, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm,
  modulation=True, z_image_modulation=False, attn_out_bias=False)` with `.attention`, `forward(x, x_mask,
  freqs_cis, adaln_input=None, transformer_options={})`;
- `NextDiT.noise_refiner` (image), `.context_refiner` (text), then `.layers` on [text, image]
  (`patchify_and_embed`); `forward(x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs)`.
Left out: padding tokens, `dynamic_args["num_tokens"]`, the tanh-gated modulation's MLP half."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_pytorch as attention_function
from backend.nn.flux import EmbedND, patchify, unpatchify


class JointAttention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, qk_norm, out_bias=False):
        super().__init__()
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_local_heads, self.n_local_kv_heads = n_heads, self.n_kv_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, (n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, dim, bias=out_bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    @staticmethod
    def apply_rotary_emb(x_in, freqs_cis):
        t_ = x_in.reshape(*x_in.shape[:-1], -1, 1, 2)
        return (freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]).reshape(*x_in.shape)

    def forward(self, x, x_mask, freqs_cis, transformer_options={}):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = torch.split(self.qkv(x), [self.n_local_heads * self.head_dim,
                                              self.n_local_kv_heads * self.head_dim,
                                              self.n_local_kv_heads * self.head_dim], dim=-1)
        xq = self.q_norm(xq.view(bsz, seqlen, self.n_local_heads, self.head_dim))
        xk = self.k_norm(xk.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim))
        xv = xv.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xq = JointAttention.apply_rotary_emb(xq, freqs_cis=freqs_cis)
        xk = JointAttention.apply_rotary_emb(xk, freqs_cis=freqs_cis)
        n_rep = self.n_local_heads // self.n_local_kv_heads
        if n_rep >= 1:
            xk = xk.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
            xv = xv.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        output = attention_function(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, x_mask,
                                    skip_reshape=True, transformer_options=transformer_options)
        return self.out(output)


class JointTransformerBlock(nn.Module):
    def __init__(self, layer_id, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm,
                 modulation=True, z_image_modulation=False, attn_out_bias=False):
        super().__init__()
        self.attention = JointAttention(dim, n_heads, n_kv_heads, qk_norm, out_bias=attn_out_bias)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim, bias=False), nn.SiLU(),
                                          nn.Linear(2 * dim, dim, bias=False))
        self.layer_id, self.modulation = layer_id, modulation
        self.attention_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):
        if self.modulation:
            scale_msa, gate_msa = self.adaLN_modulation(adaln_input).chunk(2, dim=1)
            attn = self.attention(self.attention_norm1(x) * (1 + scale_msa.unsqueeze(1)), x_mask, freqs_cis,
                                  transformer_options=transformer_options)
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(attn)
        else:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), x_mask, freqs_cis,
                                                       transformer_options=transformer_options))
        return x + self.feed_forward(self.ffn_norm1(x))


class NextDiT(nn.Module):
    def __init__(self, patch_size=2, in_channels=4, dim=16, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=1,
                 multiple_of=16, ffn_dim_multiplier=4.0, norm_eps=1e-5, qk_norm=True, cap_feat_dim=8,
                 axes_dims=(2, 2, 4), axes_lens=(1, 512, 512), rope_theta=10000.0, z_image_modulation=False,
                 time_scale=1.0, pad_tokens_multiple=None):
        super().__init__()
        self.patch_size, self.time_scale, self.dim = patch_size, time_scale, dim
        block = lambda i, modulation=True: JointTransformerBlock(i, dim, n_heads, n_kv_heads, multiple_of,  # noqa
                                                                 ffn_dim_multiplier, norm_eps, qk_norm, modulation)
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.noise_refiner = nn.ModuleList(block(i) for i in range(n_refiner_layers))
        self.context_refiner = nn.ModuleList(block(i, modulation=False) for i in range(n_refiner_layers))
        self.t_embedder = nn.Linear(1, dim)
        self.cap_embedder = nn.Linear(cap_feat_dim, dim)
        self.layers = nn.ModuleList(block(i) for i in range(n_layers))
        self.final_layer = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.rope_embedder = EmbedND(dim=dim // n_heads, theta=rope_theta, axes_dim=list(axes_dims))

    def patchify_and_embed(self, x, cap_feats, cap_mask, t, num_tokens, transformer_options={}):
        img, img_ids = patchify(x)
        cap_pos_ids = torch.zeros(x.shape[0], cap_feats.shape[1], 3).to(x)
        cap_pos_ids[..., 0] = torch.arange(cap_feats.shape[1]).to(x) + 1.0
        img_ids = img_ids.clone()
        img_ids[..., 0] = cap_feats.shape[1] + 1
        freqs_cis = self.rope_embedder(torch.cat((cap_pos_ids, img_ids), dim=1)).movedim(1, 2)
        n_cap = cap_feats.shape[1]
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, cap_mask, freqs_cis[:, :n_cap], transformer_options=transformer_options)
        img = self.x_embedder(img)
        for layer in self.noise_refiner:
            img = layer(img, None, freqs_cis[:, n_cap:], t, transformer_options=transformer_options)
        return torch.cat((cap_feats, img), dim=1), None, freqs_cis

    def forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs):
        t = self.t_embedder(((1.0 - timesteps) * self.time_scale)[:, None].to(x.dtype))
        cap_feats = self.cap_embedder(context)
        transformer_options = kwargs.get("transformer_options", {})
        tokens, mask, freqs_cis = self.patchify_and_embed(x, cap_feats, attention_mask, t, num_tokens,
                                                          transformer_options=transformer_options)
        for layer in self.layers:
            tokens = layer(tokens, mask, freqs_cis, t, transformer_options=transformer_options)
        return -unpatchify(self.final_layer(tokens[:, cap_feats.shape[1]:]), x.shape)
