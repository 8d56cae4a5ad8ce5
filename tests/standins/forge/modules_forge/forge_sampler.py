"""Stand-in of modules_forge/forge_sampler.py (Forge 33e381f1), forge_sample: reads the UNet patcher from
`self.inner_model.inner_model.forge_objects.unet` at every step and calls sampling_function with its
model_options; `controlnet_linked_list` goes into every entry as `control`. Conds: a1111 tensors ->
[{"model_conds": {"c_crossattn": t}, "strength": w}]."""
from __future__ import annotations

from ldm_patched.modules.samplers import sampling_function


def cond_from_a1111_to_patched_ldm(cond):
    return [{"cross_attn": cond, "model_conds": {"c_crossattn": cond}}]


def forge_sample(self, denoiser_params, cond_scale, cond_composition):
    unet = self.inner_model.inner_model.forge_objects.unet
    uncond = cond_from_a1111_to_patched_ldm(denoiser_params.text_uncond)
    cond = []
    for text_cond, weight in zip(denoiser_params.text_cond, cond_composition):
        entry = cond_from_a1111_to_patched_ldm(text_cond)[0]
        entry["strength"] = weight
        cond.append(entry)
    if unet.controlnet_linked_list is not None:  # Forge's ControlNet travels with every cond entry
        for h in cond + uncond:
            h["control"] = unet.controlnet_linked_list
    return sampling_function(unet.model, denoiser_params.x, denoiser_params.sigma, uncond, cond, cond_scale,
                             unet.model_options, seed=0)
