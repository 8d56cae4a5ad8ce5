"""Stand-in of modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion.inner_model lazily wraps
shared.sd_model in its own `create_denoiser()` if it has one (SD3) or else k-diffusion's CompVisDenoiser
(model_wrap), as the real property does; plus a tiny Euler loop standing in for KDiffusionSampler
(sampler_extra_args, launch_sampling's InterruptedException catch)."""
from __future__ import annotations

import torch

import k_diffusion.external
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser_constructor = getattr(shared.sd_model, "create_denoiser", None)
            if denoiser_constructor is not None:
                self.model_wrap = denoiser_constructor()
            else:
                self.model_wrap = k_diffusion.external.CompVisDenoiser(shared.sd_model,
                                                                       quantize=shared.opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler:
    """Euler over `sigmas`; total_steps = number of denoiser calls, as Sampler.launch_sampling sets it."""

    def __init__(self, p):
        self.p = p
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.init_latent = getattr(p, "init_latent", None)
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.sampler_extra_args = {}
        self.last_latent = None

    def sample(self, x, sigmas, cond, uncond, image_cond, cond_scale, s_min_uncond=0.0):
        self.sampler_extra_args = {"cond": cond, "uncond": uncond, "image_cond": image_cond,
                                   "cond_scale": cond_scale, "s_min_uncond": s_min_uncond}
        wrap = self.model_wrap_cfg
        wrap.step, wrap.steps, wrap.total_steps = 0, len(sigmas) - 1, len(sigmas) - 1
        shared.state.sampling_steps, shared.state.sampling_step = len(sigmas) - 1, 0
        try:
            for i in range(len(sigmas) - 1):
                s = sigmas[i] * torch.ones(x.shape[0])
                denoised = wrap(x, s, **self.sampler_extra_args)
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
                shared.state.sampling_step = i + 1
            return x
        except sd_samplers_common.InterruptedException:
            return self.last_latent
