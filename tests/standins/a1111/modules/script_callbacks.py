"""Stand-in of modules/script_callbacks.py. Mirrors v1.9/v1.10: callbacks live in `callback_map` lists, the
dispatchers iterate `ordered_callbacks(category)`, a cache (`ordered_callbacks_map`) that is rebuilt only
when the list length changes, and `remove_callbacks_for_function` removes from both (A1111 PR #15428,
v1.9.0). v1.8.0 has the plain lists only. Every dispatcher catches and reports exceptions, like the real one
(report_exception), so a failing callback never stops sampling. The params classes have the real fields."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from modules import errors


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: str = None


callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{k}": [] for k in (
    "app_started", "model_loaded", "ui_tabs", "ui_settings", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg",
    "infotext_pasted", "script_unloaded", "before_ui", "before_image_saved")}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    callbacks.append(ScriptCallback(filename, fun, f"{filename}/{category}/{name}"))


def ordered_callbacks(category, unordered_callbacks=None):
    unordered = callback_map["callbacks_" + category] if unordered_callbacks is None else unordered_callbacks
    cached = ordered_callbacks_map.get(category)
    if cached is not None and len(cached) == len(unordered):
        return cached
    ordered_callbacks_map[category] = list(unordered)
    return ordered_callbacks_map[category]


def _dispatch(category: str, *args: Any) -> None:
    for c in ordered_callbacks(category):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, category)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _dispatch("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _dispatch("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _dispatch("cfg_after_cfg", params)


def app_started_callback(demo, app):
    _dispatch("app_started", demo, app)


def before_ui_callback():
    _dispatch("before_ui")


def script_unloaded_callback():
    _dispatch("script_unloaded")


def infotext_pasted_callback(infotext: str, params: dict):
    _dispatch("infotext_pasted", infotext, params)


def remove_current_script_callbacks():
    pass


def remove_callbacks_for_function(callback_func):
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)


def _on(category):
    def register(callback, *, name=None):
        add_callback(callback_map["callbacks_" + category], callback, name=name, category=category)
    register.__name__ = f"on_{category}"
    return register


on_app_started = _on("app_started")
on_model_loaded = _on("model_loaded")
on_cfg_denoiser = _on("cfg_denoiser")
on_cfg_denoised = _on("cfg_denoised")
on_cfg_after_cfg = _on("cfg_after_cfg")
on_infotext_pasted = _on("infotext_pasted")
on_script_unloaded = _on("script_unloaded")
on_before_ui = _on("before_ui")


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()
