"""Stand-in of backend/sampling/sampling_function.py (Forge Neo, stored commit 000feeed): as the Forge dfdcbab6
stand-in (calc_cond_uncond_batch, sampling_function_inner without areas, masks and memory-driven splitting) with
Neo's differences: calc_cond_uncond_batch also puts `cond_mark` and `cond_indices` / `uncond_indices` into
`transformer_options`; the post-CFG args carry `cond_scale`; `sampling_function(self, denoiser_params, cond_scale,
cond_composition, extra_model_options=None)` merges `extra_model_options` into the patcher's model_options
(`utils.join_dicts`) and runs `model_options["conditioning_modifiers"]` before sampling_function_inner."""
from __future__ import annotations

import math

import torch

COND, UNCOND = 0, 1


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37

    to_run = [(c, COND) for c in cond] + ([(c, UNCOND) for c in uncond] if uncond is not None else [])
    if not to_run:
        return out_cond / out_count, out_uncond / out_uncond_count
    cond_or_uncond = [kind for _, kind in to_run]
    input_x = torch.cat([x_in] * len(to_run))
    context = torch.cat([c["model_conds"]["c_crossattn"] for c, _ in to_run])
    timestep_ = torch.cat([timestep] * len(to_run))

    transformer_options = {}
    if "transformer_options" in model_options:
        transformer_options = model_options["transformer_options"].copy()
    transformer_options["cond_or_uncond"] = cond_or_uncond[:]
    transformer_options["sigmas"] = timestep
    transformer_options["cond_mark"] = torch.tensor([kind for kind in cond_or_uncond for _ in range(len(timestep))]).to(timestep)
    rows = len(timestep)  # compute_cond_indices: the rows of each chunk, not the chunk numbers
    transformer_options["cond_indices"] = [i * rows + r for i, kind in enumerate(cond_or_uncond) if kind == COND
                                           for r in range(rows)]
    transformer_options["uncond_indices"] = [i * rows + r for i, kind in enumerate(cond_or_uncond)
                                             if kind == UNCOND for r in range(rows)]
    c = {"c_crossattn": context, "transformer_options": transformer_options}
    control = to_run[-1][0].get("control")  # the batched entries' ControlNet (can_concat_cond: same object)
    if control is not None:
        c["control"] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
        c["control_model"] = control

    if "model_function_wrapper" in model_options:
        output = model_options["model_function_wrapper"](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}).chunk(len(to_run))
    else:
        output = model.apply_model(input_x, timestep_, **c).chunk(len(to_run))

    for o, (entry, kind) in enumerate(to_run):
        mult = torch.ones_like(x_in) * entry.get("strength", 1.0)
        if kind == COND:
            out_cond += output[o] * mult
            out_count += mult
        else:
            out_uncond += output[o] * mult
            out_uncond_count += mult
    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):
    edit_strength = sum((item["strength"] if "strength" in item else 1) for item in cond)

    if math.isclose(cond_scale, 1.0) and model_options.get("disable_cfg1_optimization", False) == False:
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def compile_conditions(cond):
    return None if cond is None else [{"model_conds": {"c_crossattn": cond}}]


def sampling_function(self, denoiser_params, cond_scale, cond_composition, extra_model_options=None):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    x, timestep = denoiser_params.x, denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = []
    for text_cond, weight in zip(denoiser_params.text_cond, cond_composition):
        cond.append({"model_conds": {"c_crossattn": text_cond}, "strength": weight})
    model_options = {**unet_patcher.model_options, **(extra_model_options or {})}  # utils.join_dicts
    seed = 0
    if unet_patcher.controlnet_linked_list is not None:
        for h in cond + (uncond or []):
            h["control"] = unet_patcher.controlnet_linked_list
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed,
                                   return_full=True)
