"""Stand-in of ldm_patched/modules/samplers.py (Forge 33e381f1): calc_cond_uncond_batch and sampling_function.

Conds are lists of dicts as modules_forge/forge_sampler.py builds them ({"model_conds": {"c_crossattn": ...},
"strength": w}); areas, masks, gligen and memory-driven splitting are left out, so every entry runs in one
batch. Row layout, transformer_options (`cond_or_uncond`, `sigmas`), `c["control"]` from the entries'
ControlNet, model_function_wrapper, the strength-weighted average, the cfg1 optimisation and the post-CFG call
with its `args` keys are as in the real functions."""
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


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
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
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)

    return cfg_result
