"""Stand-in of modules/processing.py: the StableDiffusionProcessing fields extensions use (sd_model,
extra_generation_params, comment(), is_hr_pass set by sample_hr_pass, refiner fields, cfg_scale, ...)."""
from __future__ import annotations

import json

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


def _quote(value) -> str:
    """modules/infotext_utils.py quote (v1.10.1; generation_parameters_copypaste.quote in v1.8.0)."""
    text = str(value)
    return text if not any(ch in text for ch in ",\n:") else json.dumps(text, ensure_ascii=False)


def create_infotext(p, index: int = 0) -> str:
    """modules/processing.py create_infotext, reduced to the generation-parameters line it builds from
    p.extra_generation_params: 'k: v' pairs joined by ', ', None values left out, values quoted."""
    params = {"Steps": p.steps, "CFG scale": p.cfg_scale, **p.extra_generation_params}
    return ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)


class Processed:
    """modules/processing.py Processed (A1111 v1.8.0 bef51aed .. v1.10.1 82a973c0, Forge dfdcbab6): it keeps
    p.extra_generation_params itself, and js() is the `info` string of /sdapi's txt2img/img2img responses
    (modules/api/api.py text2imgapi: `info=processed.js()`); only the fields an extension shapes are kept."""

    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="",
                 extra_images_list=None):
        self.images = images_list
        self.extra_generation_params = p.extra_generation_params
        self.infotexts = infotexts or [create_infotext(p, i) for i in range(len(images_list))]
        self.comments = "".join(f"{comment}\n" for comment in p.comments)

    def js(self) -> str:
        return json.dumps({"extra_generation_params": self.extra_generation_params, "infotexts": self.infotexts})
