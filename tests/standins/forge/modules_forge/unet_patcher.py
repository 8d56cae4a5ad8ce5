"""Stand-in of modules_forge/unet_patcher.py (Forge 33e381f1): UnetPatcher.clone and
copy_and_update_model_options, as in the real file; memory/ControlNet helpers left out."""
from __future__ import annotations

import copy

from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device,
                        weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.model_keys = self.model_keys
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n


def copy_and_update_model_options(model_options, patch, name, block_name, number, transformer_index=None):
    model_options = model_options.copy()
    transformer_options = model_options.get("transformer_options", {}).copy()
    patches_replace = transformer_options.get("patches_replace", {}).copy()
    name_patches = patches_replace.get(name, {}).copy()
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    name_patches[block] = patch
    patches_replace[name] = name_patches
    transformer_options["patches_replace"] = patches_replace
    model_options["transformer_options"] = transformer_options
    return model_options
