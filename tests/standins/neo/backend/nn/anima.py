"""Stand-in of backend/nn/anima.py (Forge Neo, stored commit b7e27c47; ported from ComfyUI's cosmos/predict2.py),
reduced to what ASAG depends on, with the real names and signatures:
- module function `torch_attention_op(q_B_S_H_D, k_B_S_H_D, v_B_S_H_D, transformer_options={})` moves heads
  first and calls this module's global `attention_function(q, k, v, heads, skip_reshape=True,
  transformer_options=...)` on (B, heads, S, d);
- `SelfCrossAttention(query_dim, context_dim=None, n_heads=8, head_dim=64)` (`is_selfattn` when `context_dim` is
  None; `attn_op = torch_attention_op`): `compute_qkv` RMS-norms q/k per head and applies RoPE
  (`apply_rotary_pos_emb`) only for self-attention; `forward(x, context=None, rope_emb=None,
  transformer_options={})`. The SAME `attention_function` serves `Block.self_attn` and `Block.cross_attn`;
- `Block.forward(x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
  extra_per_block_pos_emb=None, transformer_options={})` (no `negpip`, unlike ersatzForge); `MiniTrainDIT.blocks`;
  `MiniTrainDIT.forward(x, timesteps, context, fps=None, padding_mask=None, **kwargs)`; the loaded class is
  `Anima(MiniTrainDIT)` (another stored version, 14e0b501, names it `IntegratedAnimaTransformer`).
Left out: adaLN-LoRA, padding mask, the LLM adapter (identity here), and the stored version's stray debugging
`torch.load` of a local file in `MiniTrainDIT.forward`; timestep and patch embeddings are single linear layers."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function


class VideoRopePosition3DEmb(nn.Module):
    def __init__(self, *, head_dim, len_h=1, len_w=1, len_t=1, **kwargs):
        super().__init__()
        dim_h = head_dim // 6 * 2
        dim_t = head_dim - 2 * dim_h
        self.dim_spatial_range = torch.arange(0, dim_h, 2)[: (dim_h // 2)].float() / dim_h
        self.dim_temporal_range = torch.arange(0, dim_t, 2)[: (dim_t // 2)].float() / dim_t

    def forward(self, x_B_T_H_W_C, fps=None, device=None):
        _, T, H, W, _ = x_B_T_H_W_C.shape
        seq = torch.arange(max(H, W, T), dtype=torch.float)

        def rotations(half):
            return torch.stack([torch.cos(half), -torch.sin(half), torch.sin(half), torch.cos(half)], dim=-1)

        emb_h = rotations(torch.outer(seq[:H], 1.0 / (10000.0 ** self.dim_spatial_range)))
        emb_w = rotations(torch.outer(seq[:W], 1.0 / (10000.0 ** self.dim_spatial_range)))
        emb_t = rotations(torch.outer(seq[:T], 1.0 / (10000.0 ** self.dim_temporal_range)))
        emb = torch.cat([emb_t[:, None, None].expand(T, H, W, -1, 4), emb_h[None, :, None].expand(T, H, W, -1, 4),
                         emb_w[None, None, :].expand(T, H, W, -1, 4)], dim=-2)
        return emb.reshape(T * H * W, -1, 2, 2).float()


def torch_attention_op(q_B_S_H_D, k_B_S_H_D, v_B_S_H_D, transformer_options={}):
    heads = q_B_S_H_D.shape[-2]
    q, k, v = (t.transpose(1, 2) for t in (q_B_S_H_D, k_B_S_H_D, v_B_S_H_D))  # "b ... h k -> b h ... k"
    return attention_function(q, k, v, heads, skip_reshape=True, transformer_options=transformer_options)


class SelfCrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, n_heads=8, head_dim=64, dropout=0.0):
        super().__init__()
        self.is_selfattn = context_dim is None
        context_dim = query_dim if context_dim is None else context_dim
        inner_dim = head_dim * n_heads
        self.n_heads, self.head_dim = n_heads, head_dim
        self.q_proj = nn.Linear(query_dim, inner_dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.v_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.output_proj = nn.Linear(inner_dim, query_dim, bias=False)
        self.attn_op = torch_attention_op

    @staticmethod
    def apply_rotary_pos_emb(t, freqs):
        t_ = t.reshape(*t.shape[:-1], 2, -1).movedim(-2, -1).unsqueeze(-2).float()
        t_out = freqs[..., 0] * t_[..., 0] + freqs[..., 1] * t_[..., 1]
        return t_out.movedim(-1, -2).reshape(*t.shape).type_as(t)

    def compute_qkv(self, x, context=None, rope_emb=None):
        context = x if context is None else context
        q, k, v = (proj(t).unflatten(-1, (self.n_heads, self.head_dim))
                   for proj, t in ((self.q_proj, x), (self.k_proj, context), (self.v_proj, context)))
        q, k = self.q_norm(q), self.k_norm(k)
        if self.is_selfattn and rope_emb is not None:
            q = self.apply_rotary_pos_emb(q, rope_emb)
            k = self.apply_rotary_pos_emb(k, rope_emb)
        return q, k, v

    def compute_attention(self, q, k, v, transformer_options={}):
        return self.output_proj(self.attn_op(q, k, v, transformer_options=transformer_options))

    def forward(self, x, context=None, rope_emb=None, transformer_options={}):
        q, k, v = self.compute_qkv(x, context, rope_emb=rope_emb)
        return self.compute_attention(q, k, v, transformer_options=transformer_options)


class Block(nn.Module):
    def __init__(self, x_dim, context_dim, num_heads, mlp_ratio=4.0, use_adaln_lora=False, adaln_lora_dim=256):
        super().__init__()
        self.layer_norm_self_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfCrossAttention(x_dim, None, num_heads, x_dim // num_heads)
        self.layer_norm_cross_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = SelfCrossAttention(x_dim, context_dim, num_heads, x_dim // num_heads)
        self.layer_norm_mlp = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(x_dim, int(x_dim * mlp_ratio), bias=False), nn.GELU(),
                                 nn.Linear(int(x_dim * mlp_ratio), x_dim, bias=False))
        self.adaln_modulation_self_attn = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))
        self.adaln_modulation_cross_attn = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))
        self.adaln_modulation_mlp = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))

    def forward(self, x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
                extra_per_block_pos_emb=None, transformer_options={}):
        mods = [m(emb_B_T_D)[:, :, None, None].chunk(3, -1) for m in (
            self.adaln_modulation_self_attn, self.adaln_modulation_cross_attn, self.adaln_modulation_mlp)]
        B, T, H, W, D = x_B_T_H_W_D.shape

        def attend(attn, norm, modulation, context):
            shift, scale, gate = modulation
            normalized = (norm(x_B_T_H_W_D) * (1 + scale) + shift).reshape(B, T * H * W, D)
            result = attn(normalized, context, rope_emb=rope_emb_L_1_1_D, transformer_options=transformer_options)
            return gate * result.reshape(B, T, H, W, D)

        x_B_T_H_W_D = x_B_T_H_W_D + attend(self.self_attn, self.layer_norm_self_attn, mods[0], None)
        x_B_T_H_W_D = x_B_T_H_W_D + attend(self.cross_attn, self.layer_norm_cross_attn, mods[1], crossattn_emb)
        shift, scale, gate = mods[2]
        return x_B_T_H_W_D + gate * self.mlp(self.layer_norm_mlp(x_B_T_H_W_D) * (1 + scale) + shift)


class MiniTrainDIT(nn.Module):
    def __init__(self, max_img_h=240, max_img_w=240, max_frames=1, in_channels=4, out_channels=4, patch_spatial=2,
                 patch_temporal=1, concat_padding_mask=False, model_channels=32, num_blocks=2, num_heads=2,
                 mlp_ratio=2.0, crossattn_emb_channels=8, pos_emb_cls="rope3d", **kwargs):
        super().__init__()
        self.patch_spatial = patch_spatial
        self.pos_embedder = VideoRopePosition3DEmb(head_dim=model_channels // num_heads)
        self.t_embedder = nn.Linear(1, model_channels, bias=False)
        self.x_embedder = nn.Linear(in_channels * patch_spatial ** 2, model_channels, bias=False)
        self.blocks = nn.ModuleList(Block(model_channels, crossattn_emb_channels, num_heads, mlp_ratio)
                                    for _ in range(num_blocks))
        self.final_layer = nn.Linear(model_channels, out_channels * patch_spatial ** 2, bias=False)

    def preprocess_text_embeds(self, text_embeds, text_ids):
        return text_embeds

    def forward(self, x, timesteps, context, fps=None, padding_mask=None, **kwargs):
        b, c, h, w = x.shape
        p = self.patch_spatial
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, 1, h // p, w // p, -1)
        x_B_T_H_W_D = self.x_embedder(patches)
        block_kwargs = {"rope_emb_L_1_1_D": self.pos_embedder(x_B_T_H_W_D).unsqueeze(1).unsqueeze(0),
                        "adaln_lora_B_T_3D": None, "extra_per_block_pos_emb": None,
                        "transformer_options": kwargs.get("transformer_options", {})}
        emb_B_T_D = self.t_embedder(timesteps[:, None, None].to(x.dtype) / 1000)
        crossattn_emb = self.preprocess_text_embeds(context, kwargs.get("t5xxl_ids"))
        for block in self.blocks:
            x_B_T_H_W_D = block(x_B_T_H_W_D, emb_B_T_D, crossattn_emb, **block_kwargs)
        out = self.final_layer(x_B_T_H_W_D).reshape(b, h // p, w // p, c, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class Anima(MiniTrainDIT):
    """Real: adds `llm_adapter = LLMAdapter()` and runs it in `preprocess_text_embeds` when text ids come."""
