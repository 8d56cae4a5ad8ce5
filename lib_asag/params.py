"""Every user setting of ASAG, its validation, defaults, and its text forms (API args, infotext).

Validation returns messages instead of raising: a bad value must never break a generation, it only
turns ASAG off for that generation with a clear line in the console and the UI.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

from .guidance import ADAPTIVE_MODES
from .layers import (PRESETS, LayerRef, LayerSpecError, check_spec, format_layers, is_preset, preset_spec,
                     resolve)
from .perturb.families import FAMILIES as _FAMILY_TABLE

log = logging.getLogger("asag")

FAMILIES: tuple[str, ...] = tuple(_FAMILY_TABLE)  # "sd1", "sd2", "sdxl", "sd3", "flux", "chroma", ... (the table)
HIRES_MODES = ("same", "off")
SCOPES = ("image", "joint")
"""Diffusion transformers: Sinkhorn on the image x image block of a chosen block's joint attention only, or on
the whole joint attention (text and image rows); docs/method.md 2b, chosen by docs/experiment.md (DiT)."""
LIMITS = {"scale": (0.0, 30.0), "iterations": (0, 50), "epsilon": (1e-3, 1e3), "start": (0.0, 1.0),
          "end": (0.0, 1.0), "rescale": (0.0, 1.0)}


@dataclass(frozen=True)
class ASAGParams:
    """User settings; field order is the positional API order (ARG_ORDER)."""

    enabled: bool = False
    scale: float = 3.0          # s in D_c + s (D_c - D_asag)
    layers: str = ""            # layer spec or preset name; "" = the model family's default preset
    iterations: int = 3         # Sinkhorn iterations T (row+column normalisations), then a row step
    epsilon: float = 1.0        # temperature of the adversarial kernel exp(-S / epsilon)
    start: float = 0.0          # active from this fraction of the steps...
    end: float = 1.0            # ...up to (excluding) this fraction
    adaptive: str = "constant"  # scale schedule over the active range: constant, linear, cosine
    rescale: float = 0.0        # std-rescale blend (0 = off) applied after adding the ASAG term
    hires: str = "same"         # hires-fix second pass: "same" settings, or "off"
    scope: str = "image"        # DiTs: "image" (image x image block of the joint attention) or "joint" (all of it)

    def validate(self) -> list[str]:
        """Human-readable problems with these values; empty when they are usable."""
        errors = []
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                errors.append(f"ASAG's {name} must be a finite number, got {value!r}")
            elif not lo <= value <= hi:
                errors.append(f"ASAG's {name} must be between {lo:g} and {hi:g}, got {value:g}")
        if isinstance(self.iterations, float) and not self.iterations.is_integer():
            errors.append(f"ASAG's iterations must be a whole number, got {self.iterations!r}")
        if not errors and self.start >= self.end:
            errors.append(f"ASAG's start ({self.start:g}) must be before its end ({self.end:g})")
        if self.adaptive not in ADAPTIVE_MODES:
            errors.append(f"ASAG's adaptive must be one of {', '.join(ADAPTIVE_MODES)}, got {self.adaptive!r}")
        if self.hires not in HIRES_MODES:
            errors.append(f"ASAG's hires must be one of {', '.join(HIRES_MODES)}, got {self.hires!r}")
        if self.scope not in SCOPES:
            errors.append(f"ASAG's scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not isinstance(self.layers, str):
            errors.append(f"ASAG's layers must be text, got {self.layers!r}")
        else:
            errors.extend(check_spec(self.layers) if not is_preset(self.layers) else [])
        return errors

    def layer_spec(self, family: str) -> str:
        """The layer spec to resolve against the model: presets expanded for `family`."""
        return preset_spec(family, self.layers)

    def for_family(self, family: str) -> "ASAGParams":
        """These settings on a model of `family`: start 0 with end 1 (the defaults, what the UI shows before a
        model is known and what the API fills in) mean the family's own window (0.01-0.15 for diffusion
        transformers, the whole range for UNets); any other window is the user's. Unknown families: as is."""
        row = _FAMILY_TABLE.get(family)
        if row is None or (self.start, self.end) != (DEFAULTS.start, DEFAULTS.end):
            return self
        return replace(self, start=row.window[0], end=row.window[1])


ARG_ORDER: tuple[str, ...] = tuple(f.name for f in fields(ASAGParams))
DEFAULTS = ASAGParams()


def defaults_for(family: str) -> ASAGParams:
    """Defaults for a model family: its row's scale and active window (lib_asag/perturb/families.py); the layer
    preset is resolved per family from `layers` = "" (the family's first preset)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; ASAG supports {', '.join(FAMILIES)}")
    row = _FAMILY_TABLE[family]
    return replace(DEFAULTS, scale=row.scale, start=row.window[0], end=row.window[1])


DEFAULT_WINDOWS: frozenset[tuple[float, float]] = frozenset(row.window for row in _FAMILY_TABLE.values())
"""Every family's default (start, end): a UI showing one of them has not been changed by the user."""


_TRUE = {"true", "1", "yes", "on", "enabled", "enable"}
_FALSE = {"false", "0", "no", "off", "disabled", "disable", ""}


def _coerce(name: str, value: Any) -> Any:
    """Convert API/infotext values to the field's type; raises ValueError with a clear message."""
    kind = type(getattr(DEFAULTS, name))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"ASAG's {name} must be true or false, got {value!r}")
    if kind is int:
        number = float(value) if not isinstance(value, bool) else math.nan
        if not number.is_integer():
            raise ValueError(f"ASAG's {name} must be a whole number, got {value!r}")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"ASAG's {name} must be a number, got {value!r}")
        return float(value)
    if value is None:
        return ""
    return str(value).strip()


