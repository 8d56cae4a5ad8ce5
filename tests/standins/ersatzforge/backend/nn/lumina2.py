"""Stand-in of backend/nn/lumina2.py (ersatzForge fca12a2; Lumina 2 and Z-Image: `Lumina2DiT`), reduced to what
ASAG depends on, with the real names and signatures:
- `JointAttention.forward(x, x_mask, freqs_cis, negpip=None)`: per-head `q_norm`/`k_norm`, RoPE
  (`apply_rotary_emb`), k/v repeated from `n_kv_heads` to `n_heads` (grouped-query attention), then this
  module's global `attention_function(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2),
  self.n_local_heads, None, skip_reshape=True)` on (B, heads, N, d);
- `JointTransformerBlock(layer_id, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm,
  modulation=True, z_modulation=False, block_id=None)` with `.attention`, `forward(x, x_mask, freqs_cis,
  adaln_input=None, negpip=None, control=None, strength=None)`;
- `Lumina2DiT.noise_refiner` (image tokens only), `.context_refiner` (text tokens only, no modulation), then
  `.layers` on the concatenated [text, image] sequence (`patchify_and_embed`); `forward(x, timesteps, context,
  negpip=None, num_tokens=None, attention_mask=None, **kwargs)` returns `-x` as the real one.
Left out: padding tokens, control layers (Z-Image Fun), PE scaling options; the timestep and caption embedders are
single linear layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_function
from backend.nn.flux import EmbedND, patchify, unpatchify


class JointAttention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, qk_norm):
        super().__init__()
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_local_heads, self.n_local_kv_heads = n_heads, self.n_kv_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, (n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    @staticmethod
    def apply_rotary_emb(x_in, freqs_cis):
        t_ = x_in.reshape(*x_in.shape[:-1], -1, 1, 2)
        t_out = torch.mul(freqs_cis[..., 0], t_[..., 0])
        t_out.addcmul_(freqs_cis[..., 1], t_[..., 1])
        return t_out.reshape(*x_in.shape)

    def forward(self, x, x_mask, freqs_cis, negpip=None):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = torch.split(self.qkv(x), [self.n_local_heads * self.head_dim,
                                              self.n_local_kv_heads * self.head_dim,
                                              self.n_local_kv_heads * self.head_dim], dim=-1)
        xq = JointAttention.apply_rotary_emb(self.q_norm(xq.view(bsz, seqlen, self.n_local_heads, self.head_dim)),
                                             freqs_cis)
        xk = JointAttention.apply_rotary_emb(self.k_norm(xk.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)),
                                             freqs_cis)
        xv = xv.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        n_rep = self.n_local_heads // self.n_local_kv_heads
        if n_rep >= 1:
            xk = xk.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
            xv = xv.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        output = attention_function(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, None,
                                    skip_reshape=True)
        return self.out(output)


class JointTransformerBlock(nn.Module):
    def __init__(self, layer_id, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm,
                 modulation=True, z_modulation=False, block_id=None):
        super().__init__()
        self.attention = JointAttention(dim, n_heads, n_kv_heads, qk_norm)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim, bias=False), nn.SiLU(),
                                          nn.Linear(2 * dim, dim, bias=False))
        self.layer_id, self.block_id, self.modulation = layer_id, block_id, modulation
        self.attention_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, negpip=None, control=None, strength=None):
        if self.modulation:
            scale_msa, gate_msa = self.adaLN_modulation(adaln_input).chunk(2, dim=1)
            attn = self.attention(self.attention_norm1(x) * (1 + scale_msa.unsqueeze(1)), x_mask, freqs_cis, negpip)
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(attn)
        else:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), x_mask, freqs_cis, negpip))
        return x + self.feed_forward(self.ffn_norm1(x))


class Lumina2DiT(nn.Module):
    def __init__(self, patch_size=2, in_channels=4, dim=16, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=1,
                 multiple_of=16, ffn_dim_multiplier=4.0, norm_eps=1e-5, qk_norm=True, cap_feat_dim=8,
                 axes_dims=(2, 2, 4), axes_lens=(1, 512, 512), rope_theta=10000.0, z_modulation=False, **kwargs):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        block = lambda i, modulation=True: JointTransformerBlock(i, dim, n_heads, n_kv_heads, multiple_of,  # noqa
                                                                 ffn_dim_multiplier, norm_eps, qk_norm, modulation)
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.noise_refiner = nn.ModuleList(block(i + 1000) for i in range(n_refiner_layers))
        self.context_refiner = nn.ModuleList(block(i, modulation=False) for i in range(n_refiner_layers))
        self.t_embedder = nn.Linear(1, dim)
        self.cap_embedder = nn.Linear(cap_feat_dim, dim)
        self.layers = nn.ModuleList(block(i) for i in range(n_layers))
        self.final_layer = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.rope_embedder = EmbedND(dim=dim // n_heads, theta=rope_theta, axes_dim=list(axes_dims))

    def patchify_and_embed(self, x, cap_feats, adaln_input):
        img, img_ids = patchify(x)
        cap_ids = torch.zeros(x.shape[0], cap_feats.shape[1], 3).to(x)
        cap_ids[..., 0] = torch.arange(cap_feats.shape[1]).to(x) + 1.0
        img_ids = img_ids.clone()
        img_ids[..., 0] = cap_feats.shape[1] + 1
        freqs_cis = self.rope_embedder(torch.cat((cap_ids, img_ids), dim=1)).movedim(1, 2)
        t = cap_feats.shape[1]
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, None, freqs_cis[:, :t])
        img = self.x_embedder(img)
        for layer in self.noise_refiner:
            img = layer(img, None, freqs_cis[:, t:], adaln_input)
        return torch.cat((cap_feats, img), dim=1), freqs_cis

    def forward(self, x, timesteps, context, negpip=None, num_tokens=None, attention_mask=None, **kwargs):
        adaln_input = self.t_embedder((1.0 - timesteps)[:, None].to(x.dtype))
        context = self.cap_embedder(context)
        tokens, freqs_cis = self.patchify_and_embed(x, context, adaln_input)
        for layer in self.layers:
            tokens = layer(tokens, None, freqs_cis, adaln_input, negpip)
        out = self.final_layer(tokens[:, context.shape[1]:])
        return -unpatchify(out, x.shape)
