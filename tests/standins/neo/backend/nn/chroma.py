"""Stand-in of backend/nn/chroma.py (Forge Neo, "https://github.com/Comfy-Org/ComfyUI/tree/v0.10.0/comfy/ldm/chroma";
not in the index of Haoming02/sd-webui-forge-classic: read in a copy of Neo's tree, docs/hosts-forks.md), reduced
to what ASAG depends on, with the real names and signatures:
- no blocks of its own: `from backend.nn.flux import DoubleStreamBlock, EmbedND, MLPEmbedder, ModulationOut,
  SingleStreamBlock, timestep_embedding` -- the model builds **nn/flux.py's** blocks with `modulation=False`, so
  they call flux's module-level `attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=...)`;
- `IntegratedChromaTransformer2DModel(**kwargs)` (a `ChromaParams` dataclass) with `img_in` (the patch embedder),
  `distilled_guidance_layer` (the Approximator: every block's modulations from the timestep), `double_blocks`,
  `single_blocks`; `forward_orig(img, img_ids, txt, txt_ids, timesteps, guidance=None, control=None,
  transformer_options={}, attn_mask=None)` calls `block(img=, txt=, vec=<the block's modulations>, pe=,
  attn_mask=, transformer_options=)` / `block(img, vec=, pe=, attn_mask=, transformer_options=)`, text first in
  the single blocks; `forward(x, timestep, context, guidance=None, control=None, transformer_options={},
  **kwargs)`.
Left out: the Approximator's MLP (one linear layer of the timestep), `get_modulations` slicing (one shift per
stream and block), `patches_replace`, ControlNet adds, `skip_mmdit` / `skip_dit`, the final modulation."""
from __future__ import annotations

import torch
from torch import nn

from backend.nn.flux import DoubleStreamBlock, EmbedND, SingleStreamBlock, patchify, unpatchify


class IntegratedChromaTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_in_dim=8, hidden_size=16, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(2, 2, 4), theta=10000, mlp_ratio=2.0, qkv_bias=True, **kwargs):
        super().__init__()
        self.hidden_size = hidden_size
        self.in_channels = self.out_channels = in_channels * 4
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size, bias=True)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.distilled_guidance_layer = nn.Linear(1, hidden_size * (2 * depth + depth_single_blocks))
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio,
                                                              qkv_bias=qkv_bias, modulation=False)
                                            for _ in range(depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio,
                                                              modulation=False) for _ in range(depth_single_blocks)])
        self.final_layer = nn.Linear(hidden_size, self.out_channels)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, guidance=None, control=None, transformer_options={},
                     attn_mask=None):
        img = self.img_in(img)
        mods = self.distilled_guidance_layer(timesteps[:, None].to(img.dtype) / 1000).unflatten(1, (-1, self.hidden_size))
        mods = mods.unsqueeze(2).unbind(1)  # one (B, 1, hidden) shift per stream and block
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        transformer_options["block_type"] = "double"
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            img, txt = block(img=img, txt=txt, vec=(mods[2 * i], mods[2 * i + 1]), pe=pe, attn_mask=attn_mask,
                             transformer_options=transformer_options)
        img = torch.cat((txt, img), 1)
        transformer_options["block_type"] = "single"
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            img = block(img, vec=mods[2 * len(self.double_blocks) + i], pe=pe, attn_mask=attn_mask,
                        transformer_options=transformer_options)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, guidance=None, control=None, transformer_options={}, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros((x.shape[0], context.shape[1], 3)).to(x)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, guidance, control, transformer_options,
                                attn_mask=kwargs.get("attention_mask", None))
        return unpatchify(out, x.shape)
