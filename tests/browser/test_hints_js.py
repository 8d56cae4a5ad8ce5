"""javascript/asag-hints.js in Chromium on a page shaped like the WebUI's accordion (no WebUI needed).

The accordion element contains every other control, so a hint set on it and its descendants would
cover them all; each control must carry its own hint. Skips without Playwright or Chromium."""
from __future__ import annotations

from pathlib import Path

import pytest

from lib_asag import params as asag_params

ROOT = Path(__file__).resolve().parents[2]

# The shape of A1111's InputAccordion (gradio Accordion with a .label-wrap header) holding gradio blocks;
# the host functions the script uses (script.js: gradioApp, onUiLoaded, onUiUpdate) as plain stand-ins.
PAGE = """<!doctype html><html><body>
<div id="script_{tab}_asag_enabled" class="input-accordion">
  <button class="label-wrap"><span><input type="checkbox"> ASAG</span></button>
  <div>{controls}</div>
</div>
<script>
  const loaded = [], updated = [];
  function gradioApp() {{ return document; }}
  function onUiLoaded(f) {{ loaded.push(f); }}
  function onUiUpdate(f) {{ updated.push(f); }}
</script></body></html>"""
CONTROL = '<div id="script_{tab}_asag_{name}" class="block"><label><span>{name}</span><input></label></div>'


@pytest.fixture
def hint_page(browser_context):
    tab = "txt2img"
    names = [n for n in asag_params.ARG_ORDER if n != "enabled"] + ["preset"]
    controls = "".join(CONTROL.format(tab=tab, name=n) for n in names)
    page = browser_context.new_page()
    page.set_content(PAGE.format(tab=tab, controls=controls))
    page.add_script_tag(content=(ROOT / "javascript" / "asag-hints.js").read_text(encoding="utf-8"))
    page.evaluate("loaded.forEach((f) => f())")
    yield page, tab, names
    page.close()


def _titles(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => [...new Set(els.map((e) => e.title))]")


def test_each_control_has_its_own_hint_and_the_header_the_enable_hint(hint_page):
    page, tab, names = hint_page
    header = _titles(page, f"#script_{tab}_asag_enabled .label-wrap, #script_{tab}_asag_enabled .label-wrap *")
    assert len(header) == 1 and header[0].startswith("Adversarial Sinkhorn Attention Guidance")
    hints = {}
    for name in names:
        found = _titles(page, f"#script_{tab}_asag_{name}, #script_{tab}_asag_{name} *")
        assert len(found) == 1 and found[0], (name, found)
        hints[name] = found[0]
    assert len(set(hints.values())) == len(names)  # no control shows a neighbour's (or the header's) hint
    assert header[0] not in hints.values()


def test_a_re_rendered_control_gets_its_hint_back_on_the_next_ui_update(hint_page):
    page, tab, _ = hint_page
    before = _titles(page, f"#script_{tab}_asag_scale label")
    page.evaluate(f"""() => {{
        document.querySelector('#script_{tab}_asag_scale').innerHTML = '<label><span>Scale</span><input></label>';
        updated.forEach((f) => f([]));
    }}""")
    assert _titles(page, f"#script_{tab}_asag_scale label, #script_{tab}_asag_scale span") == before
