"""Stand-in of modules/processing.py: the StableDiffusionProcessing fields extensions use (sd_model,
extra_generation_params, comment(), is_hr_pass set by sample_hr_pass, refiner fields, cfg_scale, ...)."""
from __future__ import annotations

from modules import shared


class StableDiffusionProcessing:
    def __init__(self, *, sd_model=None, batch_size=1, n_iter=1, steps=4, cfg_scale=7.0, s_min_uncond=0.0,
                 enable_hr=False, is_api=False):
        self.sd_model = sd_model if sd_model is not None else shared.sd_model
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.s_min_uncond = s_min_uncond
        self.enable_hr = enable_hr
        self.is_hr_pass = False
        self.is_api = is_api
        self.extra_generation_params: dict = {}
        self.comments: dict = {}
        self.scripts = None
        self.script_args = ()
        self.refiner_checkpoint_info = None
        self.refiner_switch_at = None
        self.iteration = 0
        self.image_cfg_scale = None

    def comment(self, text):
        self.comments[text] = 1


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, *, init_latent=None, mask=None, **kwargs):
        super().__init__(**kwargs)
        self.init_latent = init_latent
        self.mask = mask
        self.nmask = None if mask is None else 1.0 - mask
