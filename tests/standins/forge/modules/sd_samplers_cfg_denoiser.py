"""Stand-in of modules/sd_samplers_cfg_denoiser.py (Forge 33e381f1), CFGDenoiser: `step` (0-based, incremented
after each call), `total_steps` (set by Sampler.launch_sampling), forward -> forge_sampler.forge_sample.
AND-prompt reconstruction is replaced by passing the cond tensors and their weights directly."""
from __future__ import annotations

from types import SimpleNamespace

from modules_forge import forge_sampler


class CFGDenoiser:
    def __init__(self, sd_model):
        self.inner_model = SimpleNamespace(inner_model=sd_model)  # model_wrap.inner_model is sd_model
        self.step = 0
        self.total_steps = None
        self.mask = None

    def forward(self, x, sigma, uncond, cond, cond_scale, weights=None):
        weights = weights or [1.0] * len(cond)
        params = SimpleNamespace(x=x, sigma=sigma, text_cond=cond, text_uncond=uncond, image_cond=None)
        denoised = forge_sampler.forge_sample(self, denoiser_params=params, cond_scale=cond_scale,
                                              cond_composition=weights)
        self.step += 1
        return denoised


class Sampler:
    """modules/sd_samplers_common.py Sampler: owns model_wrap_cfg; launch_sampling sets total_steps."""

    def __init__(self, sd_model):
        self.model_wrap_cfg = CFGDenoiser(sd_model)

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps
        self.model_wrap_cfg.step = 0
        return func()
