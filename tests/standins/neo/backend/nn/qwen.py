"""Stand-in of backend/nn/qwen.py (Forge Neo, stored commit 2d0ed1fe; `QwenImageTransformer2DModel`, Qwen-Image),
reduced to what ASAG depends on, with the real names and signatures:
- `attention_function` bound at import to `backend.attention.attention_xformers` or `attention_pytorch`;
- `Attention.forward(hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
  attention_mask=None, image_rotary_emb=None)` -> (img_attn_output, txt_attn_output): per-head RMS norms
  (`norm_q`/`norm_k` for the image stream, `norm_added_q`/`norm_added_k` for the text stream), txt and img
  concatenated txt first, RoPE (`apply_rotary_emb`), flattened, one flat call `attention_function(joint_query,
  joint_key, joint_value, self.heads, attention_mask)` on (B, N, heads*d);
- `QwenImageTransformerBlock.forward(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb,
  image_rotary_emb=None)` -> (encoder_hidden_states, hidden_states); `QwenImageTransformer2DModel
  .transformer_blocks`, `forward(x, timestep, context, attention_mask=None, guidance=None, ref_latents=None,
  transformer_options={}, **kwargs)`.
Left out: the modulation MLPs (one linear layer of the timestep), feed-forwards reduced, reference latents;
2-D images only (the real model takes a frame axis)."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_pytorch as attention_function
from backend.nn.flux import EmbedND, patchify, unpatchify


def apply_rotary_emb(x, freqs_cis):
    if x.shape[1] == 0:
        return x
    t_ = x.reshape(*x.shape[:-1], -1, 1, 2)
    t_out = freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]
    return t_out.reshape(*x.shape)


class Attention(nn.Module):
    def __init__(self, query_dim, dim_head=64, heads=8, bias=False, eps=1e-5, out_bias=True, out_dim=None):
        super().__init__()
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm_q, self.norm_k = nn.RMSNorm(dim_head, eps=eps), nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_q, self.norm_added_k = nn.RMSNorm(dim_head, eps=eps), nn.RMSNorm(dim_head, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(query_dim, self.inner_dim, bias=bias) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(query_dim, self.inner_dim, bias=bias)
                                                             for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim, bias=out_bias), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(self.inner_dim, query_dim, bias=out_bias)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                attention_mask=None, image_rotary_emb=None):
        seq_txt = encoder_hidden_states.shape[1]
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        img_query, img_key = self.norm_q(split(self.to_q(hidden_states))), self.norm_k(split(self.to_k(hidden_states)))
        img_value = split(self.to_v(hidden_states))
        txt_query = self.norm_added_q(split(self.add_q_proj(encoder_hidden_states)))
        txt_key = self.norm_added_k(split(self.add_k_proj(encoder_hidden_states)))
        txt_value = split(self.add_v_proj(encoder_hidden_states))
        joint_query = apply_rotary_emb(torch.cat([txt_query, img_query], dim=1), image_rotary_emb).flatten(start_dim=2)
        joint_key = apply_rotary_emb(torch.cat([txt_key, img_key], dim=1), image_rotary_emb).flatten(start_dim=2)
        joint_value = torch.cat([txt_value, img_value], dim=1).flatten(start_dim=2)
        joint_hidden_states = attention_function(joint_query, joint_key, joint_value, self.heads, attention_mask)
        txt_attn_output, img_attn_output = joint_hidden_states[:, :seq_txt], joint_hidden_states[:, seq_txt:]
        return self.to_out[1](self.to_out[0](img_attn_output)), self.to_add_out(txt_attn_output)


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim, num_attention_heads, attention_head_dim, eps=1e-6):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.img_mlp, self.txt_mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn = Attention(query_dim=dim, dim_head=attention_head_dim, heads=num_attention_heads, out_dim=dim,
                              bias=True, eps=eps)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb=None):
        img_scale, img_gate = self.img_mod(temb)[:, None].chunk(2, dim=-1)
        txt_scale, txt_gate = self.txt_mod(temb)[:, None].chunk(2, dim=-1)
        img_attn_output, txt_attn_output = self.attn(
            hidden_states=self.img_norm1(hidden_states) * (1 + img_scale),
            encoder_hidden_states=self.txt_norm1(encoder_hidden_states) * (1 + txt_scale),
            encoder_hidden_states_mask=encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + img_gate * img_attn_output
        encoder_hidden_states = encoder_hidden_states + txt_gate * txt_attn_output
        hidden_states = hidden_states + self.img_mlp(torch.tanh(hidden_states))
        encoder_hidden_states = encoder_hidden_states + self.txt_mlp(torch.tanh(encoder_hidden_states))
        return encoder_hidden_states, hidden_states


class QwenImageTransformer2DModel(nn.Module):
    def __init__(self, patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=8, axes_dims_rope=(2, 2, 4), **kwargs):
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pe_embedder = EmbedND(dim=attention_head_dim, theta=10000, axes_dim=list(axes_dims_rope))
        self.time_text_embed = nn.Linear(1, self.inner_dim)
        self.img_in = nn.Linear(in_channels, self.inner_dim)
        self.txt_in = nn.Linear(joint_attention_dim, self.inner_dim)
        self.transformer_blocks = nn.ModuleList(
            QwenImageTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
            for _ in range(num_layers))
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * out_channels)

    def forward(self, x, timestep, context, attention_mask=None, guidance=None, ref_latents=None,
                transformer_options={}, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3).to(x)
        txt_ids[..., 1:] = torch.arange(context.shape[1]).to(x)[None, :, None] + img_ids[..., 1:].max() + 1
        image_rotary_emb = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).movedim(1, 2)
        hidden_states, encoder_hidden_states = self.img_in(img), self.txt_in(context)
        temb = self.time_text_embed(timestep[:, None].to(x.dtype) / 1000)
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, attention_mask, temb,
                                                         image_rotary_emb)
        return unpatchify(self.proj_out(hidden_states), x.shape)
