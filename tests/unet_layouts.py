"""Skeletons with the module names of the real SD UNets, for layer-selection tests.

Layouts from the model configs: SD1.x/SD2.x `UNetModel` (Stability-AI/stablediffusion,
ldm/modules/diffusionmodules/openaimodel.py; attention_resolutions 4,2,1, transformer_depth 1) and
SDXL (Stability-AI/generative-models, configs/inference/sd_xl_base.yaml: transformer_depth
[0, 2, 10], transformer_depth_middle 10). Only names matter here: attn1 is a placeholder module.
"""
from __future__ import annotations

from torch import nn

# block kind -> {block id: number of transformer blocks}
SD1_LAYOUT = {
    "input": {1: 1, 2: 1, 4: 1, 5: 1, 7: 1, 8: 1},
    "middle": {0: 1},
    "output": {i: 1 for i in range(3, 12)},
}
SDXL_LAYOUT = {
    "input": {4: 2, 5: 2, 7: 10, 8: 10},
    "middle": {0: 10},
    "output": {0: 10, 1: 10, 2: 10, 3: 2, 4: 2, 5: 2},
}


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = nn.Identity()
        self.attn2 = nn.Identity()


def _spatial(depth: int) -> nn.Module:
    spatial = nn.Module()
    spatial.transformer_blocks = nn.ModuleList(_Block() for _ in range(depth))
    return spatial


def skeleton(layout: dict[str, dict[int, int]]) -> nn.Module:
    """An nn.Module whose attn1 modules sit at the real paths (input_blocks.N.1.transformer_blocks.K.attn1)."""
    model = nn.Module()
    count = 12 if layout is SD1_LAYOUT else 9  # SDXL has three resolution levels, SD1.x four
    for kind in ("input", "output"):
        blocks = nn.ModuleList()
        for i in range(count):
            depth = layout[kind].get(i)
            blocks.append(nn.ModuleList([nn.Identity(), _spatial(depth)]) if depth else nn.ModuleList([nn.Identity()]))
        setattr(model, f"{kind}_blocks", blocks)
    model.middle_block = nn.ModuleList([nn.Identity(), _spatial(layout["middle"][0]), nn.Identity()])
    return model
