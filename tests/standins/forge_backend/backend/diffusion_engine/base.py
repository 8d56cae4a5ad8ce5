"""Stand-in of backend/diffusion_engine/base.py (Forge dfdcbab6): ForgeObjects with shallow_copy, and the
engine fields ASAG reads (forge_objects, forge_objects_original, forge_objects_after_applying_lora, is_sd1,
is_sd2, is_sdxl, is_sd3)."""
from __future__ import annotations

from types import SimpleNamespace

import torch


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


def tiny_sd_model(family: str = "sd1", seed: int = 0, diffusion_model=None):
    """Test helper: an engine as backend/loader.py leaves it, around a tiny random UNet, or a tiny random DiT
    ("flux", "chroma", "sd3"), or the given diffusion_model."""
    import importlib

    from backend.modules.k_model import KModel
    from backend.nn.unet import SD1_LAYOUT, SDXL_LAYOUT, IntegratedUNet2DConditionModel
    from backend.patcher.unet import UnetPatcher

    importlib.import_module("backend.nn.flux")  # every Forge has it (and tests look at its `attention`)
    torch.manual_seed(seed)
    dits = {"flux": ("backend.nn.flux", "IntegratedFluxTransformer2DModel"),
            "chroma": ("backend.nn.chroma", "IntegratedChromaTransformer2DModel"), "sd3": ("backend.nn.mmditx", "MMDiTX")}
    if diffusion_model is not None:
        pass
    elif family in dits:  # imported here only: a fork's stand-ins lack some of these files
        diffusion_model = getattr(importlib.import_module(dits[family][0]), dits[family][1])()
    else:
        diffusion_model = IntegratedUNet2DConditionModel(layout=SDXL_LAYOUT if family == "sdxl" else SD1_LAYOUT)
    for name, module in diffusion_model.named_modules():  # attention strong enough to matter in a tiny net
        if isinstance(module, torch.nn.Linear) and (".attn" in name or ".proj_" in name or "qkv" in name
                                                    or "linear1" in name):
            torch.nn.init.normal_(module.weight, std=0.5)
    unet = UnetPatcher(KModel(diffusion_model).eval(), load_device="cpu", offload_device="cpu")
    objects = ForgeObjects(unet, None, None, None)
    return SimpleNamespace(forge_objects=objects, forge_objects_original=objects.shallow_copy(),
                           forge_objects_after_applying_lora=objects.shallow_copy(), is_sd1=family == "sd1",
                           is_sd2=family == "sd2", is_sdxl=family == "sdxl", is_sd3=family == "sd3")
