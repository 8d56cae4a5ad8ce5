"""Helpers the adapter tests share: the batched/separate switch, and what ASAG's model calls carry."""
from __future__ import annotations

from typing import Any


def use_batch_mode(monkeypatch: Any, mode: str) -> None:
    """batched = the default; separate = forced with the documented switch (env ASAG_BATCH=0)."""
    if mode == "separate":
        monkeypatch.setenv("ASAG_BATCH", "0")
    else:
        monkeypatch.delenv("ASAG_BATCH", raising=False)


def record_marks(model: Any) -> list[tuple[int, bool]]:
    """Wrap a Forge KModel's apply_model: (rows, transformer_options["asag_perturbed"]) of every call."""
    seen: list[tuple[int, bool]] = []
    apply_model = model.apply_model

    def recording(x, t, transformer_options={}, **kwargs):
        seen.append((x.shape[0], transformer_options.get("asag_perturbed", False)))
        return apply_model(x, t, transformer_options=transformer_options, **kwargs)

    model.apply_model = recording
    return seen
