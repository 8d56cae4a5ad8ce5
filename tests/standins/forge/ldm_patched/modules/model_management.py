"""Stand-in of ldm_patched/modules/model_management.py (Forge 33e381f1): get_free_memory, which
calc_cond_uncond_batch sizes its batches with (real: free VRAM + torch cache on CUDA, psutil on CPU)."""
from __future__ import annotations

FREE_MEMORY = 1 << 40  # test helper: what get_free_memory reports


def get_free_memory(dev=None, torch_free_too=False):
    return (FREE_MEMORY, FREE_MEMORY) if torch_free_too else FREE_MEMORY
