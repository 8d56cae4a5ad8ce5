"""Stand-in of sgm/modules/attention.py (Stability-AI/generative-models): CrossAttention whose forward takes
(x, context, mask, additional_tokens, n_times_crossframe_attn_in_self), BasicTransformerBlock passing those
to attn1, SpatialTransformer. A1111 patches `sgm.modules.attention.CrossAttention.forward` exactly like the
ldm one (modules/sd_hijack_optimizations.py)."""
from __future__ import annotations

from ldm.modules import attention as _ldm  # stand-in shortcut: same maths, sgm signatures below


class CrossAttention(_ldm.CrossAttention):
    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        return _ldm.softmax_attention_forward(self, x, context, mask)


class BasicTransformerBlock(_ldm.BasicTransformerBlock):
    attention_class = CrossAttention

    def _forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None,
                       additional_tokens=additional_tokens,
                       n_times_crossframe_attn_in_self=n_times_crossframe_attn_in_self) + x
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(_ldm.SpatialTransformer):
    block_class = BasicTransformerBlock