def from_values(values: Mapping[str, Any]) -> tuple[ASAGParams | None, list[str]]:
    """Build validated params from field name -> value; missing fields take the defaults."""
    unknown = sorted(set(values) - set(ARG_ORDER))
    if unknown:
        return None, [f"unknown ASAG argument(s) {', '.join(map(repr, unknown))}; known: {', '.join(ARG_ORDER)}"]
    converted, errors = {}, []
    for name, value in values.items():
        try:
            converted[name] = _coerce(name, value)
        except (TypeError, ValueError) as e:
            errors.append(str(e) if "ASAG" in str(e) else f"ASAG's {name}: cannot use {value!r}")
    if errors:
        return None, errors
    params = replace(DEFAULTS, **converted)
    errors = params.validate()
    return (None, errors) if errors else (params, [])


def from_script_args(args: Sequence[Any] | Mapping[str, Any] | None) -> tuple[ASAGParams | None, list[str]]:
    """Params from the script's args as the WebUI or the API passes them.

    Accepts the full positional list (ARG_ORDER), a shorter prefix (`[true]`, `[true, 2.5]`; the rest
    defaults), a dict of named fields, or a list starting with such a dict. Returns (None, messages) when
    the args cannot be used; the caller then generates without ASAG."""
    if args is None:
        return None, []
    if isinstance(args, Mapping):
        return from_values(args)
    args = list(args)
    if args and isinstance(args[0], Mapping):
        # The API pads a short args list with the UI's defaults, so `[{...}]` arrives as
        # [dict, default, default, ...]: the dict is the whole argument.
        return from_values(args[0])
    if len(args) > len(ARG_ORDER):
        return None, [f"ASAG takes at most {len(ARG_ORDER)} args ({', '.join(ARG_ORDER)}), got {len(args)}"]
    return from_values(dict(zip(ARG_ORDER, args)))


INFOTEXT_KEYS: dict[str, str] = {name: f"ASAG {name}" for name in ARG_ORDER if name != "enabled"}
ERROR_KEY = "ASAG error"
"""Infotext key of why ASAG did not run (alone) or stopped early (with `ASAG scale`)."""
NOTE_KEY = "ASAG note"
"""Infotext key of what ASAG was asked for and skipped (layers the model lacks); informational only,
paste-back ignores it."""


def to_infotext(params: ASAGParams) -> dict[str, Any]:
    """Infotext entries: the scale always (it marks ASAG as on), other fields when not default."""
    out: dict[str, Any] = {INFOTEXT_KEYS["scale"]: params.scale}
    for name, key in INFOTEXT_KEYS.items():
        value = getattr(params, name)
        if name != "scale" and value != getattr(DEFAULTS, name):
            out[key] = value
    return out


def from_infotext(info: Mapping[str, Any]) -> dict[str, Any]:
    """Field values read back from parsed infotext (paste-back); unreadable values are skipped.

    `enabled` is True exactly when the infotext carries 'ASAG scale'."""
    values: dict[str, Any] = {"enabled": INFOTEXT_KEYS["scale"] in info}
    for name, key in INFOTEXT_KEYS.items():
        if key in info:
            try:
                values[name] = _coerce(name, info[key])
            except (TypeError, ValueError):
                continue
    return values


def as_dict(params: ASAGParams) -> dict[str, Any]:
    return asdict(params)


# ---------------------------------------------------------------------------------------------------------
# Layers of one model, with what was skipped made visible

def _preset_origin(params: ASAGParams, family: str) -> str | None:
    """'the sd3 default joint.7-9' / "the flux preset 'double.7-9 + single.7-9'" when the layers come from
    a preset (chosen for the family's usual depth), else None."""
    name = params.layers.strip() if isinstance(params.layers, str) else ""
    if not name:
        return f"the {family} default {preset_spec(family, '')}"
    if name in PRESETS.get(family, {}):
        return f"the {family} preset {name!r}"
    return None


def resolve_and_note(p: Any, params: ASAGParams, family: str, available: Iterable[LayerRef]) -> list[LayerRef]:
    """The layers `params` name in this model, presets expanded for `family`.

    What the spec names and the model lacks (a range past its last block, UNet blocks without
    self-attention) is skipped visibly: `ASAG note` in p's infotext and a warning. A token that names
    nothing raises LayerSpecError listing what the model has (and, for a preset, that it was one)."""
    origin = _preset_origin(params, family)
    try:
        resolution = resolve(params.layer_spec(family), available)
    except LayerSpecError as e:
        if origin is None:
            raise
        raise LayerSpecError(f"{e} ({origin} is made for the family's usual depth; type layers this model "
                             "has, e.g. 'all')") from e
    if resolution.skipped:
        note = f"{'; '.join(resolution.skipped)} not in this model, skipped" + (f" (from {origin})" if origin else "")
        log.warning("ASAG: layers %s; perturbing %s.", note, format_layers(resolution.layers))
        add_note(p, note)
    return resolution.layers


def add_note(p: Any, note: str) -> None:
    """Append to `ASAG note` in p's infotext (what ran differently from what was asked, ASAG still on)."""
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        notes = [n for n in str(extra.get(NOTE_KEY) or "").split("; ") if n]
        extra[NOTE_KEY] = "; ".join(notes if note in notes else [*notes, note])
