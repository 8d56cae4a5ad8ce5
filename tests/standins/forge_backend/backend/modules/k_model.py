"""Stand-in of backend/modules/k_model.py (Forge dfdcbab6), KModel.apply_model: eps prediction turned into
the denoised x0 estimate (predictor.calculate_input / calculate_denoised for an EPS model)."""
from __future__ import annotations

import torch


class KModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.diffusion_model = model
        self.calls: list[dict] = []  # test helper: what each apply_model call received

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        self.calls.append({"batch": x.shape[0], "cond_or_uncond": list(transformer_options.get("cond_or_uncond", [])),
                           "attn1_keys": sorted(transformer_options.get("patches_replace", {}).get("attn1", {}))})
        sigma = t.reshape(-1, 1, 1, 1)
        xc = x / (sigma ** 2 + 1.0) ** 0.5
        eps = self.diffusion_model(xc, t, context=c_crossattn, control=control, transformer_options=transformer_options)
        return x - eps * sigma

    def memory_required(self, input_shape):
        return 0
