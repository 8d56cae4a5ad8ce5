"""Stand-in of backend/attention.py (Forge Neo, stored commit 1fe65075; "ComfyUI v0.7.0"): `attention_pytorch`
with Neo's signature -- `skip_output_reshape` and `**kwargs` (the model files pass `transformer_options=`) --
and the module global `attention_function` the model files import (PyTorch SDPA on CPU)."""
from __future__ import annotations

import torch


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs):
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = map(lambda t: t.view(b, -1, heads, dim_head).transpose(1, 2), (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
    return out


attention_xformers = attention_pytorch  # real: xformers' memory_efficient_attention; the same contract
attention_function = attention_pytorch
