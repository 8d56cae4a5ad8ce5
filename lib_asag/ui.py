"""The WebUI face of ASAG: the accordion, infotext paste-back, XYZ plot axes, and script args -> params.

Shared by A1111 and Forge (same gradio 3.41/4 component API). gradio and WebUI modules are imported
inside functions only, so the core stays importable anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from . import guidance, layers, params as asag_params
from .perturb import families

XYZ_ATTR = "asag_xyz"
"""Attribute an XYZ-plot axis sets on the (copied) processing object: {field: value}."""

XYZ_AXES: tuple[tuple[str, str, type], ...] = (
    ("ASAG scale", "scale", float),
    ("ASAG layers", "layers", str),
    ("ASAG iterations", "iterations", int),
    ("ASAG epsilon", "epsilon", float),
    ("ASAG scope", "scope", str),
)

PRESET_CHOICES: tuple[str, ...] = tuple(dict.fromkeys(name for presets in layers.PRESETS.values() for name in presets))
"""Every family's preset names: what the dropdown accepts (gradio 4 checks a value against the choices the
component was built with), and what it offers while the loaded model's family is unknown."""

REFRESH_SYMBOL = "\U0001f504"  # the WebUIs' refresh button (modules/ui_common.py refresh_symbol)


def presets_for(family: str | None) -> list[str]:
    """The preset names offered for a model family, every family's when it is unknown."""
    return list(layers.PRESETS[family]) if family in layers.PRESETS else list(PRESET_CHOICES)


def _diffusion_model(sd_model: Any) -> Any | None:
    """The UNet/DiT of a loaded model: Forge's `forge_objects.unet.model`, A1111's `model`; None when there
    is none (A1111 before its first load, Forge's FakeInitialModel)."""
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    holder = getattr(patcher, "model", None) if patcher is not None else getattr(sd_model, "model", None)
    model = getattr(holder, "diffusion_model", None)
    return model if callable(getattr(model, "named_modules", None)) else None


def loaded_family(sd_model: Any) -> str | None:
    """The preset family of the loaded model (as the adapters resolve it, layers.model_family), None when no model
    is loaded."""
    model = _diffusion_model(sd_model)
    available = layers.find_self_attention(model) if model is not None else {}
    return layers.model_family(sd_model, available, model) if available else None


def _family_now(loaded_model: Callable[[], Any]) -> str | None:
    """loaded_family of what `loaded_model()` returns; None if that fails (a model still loading in the
    host's startup thread must not break the UI)."""
    try:
        return loaded_family(loaded_model())
    except Exception:
        return None


def refreshed_presets(loaded_model: Callable[[], Any]) -> Callable[[str | None], dict]:
    """Event handler: the dropdown's choices for the loaded model's family. The selection is kept when the
    family offers it, else cleared; the Layers box is never touched (see `_fill_layers`)."""

    def refresh(current: str | None) -> dict:
        import gradio as gr
        choices = presets_for(_family_now(loaded_model))
        return gr.update(choices=choices, value=current if current in choices else None)

    return refresh


def refreshed_window(loaded_model: Callable[[], Any]) -> Callable[[float, float], tuple[dict, dict]]:
    """Event handler: Start/End show the loaded model family's default window (0.01-0.15 for diffusion
    transformers) while they hold some family's default, i.e. the user has not set a window of their own."""

    def refresh(start: float, end: float) -> tuple[dict, dict]:
        import gradio as gr
        row = families.FAMILIES.get(_family_now(loaded_model) or "")
        if row is None or (start, end) not in asag_params.DEFAULT_WINDOWS:
            return gr.update(), gr.update()
        return gr.update(value=row.window[0]), gr.update(value=row.window[1])

    return refresh


def _fill_layers(name: str | None, current: str) -> str:
    """Preset dropdown -> Layers box; a cleared selection (a refresh) leaves what the user typed."""
    return name or current


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


def _refresh_button(gr: Any, elem_id: str) -> Any:
    """The WebUIs' small refresh button (modules/ui_components.py ToolButton, A1111 1.8+ and Forge)."""
    try:
        from modules.ui_components import ToolButton
    except ImportError:
        return gr.Button(value=REFRESH_SYMBOL, elem_id=elem_id)
    return ToolButton(value=REFRESH_SYMBOL, elem_id=elem_id, tooltip="Layer preset: refresh for the loaded model")


def build(elem_id: Callable[[str], str], is_img2img: bool, loaded_model: Callable[[], Any] = lambda: None) -> ScriptUI:
    """Create the ASAG accordion inside the current gradio Blocks context.

    `loaded_model()` returns the loaded model without loading one (scripts/asag.py passes the host's); the
    preset dropdown offers that model's family's presets, refreshed when ASAG is ticked and by its button."""
    import gradio as gr

    d = asag_params.DEFAULTS
    family = _family_now(loaded_model)
    with _accordion(gr, d.enabled, elem_id("enabled")) as enabled:
        with gr.Row():
            scale = gr.Slider(label="Scale", minimum=0.0, maximum=10.0, step=0.1, value=d.scale,
                              elem_id=elem_id("scale"))
            rescale = gr.Slider(label="Rescale", minimum=0.0, maximum=1.0, step=0.05, value=d.rescale,
                                elem_id=elem_id("rescale"))
        with gr.Row():
            preset = gr.Dropdown(label="Layer preset", choices=list(PRESET_CHOICES),
                                 value=layers.default_preset(family) if family else None, elem_id=elem_id("preset"))
            refresh = _refresh_button(gr, elem_id("preset_refresh"))
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
        scope = gr.Radio(label="Diffusion transformers: attention scope", choices=list(asag_params.SCOPES),
                         value=d.scope, elem_id=elem_id("scope"))
    preset.change(fn=_fill_layers, inputs=[preset, layer_box], outputs=[layer_box])
    for event in (refresh.click, enabled.change):  # both gradio 3.41 (A1111) and 4 (Forge) have these
        event(fn=refreshed_presets(loaded_model), inputs=[preset], outputs=[preset])
        event(fn=refreshed_window(loaded_model), inputs=[start, end], outputs=[start, end])

    by_name = {"enabled": enabled, "scale": scale, "layers": layer_box, "iterations": iterations,
               "epsilon": epsilon, "start": start, "end": end, "adaptive": adaptive, "rescale": rescale,
               "hires": hires, "scope": scope}
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
