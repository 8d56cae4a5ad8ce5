"""The ASAG accordion in a real WebUI, through a real browser: what a user sees and clicks.

Run with tests/browser/run.sh URL against A1111 (gradio 3) or Forge (gradio 4) started with its UI and
this checkout as an extension. Generations are 64x64, 2 steps (seconds on CPU).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lib_asag import params as asag_params

ROOT = Path(__file__).resolve().parents[2]
TABS = ("txt2img", "img2img")
SCREENSHOT_ENV = "ASAG_BROWSER_SCREENSHOT"
GENERATE_TIMEOUT_MS = 300_000  # one 64x64, 2-step image on CPU takes seconds; room for a busy machine
LABELS = {"scale": "Scale", "rescale": "Rescale", "preset": "Layer preset", "layers": "Layers",
          "iterations": "Sinkhorn iterations", "epsilon": "Epsilon (temperature)", "start": "Start", "end": "End",
          "adaptive": "Scale schedule", "hires": "Hires fix pass", "scope": "Diffusion transformers: attention scope"}
# Non-default values for every field, valid for SD1.x (output.3 has self-attention there).
PASTED = dict(scale=4.5, layers="middle, output.3", iterations=7, epsilon=0.35, start=0.1, end=0.8,
              adaptive="cosine", rescale=0.25, hires="off", scope="joint")


def js_hints() -> dict[str, str]:
    """field -> hint text, read from javascript/asag-hints.js itself."""
    js = (ROOT / "javascript" / "asag-hints.js").read_text(encoding="utf-8")
    body = js[js.index("const hints = {"):js.index("};")]
    return {k: json.loads(f'"{v}"') for k, v in re.findall(r'"(\w+)":\s*"((?:[^"\\]|\\.)*)"', body)}


def asag_id(tab: str, field: str) -> str:
    return f"script_{tab}_asag_{field}"


def open_tab(page, tab: str) -> None:
    page.locator("#tabs > .tab-nav > button").nth(TABS.index(tab)).click()
    page.locator(f"#{asag_id(tab, 'enabled')}").wait_for(state="visible")


def fields_in_tab(tab: str) -> list[str]:
    return [n for n in asag_params.ARG_ORDER if not (tab == "img2img" and n == "hires")]  # no hires in img2img


READ_VALUES = """([tab, names]) => {
    const app = gradioApp();
    const out = {};
    for (const name of names) {
        const root = app.querySelector(`#script_${tab}_asag_${name}`);
        if (name === 'enabled') {
            out.enabled = app.querySelector(`#script_${tab}_asag_enabled-visible-checkbox`).checked;
            out.enabled_hidden = app.querySelector(`#script_${tab}_asag_enabled-checkbox input`).checked;
            out.enabled_open = root.classList.contains('input-accordion-open');
        } else if (root.querySelector('input[type=radio]')) {
            const checked = root.querySelector('input[type=radio]:checked');
            out[name] = checked ? (checked.closest('label').innerText.trim() || checked.value) : null;
        } else if (root.querySelector('input[type=number]')) {
            out[name] = Number(root.querySelector('input[type=number]').value);
        } else {
            out[name] = root.querySelector('textarea, input[type=text]').value;
        }
    }
    return out;
}"""


def read_values(page, tab: str) -> dict:
    return page.evaluate(READ_VALUES, [tab, fields_in_tab(tab)])


def set_enabled(page, tab: str, on: bool) -> None:
    box = page.locator(f"#{asag_id(tab, 'enabled')}-visible-checkbox")
    if box.is_checked() != on:
        box.click()
    page.wait_for_function("([sel, on]) => gradioApp().querySelector(sel).checked === on",
                           arg=[f"#{asag_id(tab, 'enabled')}-checkbox input", on])


def set_number(page, selector: str, value: float) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def generate(page, tab: str, prompt: str) -> str:
    """Generate with `prompt` and return the infotext shown under the image."""
    page.locator(f"#{tab}_prompt textarea").fill(prompt)
    page.click(f"#{tab}_generate")
    page.wait_for_function(
        "([id, prompt]) => { const t = gradioApp().querySelector('#' + id)?.innerText || '';"
        " return t.includes(prompt) && t.includes('Steps:'); }",
        arg=[f"html_info_{tab}", prompt], timeout=GENERATE_TIMEOUT_MS)
    return page.locator(f"#html_info_{tab}").first.inner_text()


def infotext_params(text: str) -> dict[str, str]:
    """'k: v' pairs of the parameter line (values quoted by the host when they hold a comma)."""
    line = next(l for l in text.splitlines() if "Steps:" in l)
    return {k: json.loads(v) if v.startswith('"') else v.strip()
            for k, v in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)}


def small_image_settings(page, tab: str) -> None:
    set_number(page, f"#{tab}_width", 64)
    set_number(page, f"#{tab}_height", 64)
    set_number(page, f"#{tab}_steps", 2)


def paste_infotext(page, tab: str, text: str) -> None:
    page.locator(f"#{tab}_prompt textarea").fill(text)
    page.locator(f"#{tab}_tools #paste").click()


def infotext_line(asag: dict) -> str:
    """A host-style parameter line: values quoted (json) when they contain a comma or colon."""
    def quote(v):
        v = str(v)
        return json.dumps(v) if any(ch in v for ch in ',:"') else v
    base = {"Steps": 2, "Sampler": "Euler", "Schedule type": "Automatic", "CFG scale": 5, "Seed": 1,
            "Size": "64x64"}
    return ", ".join(f"{k}: {quote(v)}" for k, v in {**base, **asag}.items())


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tab", TABS)
def test_accordion_is_in_the_tab_and_off_by_default(page, tab):
    open_tab(page, tab)
    accordion = page.locator(f"#{asag_id(tab, 'enabled')}")
    assert "ASAG (Adversarial Sinkhorn Attention Guidance)" in accordion.locator(".label-wrap").inner_text()
    values = read_values(page, tab)
    assert values["enabled"] is False and values["enabled_hidden"] is False and values["enabled_open"] is False
    defaults = asag_params.DEFAULTS
    assert {n: values[n] for n in fields_in_tab(tab) if n != "enabled"} == \
        {n: getattr(defaults, n) for n in fields_in_tab(tab) if n != "enabled"}
    assert page.js_errors == []


@pytest.mark.parametrize("tab", TABS)
def test_opened_accordion_shows_every_control_inside_it(page, tab):
    open_tab(page, tab)
    accordion = page.locator(f"#{asag_id(tab, 'enabled')}")
    accordion.locator(".label-wrap").click()  # opening the header also ticks it (host's InputAccordion)
    page.locator(f"#{asag_id(tab, 'scale')}").wait_for(state="visible")
    page.wait_for_timeout(500)  # let the opening animation finish before measuring
    assert read_values(page, tab)["enabled_hidden"] is True
    box = accordion.bounding_box()
    shown = {}
    for field, label in LABELS.items():
        el = page.locator(f"#{asag_id(tab, field)}")
        if tab == "img2img" and field == "hires":
            assert not el.is_visible(), "the hires-fix radio has no use in img2img"
            continue
        assert el.is_visible(), field
        assert label in el.inner_text(), (field, el.inner_text())
        b = el.bounding_box()
        assert b["width"] > 100 and b["height"] > 20, (field, b)
        assert box["x"] <= b["x"] and b["x"] + b["width"] <= box["x"] + box["width"] + 1, field
        assert box["y"] <= b["y"] and b["y"] + b["height"] <= box["y"] + box["height"] + 1, field
        shown[field] = b
    rects = list(shown.items())
    for i, (a, ra) in enumerate(rects):  # no two controls drawn over each other
        for b, rb in rects[i + 1:]:
            overlap_x = min(ra["x"] + ra["width"], rb["x"] + rb["width"]) - max(ra["x"], rb["x"])
            overlap_y = min(ra["y"] + ra["height"], rb["y"] + rb["height"]) - max(ra["y"], rb["y"])
            assert overlap_x <= 1 or overlap_y <= 1, (a, b)
    path = os.environ.get(SCREENSHOT_ENV)
    if path and tab == "txt2img":
        accordion.scroll_into_view_if_needed()
        accordion.screenshot(path=path)


@pytest.mark.parametrize("tab", TABS)
def test_hover_hints_are_on_every_control(page, tab):
    hints = js_hints()
    assert set(hints) == set(asag_params.ARG_ORDER) | {"preset"}
    open_tab(page, tab)
    fields = [f for f in hints if not (tab == "img2img" and f == "hires")]
    titles = page.evaluate("""([tab, fields]) => {
        const app = gradioApp(), out = {};
        for (const f of fields) {
            let root = app.querySelector(`#script_${tab}_asag_${f}`);
            if (f === 'enabled') {  // the header: the accordion element itself holds the other controls
                out.accordion = root.title;
                root = root.querySelector('.label-wrap');
            }
            const inner = Array.from(root.querySelectorAll('label, span, input, textarea, select'));
            out[f] = {root: root.title, inner: [...new Set(inner.map((el) => el.title))]};
        }
        return out;
    }""", [tab, fields])
    assert titles["accordion"] in ("", hints["enabled"])
    for field in fields:
        assert titles[field]["root"] == hints[field], field
        # every label/input inside a control carries that control's own hint, not a neighbour's
        assert titles[field]["inner"] == [hints[field]], (field, titles[field]["inner"])


def test_ticking_and_generating_writes_the_asag_infotext_and_unticked_none(page):
    tab = "txt2img"
    open_tab(page, tab)
    small_image_settings(page, tab)
    set_enabled(page, tab, True)
    on = infotext_params(generate(page, tab, "asag browser test, enabled"))
    assert on["Size"] == "64x64" and on["Steps"] == "2"
    assert on["ASAG scale"] == "3.0"
    assert not {k for k in on if k.startswith("ASAG") and k != "ASAG scale"}  # only non-defaults are written
    set_enabled(page, tab, False)
    off = infotext_params(generate(page, tab, "asag browser test, disabled"))
    assert off["Size"] == "64x64"
    assert not [k for k in off if "ASAG" in k]
    # no js_errors check here: A1111's own gradio throws "reading 'props'" when width/height are typed in


@pytest.mark.parametrize("tab", TABS)
def test_paste_button_restores_every_field(page, tab):
    open_tab(page, tab)
    asag = {asag_params.INFOTEXT_KEYS[n]: v for n, v in PASTED.items()}
    paste_infotext(page, tab, "a pasted prompt\nNegative prompt: blurry\n" + infotext_line(asag))
    want = {"enabled": True, **PASTED}
    want = {n: want[n] for n in fields_in_tab(tab)}
    page.wait_for_function(
        f"(arg) => {{ const v = ({READ_VALUES})(arg); return v.enabled === true && v.scale === {PASTED['scale']}; }}",
        arg=[tab, fields_in_tab(tab)], timeout=30_000)
    page.wait_for_timeout(500)  # the host sets all pasted components in one update; let it settle
    got = read_values(page, tab)
    assert got["enabled_hidden"] is True
    assert {n: got[n] for n in want} == want
    assert page.locator(f"#{tab}_prompt textarea").input_value() == "a pasted prompt"
    # pasting an infotext without ASAG turns ASAG off and leaves the other fields as they were
    paste_infotext(page, tab, "another prompt\n" + infotext_line({}))
    page.wait_for_function("(sel) => !gradioApp().querySelector(sel).checked",
                           arg=f"#{asag_id(tab, 'enabled')}-visible-checkbox", timeout=30_000)
    page.wait_for_timeout(500)
    got = read_values(page, tab)
    assert got["enabled"] is False and got["enabled_hidden"] is False
    assert {n: got[n] for n in want if n != "enabled"} == {n: want[n] for n in want if n != "enabled"}


def test_pasted_settings_generate_with_those_settings(page):
    """Paste -> generate: the UI passes every restored field to the generation (infotext round trip)."""
    tab = "txt2img"
    open_tab(page, tab)
    asag = {asag_params.INFOTEXT_KEYS[n]: v for n, v in PASTED.items()}
    paste_infotext(page, tab, "asag pasted round trip\n" + infotext_line(asag))
    page.wait_for_function("(sel) => gradioApp().querySelector(sel).checked",
                           arg=f"#{asag_id(tab, 'enabled')}-checkbox input", timeout=30_000)
    page.wait_for_timeout(500)
    got = infotext_params(generate(page, tab, "asag pasted round trip"))
    assert got["Size"] == "64x64" and got["Steps"] == "2"
    assert {k: v for k, v in got.items() if k.startswith("ASAG")} == {k: str(v) for k, v in asag.items()}


def dropdown_options(page, selector: str, choose: str | None = None) -> list[str]:
    """Open a gradio dropdown (3.41 or 4), return its choices as listed, and pick `choose` if given."""
    page.locator(f"{selector} input").click()
    options = page.locator(f"{selector} ul.options li")
    options.first.wait_for(state="attached")
    labels = [o.get_attribute("aria-label") for o in options.all()]  # gradio 3.41 and 4 both set it
    if choose in labels:
        # gradio selects on mousedown; the list re-renders under the pointer, so a full click is flaky
        options.nth(labels.index(choose)).dispatch_event("mousedown")
    page.keyboard.press("Escape")
    return labels


@pytest.mark.parametrize("tab", TABS)
def test_xyz_plot_offers_the_asag_axes(page, tab):
    open_tab(page, tab)
    script_list = f"#{tab}_script_container #script_list"
    assert "X/Y/Z plot" in dropdown_options(page, script_list, choose="X/Y/Z plot")
    for axis in ("x", "y", "z"):
        axis_type = f"#script_{tab}_xyz_plot_{axis}_type"
        page.locator(axis_type).wait_for(state="visible")
        labels = dropdown_options(page, axis_type, choose="ASAG scale" if axis == "x" else None)
        assert "Seed" in labels  # the host's own axes are there: the list was read
        for label in ("ASAG scale", "ASAG layers", "ASAG iterations", "ASAG epsilon"):
            assert label in labels, (axis, labels)
    assert page.locator(f"#script_{tab}_xyz_plot_x_type input").input_value() == "ASAG scale"


def test_preset_list_follows_the_loaded_model(page):
    """Issue 15.5: on a UNet the preset list has no DiT presets once the model is known. Forge loads its model on
    the first generation, so one is made first; ticking ASAG (and the 🔄 button) refreshes the list; picking a
    preset fills Layers, a refresh leaves what was typed there."""
    tab = "txt2img"
    open_tab(page, tab)
    small_image_settings(page, tab)
    generate(page, tab, "asag browser test, load the model")
    set_enabled(page, tab, True)
    preset = f"#{asag_id(tab, 'preset')}"
    for _ in range(20):  # the refresh is a server round trip
        labels = dropdown_options(page, preset)
        if "joint.7-9" not in labels:
            break
        page.wait_for_timeout(500)
    assert "middle" in labels and "all" in labels, labels
    assert not {"joint.7-9", "double.7-9"} & set(labels), labels
    box = page.locator(f"#{asag_id(tab, 'layers')}").locator("textarea, input[type=text]").first
    box.fill("input.7")
    box.press("Tab")
    page.locator(f"#{asag_id(tab, 'preset_refresh')}").click()
    page.wait_for_timeout(1000)
    assert box.input_value() == "input.7"
    dropdown_options(page, preset, choose="all")
    page.wait_for_function("(sel) => gradioApp().querySelector(sel).value === 'all'",
                           arg=f"#{asag_id(tab, 'layers')} textarea", timeout=30_000)
