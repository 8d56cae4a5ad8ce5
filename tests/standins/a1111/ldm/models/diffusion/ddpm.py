"""Stand-in of ldm/models/diffusion/ddpm.py: LatentDiffusion.apply_model and DiffusionWrapper.forward with
the real conditioning-key dispatch ('crossattn', 'hybrid' for inpainting models, 'crossattn-adm' for unCLIP),
plus the attributes A1111 reads from `shared.sd_model` (alphas_cumprod, cond_stage_key, is_sdxl/is_sd2,
cond_stage_model_empty_prompt; the latter set by modules/sd_models.py in the real host)."""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.diffusionmodules.openaimodel import UNetModel


class DiffusionWrapper(nn.Module):
    def __init__(self, diffusion_model, conditioning_key):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat: list = None, c_crossattn: list = None, c_adm=None):
        key = self.conditioning_key
        if key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))
        if key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=torch.cat(c_crossattn, 1))
        if key == "crossattn-adm":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1), y=c_adm)
        raise NotImplementedError(key)


class LatentDiffusion(nn.Module):
    def __init__(self, unet: UNetModel | None = None, conditioning_key="crossattn", *, seed=0, context_dim=24,
                 cond_stage_key="txt", sd2=False):
        super().__init__()
        torch.manual_seed(seed)
        in_channels = 9 if conditioning_key == "hybrid" else 4
        adm = 8 if conditioning_key == "crossattn-adm" else None
        unet = unet or UNetModel(in_channels=in_channels, context_dim=context_dim, adm_in_channels=adm)
        self.model = DiffusionWrapper(unet, conditioning_key)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float())
        self.cond_stage_key = cond_stage_key
        self.is_sdxl, self.is_sd2, self.is_sd1 = False, sd2, not sd2
        self.cond_stage_model_empty_prompt = torch.zeros(1, 3, context_dim)  # one "chunk" of 3 tokens here
        self.sd_checkpoint_info = None

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)
