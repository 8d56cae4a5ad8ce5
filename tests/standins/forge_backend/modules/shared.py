"""Stand-in of modules/shared.py + modules/shared_state.py (Forge dfdcbab6): the `state` fields ASAG reads."""
from __future__ import annotations

from types import SimpleNamespace

# modules/shared_state.py State: interrupted, skipped, sampling_step (set by Sampler.callback_state after
# each step), sampling_steps (set by Sampler.launch_sampling).
state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
sd_model = None
