"""scripts/asag.py + lib_asag/ui.py in the A1111 stand-ins: UI, args (UI and API forms), infotext round trip,
XYZ axes, the hook sequence of modules/processing.py, and "disabled = absent"."""
from __future__ import annotations

import importlib.util
import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from lib_asag import params as asag_params

_HARNESS = Path(__file__).resolve().parent / "standins" / "a1111" / "asag_harness.py"
if "asag_harness" not in sys.modules:  # test helpers + independent reference; host imports are lazy
    _spec = importlib.util.spec_from_file_location("asag_harness", _HARNESS)
    sys.modules["asag_harness"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["asag_harness"])
H = sys.modules["asag_harness"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(standins):
    root = standins("a1111")
    from modules import script_callbacks, scripts, shared
    shared.reset()
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()
    sys.path.insert(0, str(ROOT))  # load_scripts puts the extension's basedir first while loading
    module = scripts.register_scripts_from_file(str(ROOT / "scripts" / "asag.py"))
    import gradio as gr
    with gr.Blocks():
        script = module.ASAGScript()
        script.is_txt2img = True
        components = script.ui(False)
    from ldm.models.diffusion.ddpm import LatentDiffusion
    shared.sd_model = LatentDiffusion(seed=0).eval()
    yield types.SimpleNamespace(module=module, script=script, components=components, shared=shared,
                                callbacks=script_callbacks, scripts=scripts, root=root)
    script.postprocess(None, None)
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()


def _ui_defaults(env):
    return [c.value for c in env.components]


def _args(env, **values):
    """The UI's positional args with some fields changed (what the WebUI passes to process())."""
    args = _ui_defaults(env)
    for name, value in values.items():
        args[asag_params.ARG_ORDER.index(name)] = value
    return args


def _p(env, **kwargs):
    from modules.processing import StableDiffusionProcessingTxt2Img
    return StableDiffusionProcessingTxt2Img(batch_size=2, **kwargs)


def generate(env, p, args, case, *, script=True, hires=False):
    """modules/processing.py process_images_inner order: process, process_batch, sample (before_hr before a
    hires pass), postprocess_batch, postprocess. Returns the first (and hires) pass results."""
    s = env.script
    if script:
        s.process(p, *args)
        s.process_batch(p, *args, batch_number=0, prompts=[], seeds=[], subseeds=[])
    out = [H.run_sampler(p, case)]
    if hires:
        p.is_hr_pass = True
        if script:
            s.before_hr(p, *args)
        out.append(H.run_sampler(p, case))
        p.is_hr_pass = False
    if script:
        s.postprocess_batch(p, *args, images=None, batch_number=0)
        s.postprocess(p, None, *args)
    return out


def _asag_callbacks(env):
    return [cb for lst in env.callbacks.callback_map.values() for cb in lst
            if getattr(cb.callback, "__module__", "") == "lib_asag.hosts.a1111"]


def test_ui_returns_components_in_arg_order_with_the_defaults(env):
    assert len(env.components) == len(asag_params.ARG_ORDER)
    assert _ui_defaults(env) == [getattr(asag_params.DEFAULTS, name) for name in asag_params.ARG_ORDER]
    from modules.ui_components import InputAccordion
    assert isinstance(env.components[0], InputAccordion)
    ids = [c.elem_id for c in env.components[1:]]
    assert ids == [f"script_txt2img_asag_{name}" for name in asag_params.ARG_ORDER[1:]]
    assert env.script.title() == "ASAG" and env.script.show(False) is env.scripts.AlwaysVisible


def test_ui_falls_back_to_accordion_and_checkbox_without_input_accordion(env, monkeypatch):
    import gradio as gr
    from modules import ui_components
    monkeypatch.delattr(ui_components, "InputAccordion")
    with gr.Blocks():
        components = env.module.ASAGScript().ui(False)
    assert type(components[0]) is gr.Checkbox and components[0].value is False


def test_hints_cover_every_element_id(env):
    js = (ROOT / "javascript" / "asag-hints.js").read_text()
    for name in asag_params.ARG_ORDER:
        assert f'"{name}":' in js


# ---------------------------------------------------------------------------------------------------------
# Layer presets follow the loaded model's family (issue 15.5)

def _build_ui(env):
    """The script's UI in a fresh Blocks; returns {elem_id: block} of everything in it."""
    import gradio as gr
    with gr.Blocks() as root:
        script = env.module.ASAGScript()
        script.is_txt2img = True
        script.ui(False)
    found, stack = {}, [root]
    while stack:
        block = stack.pop()
        found[block.elem_id] = block
        stack.extend(block.children)
    return found


def _dit_model(forge: bool = False, **counts):
    """A loaded DiT as each host holds it: A1111 `sd_model.model.diffusion_model` (its SD3), Forge
    `sd_model.forge_objects.unet.model.diffusion_model` (backend/diffusion_engine/*, no is_flux flag)."""
    net = torch.nn.Module()
    for kind, n in counts.items():
        setattr(net, f"{kind}_blocks", torch.nn.ModuleList(torch.nn.Identity() for _ in range(n)))
    holder = types.SimpleNamespace(diffusion_model=net)
    if forge:
        return types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(model=holder)))
    return types.SimpleNamespace(model=holder, is_sd3=True)


