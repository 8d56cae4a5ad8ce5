"""Stand-in of modules/processing.py (Forge dfdcbab6): the parts of a processing object and of the
sampling passes that the Forge adapter meets.

Real: StableDiffusionProcessing fields `sd_model`, `sampler`, `extra_generation_params`, `is_hr_pass`,
`comment()`; StableDiffusionProcessingTxt2Img.sample / sample_hr_pass and Img2Img.sample reassign
`self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()` and then call
`self.scripts.process_before_every_sampling(...)` before `self.sampler.sample(...)`.
"""
from __future__ import annotations

from typing import Any, Callable


class StableDiffusionProcessing:
    def __init__(self, sd_model: Any, sampler: Any = None) -> None:
        self.sd_model = sd_model
        self.sampler = sampler
        self.extra_generation_params: dict[str, Any] = {}
        self.is_hr_pass = False
        self.comments: dict[str, int] = {}

    def comment(self, text: str) -> None:
        self.comments[text] = 1


def run_pass(p: StableDiffusionProcessing, before_sampling: Callable[[StableDiffusionProcessing], None],
             sample: Callable[[], Any]) -> Any:
    """Test helper: one sampling pass as processing.py runs it (reset forge_objects, scripts hook, sample)."""
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    before_sampling(p)
    return sample()
