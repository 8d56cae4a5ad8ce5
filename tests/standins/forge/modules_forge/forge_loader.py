"""Stand-in of modules_forge/forge_loader.py (Forge 33e381f1): ForgeSD (forge_objects) with shallow_copy, and
the three references load_model_for_a1111 keeps (forge_objects, forge_objects_original,
forge_objects_after_applying_lora)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ldm_patched.ldm.modules.diffusionmodules.openaimodel import SD1_LAYOUT, SDXL_LAYOUT, UNetModel
from ldm_patched.modules.model_base import BaseModel
from modules_forge.unet_patcher import UnetPatcher


class ForgeSD:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeSD(self.unet, self.clip, self.vae, self.clipvision)


def tiny_sd_model(family: str = "sd1", seed: int = 0, diffusion_model: torch.nn.Module | None = None):
    """Test helper: an sd_model as load_model_for_a1111 leaves it, around a tiny random UNet (or the given model)."""
    torch.manual_seed(seed)
    if diffusion_model is None:
        diffusion_model = UNetModel(layout=SDXL_LAYOUT if family == "sdxl" else SD1_LAYOUT)
    for name, module in diffusion_model.named_modules():  # attention strong enough to matter in a tiny net
        if isinstance(module, torch.nn.Linear) and (".attn" in name or ".proj_" in name):
            torch.nn.init.normal_(module.weight, std=0.5)
    unet = UnetPatcher(BaseModel(diffusion_model).eval(), load_device="cpu", offload_device="cpu")
    forge_objects = ForgeSD(unet, None, None, None)
    return SimpleNamespace(forge_objects=forge_objects, forge_objects_original=forge_objects.shallow_copy(),
                           forge_objects_after_applying_lora=forge_objects.shallow_copy(),
                           is_sdxl=family == "sdxl", is_sd2=family == "sd2")