def _refresh_handlers(ui):
    """The handlers that refresh the preset dropdown: its refresh button's click and ASAG's tick."""
    preset = ui["script_txt2img_asag_preset"]
    handlers = []
    for block in (ui["script_txt2img_asag_preset_refresh"], ui["script_txt2img_asag_enabled-checkbox"]):
        handlers += [fn for name, fn, inputs, outputs, _ in block.events
                     if name in ("click", "change") and outputs == [preset] and inputs == [preset]]
    return handlers


@pytest.mark.parametrize("model,family", [
    (None, None), ("sd1", "sd1"), (_dit_model(joint=4), "sd3"), (_dit_model(forge=True, double=3, single=2), "flux"),
    (types.SimpleNamespace(cond_stage_model=None, chunk_length=75), None),  # Forge's FakeInitialModel
])
def test_preset_dropdown_offers_the_loaded_models_presets(env, model, family):
    from lib_asag import layers, ui as asag_ui
    env.shared.sd_model = env.shared.sd_model if model == "sd1" else model
    ui = _build_ui(env)
    preset = ui["script_txt2img_asag_preset"]
    assert preset.choices == list(asag_ui.PRESET_CHOICES)  # gradio 4 accepts only values built in
    assert preset.value == (layers.default_preset(family) if family else None)
    want = list(layers.PRESETS[family]) if family else list(asag_ui.PRESET_CHOICES)
    handlers = _refresh_handlers(ui)
    assert len(handlers) == 2
    for refresh in handlers:
        for current in ("middle", "all", None):
            update = refresh(current)
            assert update["choices"] == want
            assert update["value"] == (current if current in want else None)


def test_refresh_follows_a_model_change_and_never_breaks_the_ui(env):
    ui = _build_ui(env)
    refresh = _refresh_handlers(ui)[0]
    assert refresh("middle")["choices"] == ["middle", "middle + output.3-5", "all"]
    env.shared.sd_model = _dit_model(joint=24)
    assert refresh("middle") == {"__type__": "update", "choices": ["joint.7-9", "all"], "value": None}

    class Loading:  # a model half-built by the host's loading thread
        @property
        def model(self):
            raise RuntimeError("still loading")

    env.shared.sd_model = Loading()
    assert refresh("all")["value"] == "all"


def test_start_and_end_follow_the_loaded_family_unless_the_user_set_them(env):
    """Ticking ASAG or 🔄 shows the loaded family's default window (a DiT's 0.01-0.15, a UNet's 0-1) while Start/End
    hold some family's default; a window of the user's own stays."""
    ui = _build_ui(env)
    start, end = ui["script_txt2img_asag_start"], ui["script_txt2img_asag_end"]
    handlers = []
    for block in (ui["script_txt2img_asag_preset_refresh"], ui["script_txt2img_asag_enabled-checkbox"]):
        handlers += [fn for name, fn, inputs, outputs, _ in block.events if inputs == [start, end] == outputs]
    assert len(handlers) == 2
    values = lambda updates: tuple(u.get("value") for u in updates)  # noqa: E731
    for refresh in handlers:
        env.shared.sd_model = _dit_model(joint=24)
        assert values(refresh(0.0, 1.0)) == (0.01, 0.15)
        assert values(refresh(0.2, 0.7)) == (None, None)  # the user's own: unchanged
        env.shared.sd_model = _dit_model(forge=True, double=3, single=2)
        assert values(refresh(0.01, 0.15)) == (0.01, 0.15)
        from ldm.models.diffusion.ddpm import LatentDiffusion
        env.shared.sd_model = LatentDiffusion(seed=0).eval()
        assert values(refresh(0.01, 0.15)) == (0.0, 1.0)


