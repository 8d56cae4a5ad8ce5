"""Stand-in of sgm/models/diffusion.py DiffusionEngine as A1111 extends it (modules/sd_models_xl.py:
apply_model(x, t, cond) -> self.model(x, t, cond), model.conditioning_key = 'crossattn', cond_stage_key =
'txt', alphas_cumprod, is_sdxl). Conditioning is a dict {crossattn, vector} (+ c_concat from CFGDenoiser)."""
from __future__ import annotations

import torch
from torch import nn

from sgm.modules.diffusionmodules.openaimodel import UNetModel
from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper


class DiffusionEngine(nn.Module):
    def __init__(self, *, seed=0, context_dim=24, adm_in_channels=12, middle_depth=2):
        super().__init__()
        torch.manual_seed(seed)
        unet = UNetModel(context_dim=context_dim, adm_in_channels=adm_in_channels, middle_depth=middle_depth)
        self.model = OpenAIWrapper(unet)
        self.model.conditioning_key = "crossattn"
        self.conditioner = nn.Module()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float())
        self.cond_stage_key = "txt"
        self.is_sdxl, self.is_sd2, self.is_sd1 = True, False, False
        # modules/sd_models.py get_empty_cond: for SDXL the crossattn tensor of the empty prompt
        self.cond_stage_model_empty_prompt = torch.zeros(1, 3, context_dim)
        self.sd_checkpoint_info = None

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)
