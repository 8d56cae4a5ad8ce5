"""Stand-in of modules/models/sd3/sd3_model.py (A1111 v1.10): SD3Inferencer, what `shared.sd_model` is for SD3,
and SD3Denoiser, the k-diffusion wrapper CFGDenoiserKDiffusion.inner_model gets from `create_denoiser()`.

Plus the fields modules/sd_models.py sets on every loaded model (set_model_type: is_sd3 and the other flags;
load_model: cond_stage_model_empty_prompt = get_empty_cond(), the crossattn tensor of the empty prompt).
The text encoders and VAE are left out: tests pass conds {crossattn, vector} directly."""
from __future__ import annotations

import contextlib

import torch

import k_diffusion.external
from modules import shared
from modules.models.sd3.sd3_impls import BaseModel


class SD3Denoiser(k_diffusion.external.DiscreteSchedule):
    def __init__(self, inner_model, sigmas):
        super().__init__(sigmas, quantize=shared.opts.enable_quantization)
        self.inner_model = inner_model

    def forward(self, input, sigma, **kwargs):
        return self.inner_model.apply_model(input, sigma, **kwargs)


class SD3Inferencer(torch.nn.Module):
    def __init__(self, shift=3, *, seed=0, context_dim=24, adm_in_channels=12, depth=3, input_size=8,
                 qk_norm=None):
        super().__init__()
        torch.manual_seed(seed)
        self.shift = shift
        with torch.no_grad():
            self.model = BaseModel(shift=shift, input_size=input_size, depth=depth, context_dim=context_dim,
                                   adm_in_channels=adm_in_channels, qk_norm=qk_norm)
        self.alphas_cumprod = 1 / (self.model.model_sampling.sigmas ** 2 + 1)
        self.cond_stage_key = "txt"
        self.parameterization = "eps"
        self.model.conditioning_key = "crossattn"
        self.latent_channels = 16
        # modules/sd_models.py set_model_type and load_model
        self.is_sd3, self.is_sdxl, self.is_sd2, self.is_sd1, self.is_ssd = True, False, False, False, False
        self.cond_stage_model_empty_prompt = torch.zeros(1, 3, context_dim)
        self.sd_checkpoint_info = None

    def ema_scope(self):
        return contextlib.nullcontext()

    def apply_model(self, x, t, cond):
        return self.model(x, t, c_crossattn=cond["crossattn"], y=cond["vector"])

    def create_denoiser(self):
        return SD3Denoiser(self, self.model.model_sampling.sigmas)