def test_picking_a_preset_fills_the_layers_box_and_a_refresh_leaves_it(env):
    ui = _build_ui(env)
    preset, layer_box = ui["script_txt2img_asag_preset"], ui["script_txt2img_asag_layers"]
    [(fn, inputs)] = [(fn, inputs) for name, fn, inputs, outputs, _ in preset.events
                      if name == "change" and outputs == [layer_box]]
    assert inputs == [preset, layer_box]
    assert fn("middle + output.3-5", "input.7") == "middle + output.3-5"
    assert fn(None, "input.7") == "input.7"  # a refresh cleared a selection the new family lacks


# ---------------------------------------------------------------------------------------------------------
# Infotext: written as A1111 writes generation parameters, read back as it parses them

def _infotext_line(values: dict) -> str:
    """modules/processing.py create_infotext: 'k: v' joined by ', ', values quoted when they hold , : or \""""
    def quote(v):
        v = str(v)
        return json.dumps(v, ensure_ascii=False) if any(ch in v for ch in ",:\n\"") else v
    return ", ".join(f"{k}: {quote(v)}" for k, v in values.items())


def _parse_infotext(line: str) -> dict:
    """modules/infotext_utils.py parse_generation_parameters: regex re_param, then unquote."""
    out = {}
    for k, v in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line):
        out[k] = json.loads(v) if v.startswith('"') else v
    return out


@pytest.mark.parametrize("values", [
    dict(scale=2.5),
    dict(scale=4.0, layers="middle, output.0-2", iterations=7, epsilon=0.35, start=0.1, end=0.8,
         adaptive="cosine", rescale=0.25, hires="off", scope="joint"),
    dict(scale=1.0, layers="input.3.1; middle"),
])
def test_infotext_round_trip_through_the_paste_fields(env, values):
    p = _p(env)
    generate(env, p, _args(env, enabled=True, **values), H.make_case(env.shared.sd_model, steps=5))  # 0.2-0.6 in 0.1-0.8
    text = _infotext_line({"Steps": 20, "Sampler": "Euler", **p.extra_generation_params})
    pasted = _parse_infotext(text)
    restored = {}
    for component, reader in env.script.infotext_fields:
        restored[env.components.index(component)] = reader(pasted)
    want = dataclasses.asdict(dataclasses.replace(asag_params.DEFAULTS, enabled=True, **values))
    assert [restored[i] for i in range(len(env.components))] == [want[n] for n in asag_params.ARG_ORDER]
    assert set(env.script.paste_field_names) == set(asag_params.INFOTEXT_KEYS.values())


def test_pasting_an_infotext_without_asag_turns_it_off_and_leaves_the_rest(env):
    pasted = _parse_infotext("Steps: 20, Sampler: Euler")
    readers = [reader for _, reader in env.script.infotext_fields]
    assert [r(pasted) for r in readers] == [False] + [None] * (len(readers) - 1)


# ---------------------------------------------------------------------------------------------------------
# Args: UI positional, API short lists, API dicts; bad args

def _api_args(env, request_args):
    """What /sdapi passes to the script hooks for `"alwayson_scripts": {"ASAG": {"args": request_args}}`:
    the stand-in of modules/api/api.py init_script_args over the UI defaults (script args 1..10)."""
    from modules.api.api import Api
    script = env.script
    script.args_from, script.args_to, script.alwayson = 1, 1 + len(env.components), True
    request = types.SimpleNamespace(alwayson_scripts={"ASAG": {"args": request_args}}, script_args=[])
    runner = types.SimpleNamespace(scripts=[script])
    full = Api().init_script_args(request, [0] + _ui_defaults(env), None, None, runner)
    return full[script.args_from:script.args_to]


