"""Stand-in of modules/models/sd3/other_impls.py (A1111 v1.10): `attention(q, k, v, heads, mask=None)`, the SDPA
wrapper mmdit.py imports as its module-level `attention`, and `Mlp`. The CLIP/T5 classes are left out."""
from __future__ import annotations

import torch
from torch import nn


def attention(q, k, v, heads, mask=None):
    """(B, N, heads*d) in and out, like the real one."""
    b, _, dim_head = q.shape
    dim_head //= heads
    q, k, v = [t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, bias=True,
                 dtype=None, device=None):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, dtype=dtype, device=device)
        self.act = act_layer
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
