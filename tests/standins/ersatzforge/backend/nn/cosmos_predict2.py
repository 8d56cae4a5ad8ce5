"""Stand-in of backend/nn/cosmos_predict2.py (ersatzForge fca12a2): the Cosmos-Predict2 DiT that the loader builds
for Anima and Cosmos-Predict2 checkpoints (`CosmosTransformer3DModel` -> `MiniTrainDIT`), reduced to what ASAG
depends on, with the real names and signatures:
- this module's global `attention_function` (`from backend.attention import attention_function`), called by
  `Attention.forward(x, context=None, negpip=None, rope_emb=None, transformer_options={})` as
  `attention_function(q, k, v, self.n_heads, skip_reshape=True)` on (B, heads, L, d), after the per-head
  `q_norm` / `k_norm` and -- for self-attention only (`is_selfattn`, i.e. `context_dim is None`) -- RoPE
  (`apply_rotary_pos_emb`). The SAME global serves `Block.self_attn` and `Block.cross_attn` (keys/values from
  the text embedding);
- `Block.forward(x_B_T_H_W_D, emb_B_T_D, crossattn_emb, negpip, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
  extra_per_block_pos_emb=None, transformer_options={})`: adaLN-gated self-attention on the flattened
  (B, T*H*W, D) tokens, then cross-attention, then the MLP; `MiniTrainDIT.blocks`;
  `MiniTrainDIT.forward(x, timesteps, context, negpip=None, fps=None, padding_mask=None, **kwargs)` (x is
  (B, C, H, W) and gets T = 1);
- `VideoRopePosition3DEmb.forward(x_B_T_H_W_C, fps=None, device=None)` -> (T*H*W, d/2, 2, 2), the real
  image-case maths (head_dim // 6 * 2 dims each for h and w, the rest for t).
Left out: adaLN-LoRA, the padding-mask channel, extra per-block positional embeddings, reference latents, the
LLM adapter (Anima's text path, lower in the real file); timestep embedding and patch embedding are single
linear layers."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function


class VideoRopePosition3DEmb(nn.Module):
    def __init__(self, *, head_dim, len_t=1, **kwargs):
        super().__init__()
        dim_hw = head_dim // 6 * 2
        dim_t = head_dim - 2 * dim_hw
        self.hw_spatial_freqs = 1.0 / (10000.0 ** (torch.arange(0, dim_hw, 2, dtype=torch.float32) / dim_hw))
        self.temporal_freqs = 1.0 / (10000.0 ** (torch.arange(0, dim_t, 2, dtype=torch.float32) / dim_t))

    def forward(self, x_B_T_H_W_C, fps=None, device=None):
        _, T, H, W, _ = x_B_T_H_W_C.shape
        seq = torch.arange(max(H, W, T), dtype=torch.float32)

        def rotations(half):
            return torch.stack([torch.cos(half), -torch.sin(half), torch.sin(half), torch.cos(half)], dim=-1)

        emb_h = rotations(torch.outer(seq[:H], self.hw_spatial_freqs))
        emb_w = rotations(torch.outer(seq[:W], self.hw_spatial_freqs))
        emb_t = rotations(torch.outer(seq[:T], self.temporal_freqs))
        emb = torch.cat([emb_t[:, None, None].expand(T, H, W, -1, 4), emb_h[None, :, None].expand(T, H, W, -1, 4),
                         emb_w[None, None, :].expand(T, H, W, -1, 4)], dim=-2)
        return emb.reshape(T * H * W, -1, 2, 2).to(torch.float32)


class Attention(nn.Module):
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

    @staticmethod
    def apply_rotary_pos_emb(t, freqs):
        t_ = t.reshape(*t.shape[:-1], 2, -1).movedim(-2, -1).unsqueeze(-2).to(torch.float32)
        t_out = freqs[..., 0] * t_[..., 0] + freqs[..., 1] * t_[..., 1]
        return t_out.movedim(-1, -2).reshape(*t.shape).type_as(t)

    def forward(self, x, context=None, negpip=None, rope_emb=None, transformer_options={}):
        if context is None:
            context = x
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)))
        if self.is_selfattn and rope_emb is not None:  # only apply to self-attention!
            q = self.apply_rotary_pos_emb(q, rope_emb)
        k = self.k_norm(self.k_proj(context).unflatten(-1, (self.n_heads, self.head_dim)))
        if self.is_selfattn and rope_emb is not None:
            k = self.apply_rotary_pos_emb(k, rope_emb)
        v = self.v_proj(context).unflatten(-1, (self.n_heads, self.head_dim))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # "b ... h d -> b h (...) d"
        result = attention_function(q, k, v, self.n_heads, skip_reshape=True)
        return self.output_proj(result)


class Block(nn.Module):
    def __init__(self, x_dim, context_dim, num_heads, mlp_ratio=4.0, use_adaln_lora=False, adaln_lora_dim=256):
        super().__init__()
        self.layer_norm_self_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(x_dim, None, num_heads, x_dim // num_heads)
        self.layer_norm_cross_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(x_dim, context_dim, num_heads, x_dim // num_heads)
        self.layer_norm_mlp = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(x_dim, int(x_dim * mlp_ratio), bias=False), nn.GELU(),
                                 nn.Linear(int(x_dim * mlp_ratio), x_dim, bias=False))
        self.adaln_modulation_self_attn = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))
        self.adaln_modulation_cross_attn = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))
        self.adaln_modulation_mlp = nn.Sequential(nn.SiLU(), nn.Linear(x_dim, 3 * x_dim, bias=False))

    def forward(self, x_B_T_H_W_D, emb_B_T_D, crossattn_emb, negpip, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
                extra_per_block_pos_emb=None, transformer_options={}):
        shift_self, scale_self, gate_self = self.adaln_modulation_self_attn(emb_B_T_D)[:, :, None, None].chunk(3, -1)
        shift_cross, scale_cross, gate_cross = self.adaln_modulation_cross_attn(emb_B_T_D)[:, :, None, None].chunk(
            3, -1)
        shift_mlp, scale_mlp, gate_mlp = self.adaln_modulation_mlp(emb_B_T_D)[:, :, None, None].chunk(3, -1)
        B, T, H, W, D = x_B_T_H_W_D.shape

        def tokens(t):
            return t.reshape(B, T * H * W, D)

        normalized = torch.addcmul(shift_self, self.layer_norm_self_attn(x_B_T_H_W_D), scale_self + 1)
        result = self.self_attn(tokens(normalized), None, rope_emb=rope_emb_L_1_1_D,
                                transformer_options=transformer_options)
        x_B_T_H_W_D = x_B_T_H_W_D + gate_self * result.reshape(B, T, H, W, D)
        normalized = torch.addcmul(shift_cross, self.layer_norm_cross_attn(x_B_T_H_W_D), scale_cross + 1)
        result = self.cross_attn(tokens(normalized), crossattn_emb, negpip, rope_emb=rope_emb_L_1_1_D,
                                 transformer_options=transformer_options)
        x_B_T_H_W_D = x_B_T_H_W_D + gate_cross * result.reshape(B, T, H, W, D)
        normalized = torch.addcmul(shift_mlp, self.layer_norm_mlp(x_B_T_H_W_D), scale_mlp + 1)
        return x_B_T_H_W_D + gate_mlp * self.mlp(normalized)


class MiniTrainDIT(nn.Module):
    def __init__(self, max_img_h=240, max_img_w=240, max_frames=1, in_channels=4, out_channels=4, patch_spatial=2,
                 patch_temporal=1, concat_padding_mask=False, model_channels=32, num_blocks=2, num_heads=2,
                 mlp_ratio=2.0, crossattn_emb_channels=8, pos_emb_cls="rope3d", **kwargs):
        super().__init__()
        self.patch_spatial, self.out_channels = patch_spatial, out_channels
        self.model_channels, self.num_heads = model_channels, num_heads
        self.pos_embedder = VideoRopePosition3DEmb(head_dim=model_channels // num_heads, len_t=max_frames)
        self.t_embedder = nn.Linear(1, model_channels, bias=False)
        self.x_embedder = nn.Linear(in_channels * patch_spatial ** 2, model_channels, bias=False)
        self.blocks = nn.ModuleList(Block(model_channels, crossattn_emb_channels, num_heads, mlp_ratio)
                                    for _ in range(num_blocks))
        self.final_layer = nn.Linear(model_channels, out_channels * patch_spatial ** 2, bias=False)

    def forward(self, x, timesteps, context, negpip=None, fps=None, padding_mask=None, **kwargs):
        transformer_options = kwargs.get("transformer_options", {})
        b, c, h, w = x.shape
        p = self.patch_spatial
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, 1, h // p, w // p, -1)
        x_B_T_H_W_D = self.x_embedder(patches)
        rope_emb = self.pos_embedder(x_B_T_H_W_D)
        emb_B_T_D = self.t_embedder(timesteps[:, None, None].to(x.dtype) / 1000)
        for block in self.blocks:
            x_B_T_H_W_D = block(x_B_T_H_W_D, emb_B_T_D, context, negpip, rope_emb.unsqueeze(1).unsqueeze(0), None,
                                None, transformer_options=transformer_options)
        out = self.final_layer(x_B_T_H_W_D).reshape(b, h // p, w // p, c, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
