"""Caches that skip model calls: ASAG's perturbed call must run in full, never be served from a cache.

- ersatzForge fca12a2 `extensions-builtin/ersatz_1stblocktea/scripts/blockcache.py` (First Block Cache /
  TeaCache): `process` replaces *class* methods -- `MiniTrainDIT.forward`, `MMDiTX.forward`,
  `IntegratedFluxTransformer2DModel.inner_forward`, `IntegratedChromaTransformer2DModel.inner_forward`,
  `IntegratedUNet2DConditionModel.forward` -- by `patched_*` functions whose module holds the `BlockCache` class
  with the originals as its attributes (`original_forward_cosmos`, ...); a call at the sigma of the previous one
  takes the next cache slot, and once the first block barely changed it returns that slot's residual from an
  earlier step instead of running the other blocks. There is no per-call switch, so for ASAG's call only the
  class's original method is put back (`uncached`) and the cache's function is restored right after.
- Forge Neo `extensions-builtin/sd_forge_fbcache` (9fee4e75): sets `transformer_options["fbcache"]` on the
  patcher; ASAG's call goes without that key (`without_cache_options`).
While either is on, the perturbed rows are not batched into the host's call: the cache would serve them with
the rest of the batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

NEO_KEY = "fbcache"
_METHODS = ("forward", "inner_forward")


def _block_cache_patches(diffusion_model: Any) -> list[tuple[type, str, Callable, Callable | None]]:
    """(class, method, the cache's function, the original or None) for each method the cache replaced."""
    found = []
    for cls in type(diffusion_model).__mro__:
        for name in _METHODS:
            fn = cls.__dict__.get(name)
            cache = getattr(fn, "__globals__", {}).get("BlockCache") if callable(fn) else None
            if cache is None or not fn.__name__.startswith("patched_"):
                continue
            qualname = f"{cls.__name__}.{name}"
            originals = [v for v in vars(cache).values() if getattr(v, "__qualname__", None) == qualname]
            found.append((cls, name, fn, originals[0] if len(originals) == 1 else None))
    return found


def active(diffusion_model: Any, model_options: dict) -> str | None:
    """Which cache would see ASAG's calls to this model, or None."""
    if _block_cache_patches(diffusion_model):
        return "ersatzForge's First Block Cache / TeaCache"
    if NEO_KEY in model_options.get("transformer_options", {}):
        return "Forge Neo's First Block Cache"
    return None


def refusal(diffusion_model: Any) -> str | None:
    """Why ASAG cannot run its call uncached, or None."""
    lost = [f"{cls.__name__}.{name}" for cls, name, _, original in _block_cache_patches(diffusion_model)
            if original is None]
    if lost:
        return (f"ersatzForge's First Block Cache replaced {', '.join(lost)} and ASAG cannot find the original to "
                "run its perturbed pass uncached: turn the cache off to use ASAG. Generating without ASAG.")
    return None


def without_cache_options(model_options: dict) -> dict:
    """A copy of model_options whose transformer_options carry no cache configuration."""
    options = dict(model_options)
    transformer_options = options.get("transformer_options", {})
    if NEO_KEY in transformer_options:
        options["transformer_options"] = {k: v for k, v in transformer_options.items() if k != NEO_KEY}
    return options


@contextmanager
def uncached(diffusion_model: Any) -> Iterator[None]:
    """Inside the `with`: this model's class runs its original methods, not a cache's; restored on every exit."""
    patches = [(cls, name, fn, original) for cls, name, fn, original in _block_cache_patches(diffusion_model)
               if original is not None]
    try:
        for cls, name, _, original in patches:
            setattr(cls, name, original)
        yield
    finally:
        for cls, name, fn, original in patches:
            if cls.__dict__.get(name) is original:
                setattr(cls, name, fn)
