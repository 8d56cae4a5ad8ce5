"""Stand-in of sgm/modules/diffusionmodules/wrappers.py: OpenAIWrapper.forward(x, t, c) reads c["crossattn"],
c["vector"] and an optional c["concat"]."""
from __future__ import annotations

import torch
from torch import nn


class OpenAIWrapper(nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, c, **kwargs):
        x = torch.cat((x, c.get("concat", torch.Tensor([]).type_as(x))), dim=1)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)
