"""Stand-in of backend/nn/mmditx.py (ersatzForge fca12a2, SD3.5), reduced to what ASAG depends on, with the real
names and signatures. Unlike Forge dfdcbab6 there is no module-level `attention` any more: every call goes to
this module's global `attention_function` (`from backend.attention import attention_function`), flat, as
`attention_function(q, k, v, heads)` on (B, N, heads*d) with v (B, N, heads, d). `block_mixing(context, x,
context_block, x_block, c)` writes the context (first) and x q/k/v into the module-global buffers
`SD3_Q`/`SD3_K`/`SD3_V` that `MMDiTX.forward` allocates per call (`SD3_t` = context length; real: 64 wide per
head, hard-coded), makes one joint call, then a second one for the x-block's `attn2` (`x_block_self_attn`, SD3.5
Medium). `DismantledBlock` (`pre_attention`, `post_attention`, `pre_attention_x`, `post_attention_x`),
`JointBlock.forward` -> `block_mixing`, `MMDiTX.joint_blocks` (last one `pre_only`) and `forward(x, t, y=None,
context=None, control=None, transformer_options={}, **kwargs)` honouring `transformer_options["skip_layers"]`.
Left out: adaLN modulation chunks, positional embedding, y-embedder."""
from __future__ import annotations

import torch
import torch.nn as nn

from backend.attention import attention_function

SD3_Q = SD3_K = SD3_V = SD3_t = None



class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, pre_only=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)

    def pre_attention(self, x):
        """As the real one: q, k (B, L, heads*d) after the per-head qk-norm; v stays (B, L, heads, d)."""
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, self.num_heads, -1).movedim(2, 0)
        return q.reshape(q.shape[0], q.shape[1], -1), k.reshape(k.shape[0], k.shape[1], -1), v

    def post_attention(self, x):
        return self.proj(x)


class DismantledBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, pre_only=False, x_block_self_attn=False):
        super().__init__()
        self.attn = SelfAttention(hidden_size, num_heads, pre_only)
        self.x_block_self_attn = x_block_self_attn
        if x_block_self_attn:
            self.attn2 = SelfAttention(hidden_size, num_heads)
        self.adaLN_modulation = nn.Linear(hidden_size, hidden_size)
        if not pre_only:
            self.mlp = nn.Linear(hidden_size, hidden_size)
        self.pre_only = pre_only

    def pre_attention(self, x, c):
        qkv = self.attn.pre_attention(x + self.adaLN_modulation(c)[:, None])
        return qkv, (None if self.pre_only else (x,))

    def post_attention(self, attn, x):
        x = x + self.attn.post_attention(attn)
        return x + self.mlp(torch.tanh(x))

    def pre_attention_x(self, x, c):
        x_mod = x + self.adaLN_modulation(c)[:, None]
        return self.attn.pre_attention(x_mod), self.attn2.pre_attention(x_mod), (x,)

    def post_attention_x(self, attn, attn2, x):
        x = x + self.attn.post_attention(attn) + self.attn2.post_attention(attn2)
        return x + self.mlp(torch.tanh(x))


def block_mixing(context, x, context_block, x_block, c):
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    if x_block.x_block_self_attn:
        x_qkv, x_qkv2, x_intermediates = x_block.pre_attention_x(x, c)
    else:
        x_qkv, x_intermediates = x_block.pre_attention(x, c)
    for buffer, part in zip((SD3_Q, SD3_K, SD3_V), range(3)):
        buffer[:, :SD3_t], buffer[:, SD3_t:] = context_qkv[part], x_qkv[part]
    attn = attention_function(SD3_Q, SD3_K, SD3_V, x_block.attn.num_heads)
    context_attn, x_attn = attn[:, :SD3_t], attn[:, SD3_t:]
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    if x_block.x_block_self_attn:
        x_q2, x_k2, x_v2 = x_qkv2
        attn2 = attention_function(x_q2, x_k2, x_v2, x_block.attn2.num_heads)
        x = x_block.post_attention_x(x_attn, attn2, *x_intermediates)
    else:
        x = x_block.post_attention(x_attn, *x_intermediates)
    return context, x


class JointBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, pre_only=False, x_block_self_attn=False):
        super().__init__()
        self.context_block = DismantledBlock(hidden_size, num_heads, pre_only=pre_only)
        self.x_block = DismantledBlock(hidden_size, num_heads, x_block_self_attn=x_block_self_attn)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class MMDiTX(nn.Module):
    def __init__(self, in_channels=4, context_dim=8, hidden_size=16, num_heads=2, depth=3, patch_size=2,
                 x_block_self_attn_layers=(0,)):
        super().__init__()
        self.patch_size, self.in_channels, self.out_channels = patch_size, in_channels, in_channels
        self.x_embedder = nn.Linear(in_channels * patch_size ** 2, hidden_size)
        self.t_embedder = nn.Linear(1, hidden_size)
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, num_heads, pre_only=i == depth - 1, x_block_self_attn=i in x_block_self_attn_layers)
            for i in range(depth))
        self.final_layer = nn.Linear(hidden_size, in_channels * patch_size ** 2)
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads

    def forward(self, x, t, y=None, context=None, control=None, transformer_options={}, **kwargs):
        global SD3_Q, SD3_K, SD3_V, SD3_t
        s = (x.shape[2] * x.shape[3]) // 4
        SD3_t = context.shape[1]
        SD3_Q = torch.empty((x.shape[0], SD3_t + s, self.num_heads * self.head_dim), dtype=x.dtype)
        SD3_K = torch.empty((x.shape[0], SD3_t + s, self.num_heads * self.head_dim), dtype=x.dtype)
        SD3_V = torch.empty((x.shape[0], SD3_t + s, self.num_heads, self.head_dim), dtype=x.dtype)
        skip_layers = transformer_options.get("skip_layers", [])
        b, ch, h, w = x.shape
        p = self.patch_size
        tokens = x.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, ch * p * p)
        x_ = self.x_embedder(tokens)
        c = self.t_embedder(t[:, None].to(x_.dtype) / 1000)
        context = self.context_embedder(context)
        for i, block in enumerate(self.joint_blocks):
            if i in skip_layers:
                continue
            context, x_ = block(context, x_, c=c)
        out = self.final_layer(x_)
        return out.reshape(b, h // p, w // p, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, h, w)
