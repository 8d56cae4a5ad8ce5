"""Stand-in of modules/sd_samplers_cfg_denoiser.py, CFGDenoiser.forward (A1111 v1.8.0 bef51aed and v1.10).

Faithful in what an extension sees: the row layout [cond rows of image 0 (one per AND-prompt), ..., cond rows
of image B-1, B uncond rows], the order cfg_denoiser_callback -> skip_uncond trim -> padding -> model call(s)
-> fake uncond rows -> cfg_denoised_callback -> combine -> mask blend -> cfg_after_cfg_callback, and the
branches: one batched call, per-batch chunks when `batch_cond_uncond` is off, separate cond/uncond calls when
token lengths differ, skip_uncond (s_min_uncond on odd steps; v1.10 also `skip_early_cond`), edit models
(three-way batch), SDXL dict conds, 'crossattn-adm' (unCLIP). Written for the tests, not copied.
"""
from __future__ import annotations

import torch

from modules import prompt_parser, devices, sd_samplers_common
from modules.shared import opts, state
import modules.shared as shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.script_callbacks import CFGDenoisedParams, cfg_denoised_callback
from modules.script_callbacks import AfterCFGCallbackParams, cfg_after_cfg_callback


def catenate_conds(conds):
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def subscript_cond(cond, a, b):
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


def pad_cond(tensor, repeats, empty):
    """Append `repeats` copies of the empty prompt's tokens; mutates a dict cond in place, like the real one."""
    if not isinstance(tensor, dict):
        return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], axis=1)
    tensor["crossattn"] = pad_cond(tensor["crossattn"], repeats, empty)
    return tensor


def _tokens(cond):
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[1]


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out, cond_scale):
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def update_inner_model(self):
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def pad_cond_uncond(self, cond, uncond):
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (_tokens(cond) - _tokens(uncond)) // _tokens(empty)
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond, uncond):
        """Only uncond changes: repeat its last token or truncate it to cond's length."""
        is_dict = isinstance(uncond, dict)
        vec = uncond["crossattn"] if is_dict else uncond
        if vec.shape[1] < _tokens(cond):
            vec = torch.hstack([vec, vec[:, -1:].repeat([1, _tokens(cond) - vec.shape[1], 1])])
        else:
            vec = vec[:, :_tokens(cond)]
        self.padded_cond_uncond_v0 = True
        if is_dict:
            uncond["crossattn"] = vec
            return cond, uncond
        return cond, vec

    def apply_blend(self, latent):
        return latent * self.nmask + self.init_latent * self.mask

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        is_edit_model = shared.sd_model.cond_stage_key == "edit" and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        if self.mask_before_denoising and self.mask is not None:
            x = self.apply_blend(x)

        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]

        if shared.sd_model.model.conditioning_key == "crossattn-adm":
            image_uncond = torch.zeros_like(image_cond)
            make_condition_dict = lambda c_crossattn, c_adm: {"c_crossattn": [c_crossattn], "c_adm": c_adm}  # noqa: E731
        else:
            image_uncond = image_cond
            if isinstance(uncond, dict):
                make_condition_dict = lambda c_crossattn, c_concat: {**c_crossattn, "c_concat": [c_concat]}  # noqa: E731
            else:
                make_condition_dict = lambda c_crossattn, c_concat: {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}  # noqa: E731

        def per_cond(t):
            return torch.cat([torch.stack([t[i] for _ in range(n)]) for i, n in enumerate(repeats)])

        extra = 2 if is_edit_model else 1
        x_in = torch.cat([per_cond(x)] + [x] * extra)
        sigma_in = torch.cat([per_cond(sigma)] + [sigma] * extra)
        image_cond_in = torch.cat([per_cond(image_cond), image_uncond]
                                  + ([torch.zeros_like(self.init_latent)] if is_edit_model else []))

        denoiser_params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x_in = denoiser_params.x
        image_cond_in = denoiser_params.image_cond
        sigma_in = denoiser_params.sigma
        tensor = denoiser_params.text_cond
        uncond = denoiser_params.text_uncond
        skip_uncond = False

        # v1.10.0: "Skip Early CFG" (opts.skip_early_cond) or NGMS (s_min_uncond); v1.8 has the NGMS branch only.
        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond and not is_edit_model:
            skip_uncond = True
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]

        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if opts.pad_cond_uncond_v0 and _tokens(tensor) != _tokens(uncond):
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and _tokens(tensor) != _tokens(uncond):
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        if _tokens(tensor) == _tokens(uncond) or skip_uncond:
            if is_edit_model:
                cond_in = catenate_conds([tensor, uncond, uncond])
            elif skip_uncond:
                cond_in = tensor
            else:
                cond_in = catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(subscript_cond(cond_in, a, b), image_cond_in[a:b]))
        else:
            x_out = torch.zeros_like(x_in)
            n_cond = (tensor["crossattn"] if isinstance(tensor, dict) else tensor).shape[0]
            chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, n_cond, chunk):
                b = min(a + chunk, n_cond)
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(subscript_cond(tensor, a, b), image_cond_in[a:b]))
            if not skip_uncond:
                n_u = (uncond["crossattn"] if isinstance(uncond, dict) else uncond).shape[0]
                x_out[-n_u:] = self.inner_model(x_in[-n_u:], sigma_in[-n_u:], cond=make_condition_dict(uncond, image_cond_in[-n_u:]))

        denoised_image_indexes = [row[0][0] for row in conds_list]
        if skip_uncond:
            fake_uncond = torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])
            x_out = torch.cat([x_out, fake_uncond])

        denoised_params = CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model)
        cfg_denoised_callback(denoised_params)
        devices.test_for_nans(x_out, "unet")

        n_uncond_rows = batch_size
        uncond_rows = x_out[-n_uncond_rows:]
        if is_edit_model:
            denoised = self.combine_denoised_for_edit_model(x_out, cond_scale)
        elif skip_uncond:
            denoised = self.combine_denoised(x_out, conds_list, uncond_rows, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond_rows, cond_scale)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = self.apply_blend(denoised)

        self.sampler.last_latent = torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])
        sd_samplers_common.store_latent(self.sampler.last_latent)

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1
        return denoised
