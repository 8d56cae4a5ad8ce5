"""Stand-in of modules/sd_samplers_common.py: InterruptedException, apply_refiner (no refiner unless a test
sets `refiner_hook`), store_latent."""
from __future__ import annotations


class InterruptedException(BaseException):
    pass


refiner_hook = None
"""Test hook (not in the real module): callable(cfg_denoiser) -> bool standing in for the model switch."""


def apply_refiner(cfg_denoiser, sigma=None) -> bool:
    # Real v1.8: apply_refiner(cfg_denoiser); v1.10: apply_refiner(cfg_denoiser, sigma). On a switch it loads
    # the refiner into shared.sd_model, calls p.setup_conds() and cfg_denoiser.update_inner_model().
    return bool(refiner_hook and refiner_hook(cfg_denoiser))


def store_latent(decoded) -> None:
    pass
