"""ASAG (Adversarial Sinkhorn Attention Guidance) as an AlwaysOn script for A1111 and Forge.

Thin on purpose: the UI is built by lib_asag.ui, args become ASAGParams there, and the host adapter
(lib_asag.hosts.get_adapter) does the sampling-time work through `setup` / `teardown` only.
A1111 (modules/processing.py) calls process_batch before each batch's first pass and before_hr before the
hires pass; Forge calls process_before_every_sampling for both, so each host arms ASAG from its own hook.
"""
from __future__ import annotations

import logging

from modules import script_callbacks, scripts

from lib_asag import hosts, params as asag_params, ui as asag_ui

log = logging.getLogger("asag")


def _load_adapter():
    try:
        adapter = hosts.get_adapter()
        # print, not log: the WebUIs leave the root logger at WARNING, and this line is for every user's console
        print(hosts.startup_line())
        return adapter
    except Exception:  # a broken adapter must not break the WebUI's script loading
        log.exception("ASAG: no adapter for this WebUI; ASAG is unavailable")
        return None


_ADAPTER = _load_adapter()


def _add_xyz_axes(*_: object) -> None:
    asag_ui.add_xyz_axes(scripts.scripts_data)


# The XYZ script copies its axis list in its own ui() (`current_axis_options`), which /sdapi/v1/script-info
# and its run() use. API-only start (webui.py api_only -> modules/api/api.py Api.__init__ -> ui.create_ui)
# builds the script UIs *before* on_before_ui, so the axes must be there earlier: now (scripts/xyz_grid.py is
# a root script, loaded before extensions' scripts in modules/scripts.py load_scripts), again in ui() (an
# AlwaysOn script's ui() runs before the selectable scripts' in ScriptRunner.setup_ui), and before_ui.
_add_xyz_axes()
script_callbacks.on_before_ui(_add_xyz_axes)


class ASAGScript(scripts.Script):
    def title(self):
        return "ASAG"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        _add_xyz_axes()
        built = asag_ui.build(self.elem_id, is_img2img, _loaded_model)
        self.infotext_fields = built.infotext_fields
        self.paste_field_names = built.paste_field_names
        return built.components

    def process(self, p, *args):
        self._teardown(p)  # whatever an earlier, failed generation may have left armed
        params, messages = asag_ui.params_from_script(p, args)
        for message in messages:
            log.warning("ASAG: %s -> generating without ASAG.", message)
            _comment(p, f"ASAG off: {message}")
        _report_off(p, messages)

    def process_batch(self, p, *args, **kwargs):
        if _ADAPTER is not None and _ADAPTER.name == "a1111":
            self._setup(p, args)

    def before_hr(self, p, *args):
        if _ADAPTER is not None and _ADAPTER.name == "a1111":
            self._setup(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        if _ADAPTER is not None and _ADAPTER.name != "a1111":
            self._setup(p, args)

    def postprocess_batch(self, p, *args, **kwargs):
        self._teardown(p)
        _report_unguided(p, _ADAPTER.guided_steps if _ADAPTER is not None else 0)

    def postprocess(self, p, processed, *args):
        self._teardown(p)

    def _setup(self, p, args) -> None:
        params, _ = asag_ui.params_from_script(p, args)
        if _ADAPTER is None or params is None or not params.enabled:
            self._teardown(p)
            return
        first_pass = not getattr(p, "is_hr_pass", False)
        if first_pass:  # the adapter notes skipped layers (ASAG note) in setup; drop an earlier batch's
            p.extra_generation_params.pop(asag_params.NOTE_KEY, None)
            _ADAPTER.reset_count()
        messages = _ADAPTER.setup(p, params)
        if not first_pass:
            return
        for key in (*asag_params.INFOTEXT_KEYS.values(), asag_params.ERROR_KEY):
            p.extra_generation_params.pop(key, None)
        if messages:
            p.extra_generation_params.pop(asag_params.NOTE_KEY, None)
            for message in messages:
                log.warning("ASAG: %s", message)
                _comment(p, message)
            _report_off(p, messages)
        else:  # what ran: the window and scope resolved for the loaded model's family
            p.extra_generation_params.update(asag_params.to_infotext(_ADAPTER.effective or params))

    def _teardown(self, p) -> None:
        if _ADAPTER is not None:
            _ADAPTER.teardown(p)


def _loaded_model():
    """The loaded model without loading one: `modules.sd_models.model_data.sd_model` (A1111 v1.10.1 and Forge
    `SdModelData`); `shared.sd_model` is a property that loads the checkpoint when none is loaded yet."""
    from modules import sd_models
    return getattr(getattr(sd_models, "model_data", None), "sd_model", None)


def _report_off(p, messages: list[str]) -> None:
    """Tell the API user too: `comments` never reach /sdapi's response on either host (Processed.js), but
    extra_generation_params do, in `info` and in every infotext. `ASAG error` without `ASAG scale` = off."""
    if messages and isinstance(getattr(p, "extra_generation_params", None), dict):
        p.extra_generation_params[asag_params.ERROR_KEY] = "; ".join(messages)


def _report_unguided(p, guided_steps: int) -> None:
    """A batch that ASAG was armed for but that got no ASAG step (its window held no sampling step, e.g. 4 steps
    of a DiT at the default 0.01-0.15, or an interrupt before the first) must not say `ASAG scale`. Runs after
    the batch's last pass and before its infotexts are written (modules/processing.py process_images_inner)."""
    extra = getattr(p, "extra_generation_params", None)
    scale_key = asag_params.INFOTEXT_KEYS["scale"]
    if guided_steps or not isinstance(extra, dict) or scale_key not in extra or asag_params.ERROR_KEY in extra:
        return
    start = extra.get(asag_params.INFOTEXT_KEYS["start"], asag_params.DEFAULTS.start)
    end = extra.get(asag_params.INFOTEXT_KEYS["end"], asag_params.DEFAULTS.end)
    for key in asag_params.INFOTEXT_KEYS.values():
        extra.pop(key, None)
    message = (f"ASAG guided no sampling step: none fell in its active window {start:g}-{end:g} (a step is active "
               "when start <= step / steps < end); widen Start/End or use more steps")
    if _interrupted():
        message = "ASAG guided no sampling step: the generation was interrupted first"
    log.warning("ASAG: %s.", message)
    _comment(p, message)
    extra[asag_params.ERROR_KEY] = message


def _interrupted() -> bool:
    try:
        from modules import shared
        return bool(shared.state.interrupted or shared.state.skipped)
    except Exception:
        return False


def _comment(p, text: str) -> None:
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(text)
