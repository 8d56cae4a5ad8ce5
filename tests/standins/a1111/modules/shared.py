"""Stand-in of modules/shared.py (+ shared_state / options): the opts, state and globals CFGDenoiser reads."""
from __future__ import annotations

from types import SimpleNamespace


class Options(SimpleNamespace):
    """The options CFGDenoiser.forward and the attention forwards read, with A1111's defaults."""

    def __init__(self):
        super().__init__(batch_cond_uncond=True, pad_cond_uncond=False, pad_cond_uncond_v0=False,
                         s_min_uncond_all=False, skip_early_cond=0.0, upcast_attn=False,
                         live_preview_content="Prompt", enable_quantization=False)


class State(SimpleNamespace):
    def __init__(self):
        super().__init__(interrupted=False, skipped=False, stopping_generation=False, sampling_step=0,
                         sampling_steps=0, job="")


opts = Options()
state = State()
sd_model = None
loaded_hypernetworks: list = []
cmd_opts = SimpleNamespace(lowvram=False, medvram=False, api=False, nowebui=False)


def reset() -> None:
    """Test helper (not in the real module): fresh opts/state, no model."""
    global opts, state, sd_model
    opts, state, sd_model = Options(), State(), None
    loaded_hypernetworks.clear()
