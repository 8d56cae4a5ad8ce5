"""Stand-in of modules/models/sd3/sd3_impls.py (A1111 v1.10): ModelSamplingDiscreteFlow and BaseModel.

BaseModel.apply_model(x, sigma, c_crossattn, y) -> denoised x0 (flow matching: x - model_output * sigma), as
the real one. The real BaseModel reads its MMDiT config from the checkpoint's state dict; this one takes it."""
from __future__ import annotations

import torch

from modules.models.sd3.mmdit import MMDiT


class ModelSamplingDiscreteFlow(torch.nn.Module):
    def __init__(self, shift=1.0):
        super().__init__()
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, 1001, 1)))

    def timestep(self, sigma):
        return sigma * 1000

    def sigma(self, timestep):
        timestep = timestep / 1000.0
        if self.shift == 1.0:
            return timestep
        return self.shift * timestep / (1 + (self.shift - 1) * timestep)

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma


class BaseModel(torch.nn.Module):
    def __init__(self, shift=1.0, dtype=torch.float32, **mmdit_config):
        super().__init__()
        self.diffusion_model = MMDiT(dtype=dtype, **mmdit_config)
        self.model_sampling = ModelSamplingDiscreteFlow(shift=shift)
        self.depth = len(self.diffusion_model.joint_blocks)

    def apply_model(self, x, sigma, c_crossattn=None, y=None):
        dtype = self.get_dtype()
        timestep = self.model_sampling.timestep(sigma).float()
        model_output = self.diffusion_model(x.to(dtype), timestep, context=c_crossattn.to(dtype), y=y.to(dtype)).float()
        return self.model_sampling.calculate_denoised(sigma, model_output, x)

    def forward(self, *args, **kwargs):
        return self.apply_model(*args, **kwargs)

    def get_dtype(self):
        return self.diffusion_model.dtype or torch.float32
