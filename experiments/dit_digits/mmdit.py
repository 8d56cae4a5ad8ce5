"""A tiny MMDiT (SD3-style diffusion transformer) for 8x8 digits: two token streams, one joint attention.

Layout follows SD3's MMDiT (ComfyUI/A1111 `mmdit.py`): the condition is a short sequence of context
tokens with their own weights (the "text" stream), the image is patchified into tokens (the "image"
stream); each `joint_blocks.N` has adaLN-Zero modulation per stream from the timestep + pooled
condition vector, QK-RMS-norm, and ONE attention over the concatenation [context, image] (context
first, as in `block_mixing`). Module names match the hosts' (`joint_blocks.N`), so
`lib_asag.layers` resolves "joint.2" on it exactly as on SD3.

The condition: `TEXT_TOKENS` learned tokens per class, plus one more set for the null condition
(index NULL_CLASS) used for classifier-free guidance; the class also enters the adaLN vector like
SD3's pooled CLIP embedding.

The hooks the guidance experiment uses, per block: `attention_override(q, k, v, heads, n_text)` replaces
the joint attention (q, k, v: (B, N, heads*d) after QK-norm, text first), and `skip = True` returns the
block's inputs unchanged (skip-layer guidance).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from experiments.digits.tiny_unet import softmax_attention, timestep_embedding

JointAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    """Per-head RMS norm of q and k (SD3.5 / Flux QK-norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class StreamIn(nn.Module):
    """One stream's half of a joint block before attention: adaLN, LN, modulate, qkv, QK-norm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.ln_q, self.ln_k = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        mods = self.adaLN_modulation(c).chunk(6, dim=1)
        q, k, v = self.qkv(modulate(self.norm1(x), mods[0], mods[1])).chunk(3, dim=-1)
        b, n, dim = q.shape
        q = self.ln_q(q.reshape(b, n, self.heads, -1)).reshape(b, n, dim)
        k = self.ln_k(k.reshape(b, n, self.heads, -1)).reshape(b, n, dim)
        return (q, k, v), mods

    def post_attention(self, x: torch.Tensor, attn: torch.Tensor, mods) -> torch.Tensor:
        x = x + mods[2][:, None] * self.proj(attn)
        return x + mods[5][:, None] * self.mlp(modulate(self.norm2(x), mods[3], mods[4]))


class JointBlock(nn.Module):
    """MMDiT block: context and image streams with their own weights, one joint attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.context_block, self.x_block = StreamIn(dim, heads), StreamIn(dim, heads)
        self.attention_override: JointAttentionFn | None = None
        self.skip = False

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        if self.skip:
            return context, x
        (cq, ck, cv), cmods = self.context_block.pre_attention(context, c)
        (xq, xk, xv), xmods = self.x_block.pre_attention(x, c)
        q, k, v = torch.cat([cq, xq], 1), torch.cat([ck, xk], 1), torch.cat([cv, xv], 1)
        n_text = context.shape[1]
        if self.attention_override is None:
            out = softmax_attention(q, k, v, self.heads)
        else:
            out = self.attention_override(q, k, v, self.heads, n_text)
        context = self.context_block.post_attention(context, out[:, :n_text], cmods)
        x = self.x_block.post_attention(x, out[:, n_text:], xmods)
        return context, x


class TinyMMDiT(nn.Module):
    """8x8x1 images, `patch`x`patch` patches, `depth` joint blocks named `joint_blocks.N`."""

    def __init__(self, dim: int = 64, depth: int = 6, heads: int = 4, patch: int = 2, text_tokens: int = 4,
                 num_classes: int = 10, size: int = 8):
        super().__init__()
        self.patch, self.size, self.dim = patch, size, dim
        n_img = (size // patch) ** 2
        self.x_embedder = nn.Linear(patch * patch, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, n_img, dim) * 0.02)
        self.context_embedder = nn.Embedding(num_classes + 1, text_tokens * dim)
        nn.init.normal_(self.context_embedder.weight, std=0.5)
        self.text_tokens = text_tokens
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = nn.Embedding(num_classes + 1, dim)  # the pooled vector
        self.joint_blocks = nn.ModuleList(JointBlock(dim, heads) for _ in range(depth))
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(dim, patch * patch)
        for layer in (self.final_adaLN[-1], self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, p, s = len(x), self.patch, self.size
        x = x.reshape(b, 1, s // p, p, s // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (s // p) ** 2, p * p)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        b, p, s = len(t), self.patch, self.size
        t = t.reshape(b, s // p, s // p, 1, p, p).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(b, 1, s, s)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder(self.patchify(x)) + self.pos_embed
        context = self.context_embedder(y).reshape(len(y), self.text_tokens, self.dim)
        c = self.t_embedder(timestep_embedding(c_noise * 250, self.dim)) + self.y_embedder(y)
        for block in self.joint_blocks:
            context, tokens = block(context, tokens, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)
        return self.unpatchify(self.final_linear(modulate(self.final_norm(tokens), shift, scale)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

