"""The WebUI face of ASAG: the accordion, infotext paste-back, XYZ plot axes, and script args -> params.

Shared by A1111 and Forge (same gradio 3.41/4 component API). gradio and WebUI modules are imported
inside functions only, so the core stays importable anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from . import guidance, layers, params as asag_params

XYZ_ATTR = "asag_xyz"
"""Attribute an XYZ-plot axis sets on the (copied) processing object: {field: value}."""

XYZ_AXES: tuple[tuple[str, str, type], ...] = (
    ("ASAG scale", "scale", float),
    ("ASAG layers", "layers", str),
    ("ASAG iterations", "iterations", int),
    ("ASAG epsilon", "epsilon", float),
)

PRESET_CHOICES: tuple[str, ...] = tuple(dict.fromkeys(name for presets in layers.PRESETS.values() for name in presets))


def default_layers_hint() -> str:
    """Placeholder of the Layers box: what empty means, per family, e.g. 'joint.7-9 (sd3)'."""
    by_preset: dict[str, list[str]] = {}
    for family in layers.PRESETS:
        by_preset.setdefault(layers.default_preset(family), []).append(family)
    return "empty = the model's default: " + "; ".join(f"{preset} ({', '.join(families)})"
                                                       for preset, families in by_preset.items())


@dataclass
class ScriptUI:
    """What Script.ui needs: components in ARG_ORDER, infotext paste-back pairs, paste field names."""

    components: list[Any]
    infotext_fields: list[tuple[Any, Callable[[Mapping[str, Any]], Any]]]
    paste_field_names: list[str]


def _accordion(gr: Any, value: bool, elem_id: str) -> Any:
    """A1111 1.7+ / Forge InputAccordion (checkbox in the header); gr.Accordion + Checkbox elsewhere."""
    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        InputAccordion = None
    if InputAccordion is not None:
        return InputAccordion(value, label="ASAG (Adversarial Sinkhorn Attention Guidance)", elem_id=elem_id)
    return _FallbackAccordion(gr, value, elem_id)


class _FallbackAccordion:
    """Accordion with an 'Enable' checkbox as its first row; behaves like InputAccordion in `with`."""

    def __init__(self, gr: Any, value: bool, elem_id: str):
        self.accordion = gr.Accordion(label="ASAG (Adversarial Sinkhorn Attention Guidance)", open=False,
                                      elem_id=elem_id)
        self._gr, self._value, self._elem_id = gr, value, elem_id
        self.checkbox = None

    def __enter__(self) -> Any:
        self.accordion.__enter__()
        self.checkbox = self._gr.Checkbox(value=self._value, label="Enable ASAG", elem_id=f"{self._elem_id}-checkbox")
        return self.checkbox

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)


def build(elem_id: Callable[[str], str], is_img2img: bool) -> ScriptUI:
    """Create the ASAG accordion inside the current gradio Blocks context."""
    import gradio as gr

    d = asag_params.DEFAULTS
    with _accordion(gr, d.enabled, elem_id("enabled")) as enabled:
        with gr.Row():
            scale = gr.Slider(label="Scale", minimum=0.0, maximum=10.0, step=0.1, value=d.scale,
                              elem_id=elem_id("scale"))
            rescale = gr.Slider(label="Rescale", minimum=0.0, maximum=1.0, step=0.05, value=d.rescale,
                                elem_id=elem_id("rescale"))
        with gr.Row():
            preset = gr.Dropdown(label="Layer preset", choices=list(PRESET_CHOICES), value=layers.DEFAULT_PRESET,
                                 elem_id=elem_id("preset"))
            layer_box = gr.Textbox(label="Layers", value=d.layers, placeholder=default_layers_hint(),
                                   elem_id=elem_id("layers"))
        with gr.Row():
            iterations = gr.Slider(label="Sinkhorn iterations", minimum=0, maximum=20, step=1, value=d.iterations,
                                   elem_id=elem_id("iterations"))
            epsilon = gr.Number(label="Epsilon (temperature)", value=d.epsilon, elem_id=elem_id("epsilon"))
        with gr.Row():
            start = gr.Slider(label="Start", minimum=0.0, maximum=1.0, step=0.01, value=d.start,
                              elem_id=elem_id("start"))
            end = gr.Slider(label="End", minimum=0.0, maximum=1.0, step=0.01, value=d.end, elem_id=elem_id("end"))
        with gr.Row():
            adaptive = gr.Radio(label="Scale schedule", choices=list(guidance.ADAPTIVE_MODES), value=d.adaptive,
                                elem_id=elem_id("adaptive"))
            hires = gr.Radio(label="Hires fix pass", choices=list(asag_params.HIRES_MODES), value=d.hires,
                             visible=not is_img2img, elem_id=elem_id("hires"))
    preset.change(fn=lambda name: name, inputs=[preset], outputs=[layer_box])

    by_name = {"enabled": enabled, "scale": scale, "layers": layer_box, "iterations": iterations,
               "epsilon": epsilon, "start": start, "end": end, "adaptive": adaptive, "rescale": rescale,
               "hires": hires}
    components = [by_name[name] for name in asag_params.ARG_ORDER]
    fields = [(by_name[name], _paste(name)) for name in asag_params.ARG_ORDER]
    return ScriptUI(components, fields, list(asag_params.INFOTEXT_KEYS.values()))


def _paste(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """Paste-back for one field: ASAG off when the infotext has no ASAG; defaults for omitted fields."""

    def value(info: Mapping[str, Any]) -> Any:
        values = asag_params.from_infotext(info)
        if name == "enabled":
            return values["enabled"]
        if not values["enabled"]:
            return None  # the WebUI leaves the component unchanged
        return values.get(name, getattr(asag_params.DEFAULTS, name))

    return value


# ---------------------------------------------------------------------------------------------------------
# Script args -> params

def _explicitly_off(args: Sequence[Any] | Mapping[str, Any]) -> bool:
    first = args if isinstance(args, Mapping) else (args[0] if len(args) else None)
    if isinstance(first, Mapping):
        return first.get("enabled", False) in (False, 0, "false", "False", "off", "")
    return first in (False, 0, None)


def params_from_script(p: Any, args: Sequence[Any]) -> tuple[asag_params.ASAGParams | None, list[str]]:
    """Params for this generation from the script args and any XYZ-plot override on `p`.

    The API fills args the request leaves out with the UI defaults, so `{"args": [{...}]}` arrives as
    [dict, default, default, ...]: a leading dict is the whole argument. XYZ overrides switch ASAG on."""
    args = list(args)
    params, messages = asag_params.from_script_args(args)
    overrides = getattr(p, XYZ_ATTR, None) or {}
    if not overrides:
        if params is None and _explicitly_off(args):
            return None, []
        return params, messages
    base = asag_params.as_dict(params) if params is not None else {}
    return asag_params.from_values({**base, **overrides, "enabled": True})


# ---------------------------------------------------------------------------------------------------------
# XYZ plot

def find_xyz_module(scripts_data: Sequence[Any]) -> Any | None:
    """The loaded scripts/xyz_grid.py module (A1111 names script modules after their file)."""
    for data in scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _xyz_apply(name: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, values: Any) -> None:
        # A new dict: XYZ cells are shallow copies of one p and must not share it.
        setattr(p, XYZ_ATTR, {**(getattr(p, XYZ_ATTR, None) or {}), name: value})

    return apply


def add_xyz_axes(scripts_data: Sequence[Any]) -> bool:
    """Append the ASAG axes to the XYZ plot once; False when xyz_grid is not loaded."""
    xyz = find_xyz_module(scripts_data)
    if xyz is None:
        return False
    present = {option.label for option in xyz.axis_options}
    for label, name, kind in XYZ_AXES:
        if label not in present:
            xyz.axis_options.append(xyz.AxisOption(label, kind, _xyz_apply(name)))
    return True