API_FORMS = {
    "full positional": [True, 2.5, "", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image"],
    "the ten args before scope": [True, 2.5, "", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same"],
    "short [true, scale]": [True, 2.5],
    "dict": [{"enabled": True, "scale": 2.5}],
    "dict, scale as text": [{"enabled": True, "scale": "2.5"}],
    # The host copies at most the script's own number of args: the 12th is dropped before ASAG sees it.
    "too many args": [True, 2.5, "", 3, 1.0, 0.0, 1.0, "constant", 0.0, "same", "image", "extra"],
}


@pytest.mark.parametrize("form", list(API_FORMS))
def test_api_arg_forms_give_the_same_image(env, form):
    case = H.make_case(env.shared.sd_model, steps=2)
    reference = generate(env, _p(env), _args(env, enabled=True, scale=2.5), case)[0]
    p = _p(env)
    args = _api_args(env, API_FORMS[form])
    assert len(args) == len(asag_params.ARG_ORDER)
    got = generate(env, p, args, case)[0]
    assert torch.equal(got, reference)
    assert p.extra_generation_params["ASAG scale"] == 2.5
    assert asag_params.ERROR_KEY not in p.extra_generation_params


@pytest.mark.parametrize("bad,reason", [
    ([True, "lots"], "scale"), ([True, 2.0, "output.99"], "output.99"), ([{"enabled": True, "scael": 2}], "scael"),
    ([True, 2.0, "", 3, -1.0], "epsilon"), ([True, float("nan")], "scale"), ([True, 2.0, "", 3, 1.0, 0.8, 0.2], "start"),
])
def test_bad_args_log_clearly_and_give_a_normal_image(env, bad, reason, caplog):
    case = H.make_case(env.shared.sd_model, steps=2)
    plain = generate(env, _p(env), [], case, script=False)[0]
    p = _p(env)
    got = generate(env, p, _api_args(env, bad), case)[0]
    assert torch.equal(got, plain)
    assert "ASAG" in caplog.text
    assert not any(k in p.extra_generation_params for k in asag_params.INFOTEXT_KEYS.values())
    assert reason in p.extra_generation_params[asag_params.ERROR_KEY]  # in the API response's info/infotext
    assert p.comments  # the message is shown with the result too
    assert _asag_callbacks(env) == []


def _readme_check() -> str:
    """The README's "did ASAG run?" expression, as its Python example writes it."""
    match = re.search(r"^asag_ran = (.+)$", (ROOT / "README.md").read_text(), re.M)
    assert match, "README's API example no longer sets asag_ran"
    return match.group(1)


@pytest.mark.parametrize("request_args,ran", [
    ([True, "x"], False),                               # the message names the field: scale
    ([True, 2.0, "", 3, 1.0, 0.8, 0.2], False),         # start after end
    ([{"enabled": True, "scale": 2.0, "layers": "output.9"}], False),
    ([True, 2.5], True),
    ([True, 2.5, "output.0-5"], True),                  # ran, with output.4-5 noted as skipped
    ([False, 2.5], False),
])
def test_the_readme_check_reads_the_api_response_right(env, request_args, ran):
    """Reads /sdapi's `info` (modules/processing.py Processed.js) the way README says; an error message that
    names a field must not make it say yes, nor may the infotext text contain a key inside the message."""
    from modules.processing import Processed
    p = _p(env)
    generate(env, p, _api_args(env, request_args), H.make_case(env.shared.sd_model, steps=1))
    info = json.loads(Processed(p, [None]).js())
    assert eval(_readme_check(), {"info": info}) is ran, info
    if not ran and request_args[0] is not False:
        assert asag_params.ERROR_KEY in info["extra_generation_params"]
        assert "ASAG scale" not in info["infotexts"][0]  # not even as a word of the message


def test_skipped_layers_are_noted_and_pasting_the_note_is_harmless(env):
    p = _p(env)
    generate(env, p, _args(env, enabled=True, layers="middle, output.0-5"), H.make_case(env.shared.sd_model, steps=1))
    assert p.extra_generation_params == {"ASAG scale": 3.0, "ASAG layers": "middle, output.0-5",
                                         asag_params.NOTE_KEY: "output.4-5 not in this model, skipped"}
    pasted = _parse_infotext(_infotext_line({"Steps": 20, **p.extra_generation_params}))
    assert pasted[asag_params.NOTE_KEY] == "output.4-5 not in this model, skipped"
    restored = [reader(pasted) for _, reader in env.script.infotext_fields]
    assert restored[:3] == [True, 3.0, "middle, output.0-5"]
    assert asag_params.NOTE_KEY not in env.script.paste_field_names
    refused = _p(env)  # a layer of which nothing exists: no note, an error, no ASAG
    generate(env, refused, _args(env, enabled=True, layers="output.0-5, input.2"),
             H.make_case(env.shared.sd_model, steps=1))
    assert set(refused.extra_generation_params) == {asag_params.ERROR_KEY}


def test_the_api_host_copies_the_request_args_like_modules_api(env):
    assert _api_args(env, [True, 2.5]) == [True, 2.5] + _ui_defaults(env)[2:]
    assert _api_args(env, [True] * 12) == [True] * len(asag_params.ARG_ORDER)
    assert _api_args(env, [{"enabled": True}]) == [{"enabled": True}] + _ui_defaults(env)[1:]


# ---------------------------------------------------------------------------------------------------------
# Disabled = absent; lifecycle

def test_disabled_is_bit_identical_to_absent(env):
    case = H.make_case(env.shared.sd_model, steps=3)
    absent = generate(env, _p(env), [], case, script=False, hires=True)
    p = _p(env)
    env.script.process(p, *_ui_defaults(env))
    env.script.process_batch(p, *_ui_defaults(env))
    assert _asag_callbacks(env) == []
    env.script.postprocess(p, None)
    disabled = generate(env, p, _ui_defaults(env), case, hires=True)
    assert all(torch.equal(a, b) for a, b in zip(absent, disabled))
    assert p.extra_generation_params == {}


def test_after_a_failed_generation_the_next_disabled_one_is_identical_to_absent(env):
    case = H.make_case(env.shared.sd_model, steps=2)
    absent = generate(env, _p(env), [], case, script=False)[0]
    p = _p(env)
    args = _args(env, enabled=True)
    env.script.process(p, *args)
    env.script.process_batch(p, *args)
    unet = env.shared.sd_model.model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        H.run_sampler(p, case)  # processing aborts: postprocess_batch / postprocess never run
    handle.remove()
    assert not [n for n, m in env.shared.sd_model.named_modules() if "forward" in m.__dict__]
    got = generate(env, _p(env), _ui_defaults(env), case)[0]
    assert torch.equal(got, absent)
    assert _asag_callbacks(env) == []


def test_enabled_generation_writes_infotext_and_cleans_up(env):
    case = H.make_case(env.shared.sd_model, steps=2)
    absent = generate(env, _p(env), [], case, script=False)[0]
    p = _p(env)
    got = generate(env, p, _args(env, enabled=True, scale=3.0, layers="middle, output.0"), case)[0]
    assert (got - absent).abs().max() > 1e-2
    assert p.extra_generation_params == {"ASAG scale": 3.0, "ASAG layers": "middle, output.0"}
    assert _asag_callbacks(env) == []


@pytest.mark.parametrize("window", [(0.6, 0.9), (0.01, 0.15)])
def test_a_window_that_holds_no_step_is_reported_not_claimed(env, window):
    """2 steps = progress 0 and 0.5: neither is in 0.6-0.9 nor in 0.01-0.15 (a DiT's default window at a few
    steps). Nothing was guided, so the response must not say `ASAG scale` (the README's did-ASAG-run check)."""
    case = H.make_case(env.shared.sd_model, steps=2)
    absent = generate(env, _p(env), [], case, script=False)[0]
    p = _p(env)
    got = generate(env, p, _args(env, enabled=True, layers="all", start=window[0], end=window[1]), case)[0]
    assert torch.equal(got, absent)
    assert "ASAG scale" not in p.extra_generation_params
    error = p.extra_generation_params[asag_params.ERROR_KEY]
    assert error.startswith("ASAG guided no sampling step") and f"{window[0]:g}-{window[1]:g}" in error, error
    assert any("ASAG guided no sampling step" in c for c in p.comments)
    # the same settings with a step inside the window guide it, and say so
    p = _p(env)
    generate(env, p, _args(env, enabled=True, layers="all", start=window[0], end=window[1]),
             H.make_case(env.shared.sd_model, steps=10))
    assert p.extra_generation_params["ASAG scale"] == 3.0 and asag_params.ERROR_KEY not in p.extra_generation_params


def test_scale_zero_in_the_window_is_recorded_not_reported_as_unguided(env):
    """Scale 0 (README: 0 = no effect) with every step in the window: ASAG ran with a zero term, so the infotext
    says `ASAG scale: 0.0` and the image is the plain one; the no-step error ('none fell in its active window')
    would be false here."""
    case = H.make_case(env.shared.sd_model, steps=2)
    absent = generate(env, _p(env), [], case, script=False)[0]
    p = _p(env)
    got = generate(env, p, _args(env, enabled=True, scale=0.0, layers="all"), case)[0]
    assert torch.equal(got, absent)
    assert p.extra_generation_params == {"ASAG scale": 0.0, "ASAG layers": "all"}


@pytest.mark.parametrize("hires,patched_in_hr", [("same", True), ("off", False)])
def test_hires_pass_behaviour(env, hires, patched_in_hr):
    model = env.shared.sd_model
    seen = []
    attn = dict(model.named_modules())["model.diffusion_model.middle_block.1.transformer_blocks.0.attn1"]
    attn.register_forward_pre_hook(lambda m, a: seen.append(("hr" if p.is_hr_pass else "first", "forward" in m.__dict__)))
    p = _p(env, enable_hr=True)
    generate(env, p, _args(env, enabled=True, hires=hires), H.make_case(model, steps=1), hires=True)
    assert ("first", True) in seen
    assert (("hr", True) in seen) == patched_in_hr
    assert p.extra_generation_params.get("ASAG hires", "same") == hires


def test_edit_model_is_refused_with_a_message(env):
    from ldm.models.diffusion.ddpm import LatentDiffusion
    env.shared.sd_model = LatentDiffusion(cond_stage_key="edit").eval()
    p = _p(env)
    generate(env, p, _args(env, enabled=True), H.make_case(env.shared.sd_model, steps=1))
    assert any("InstructPix2Pix" in c for c in p.comments)
    assert "ASAG scale" not in p.extra_generation_params


def test_forge_hook_does_nothing_on_a1111(env):
    p = _p(env)
    env.script.process_before_every_sampling(p, *_args(env, enabled=True))
    assert _asag_callbacks(env) == []


# ---------------------------------------------------------------------------------------------------------
# XYZ plot

def test_xyz_axes_are_added_once_and_drive_the_params(env):
    xyz = env.scripts.register_scripts_from_file(str(env.root / "scripts" / "xyz_grid.py"))
    env.callbacks.before_ui_callback()
    env.callbacks.app_started_callback(None, None)
    labels = [o.label for o in xyz.axis_options]
    assert labels == ["ASAG scale", "ASAG layers", "ASAG iterations", "ASAG epsilon", "ASAG scope"]

    from lib_asag import ui
    p = _p(env)
    by_label = {o.label: o for o in xyz.axis_options}
    cell = xyz.run_cell(p, by_label["ASAG scale"], "4.5", ["1", "4.5"])
    cell = xyz.run_cell(cell, by_label["ASAG layers"], "middle; output.0", [])
    cell = xyz.run_cell(cell, by_label["ASAG iterations"], "5", [])
    cell = xyz.run_cell(cell, by_label["ASAG scope"], "joint", [])
    assert not hasattr(p, ui.XYZ_ATTR)  # cells are copies; the base p is untouched
    params, messages = ui.params_from_script(cell, _ui_defaults(env))  # ASAG unticked in the UI
    assert messages == [] and params.enabled and params.scale == 4.5
    assert params.layers == "middle; output.0" and params.iterations == 5 and params.scope == "joint"

    case = H.make_case(env.shared.sd_model, steps=1)
    got = generate(env, cell, _ui_defaults(env), case)[0]
    direct = generate(env, _p(env), _args(env, enabled=True, scale=4.5, layers="middle; output.0", iterations=5,
                                          scope="joint"), case)[0]
    assert torch.equal(got, direct)
    assert cell.extra_generation_params["ASAG scale"] == 4.5


def test_xyz_axes_exist_before_the_script_uis_are_built_in_api_only_start(env):
    """webui.py api_only builds every script UI (Api.__init__ -> ui.create_ui) before on_before_ui: the XYZ
    script copies axis_options in its ui(), so the axes must be there when asag.py is imported (xyz_grid.py,
    a root script, loads first) or at the latest when ASAG's own ui() runs (AlwaysOn before selectable)."""
    env.scripts.scripts_data.clear()
    env.callbacks.clear_callbacks()
    xyz = env.scripts.register_scripts_from_file(str(env.root / "scripts" / "xyz_grid.py"))
    env.scripts.register_scripts_from_file(str(ROOT / "scripts" / "asag.py"))
    from lib_asag import ui
    assert [o.label for o in xyz.axis_options] == [label for label, _, _ in ui.XYZ_AXES]

    env.scripts.scripts_data.clear()
    module = env.scripts.register_scripts_from_file(str(ROOT / "scripts" / "asag.py"))  # other load order
    xyz = env.scripts.register_scripts_from_file(str(env.root / "scripts" / "xyz_grid.py"))
    assert xyz.axis_options == []
    import gradio as gr
    with gr.Blocks():
        module.ASAGScript().ui(False)
    assert len(xyz.axis_options) == 5
