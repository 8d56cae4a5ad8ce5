"""What every host adapter does the same way: never raise into a generation, decide before touching the
host whether this pass needs ASAG at all, report a failed pass honestly, and say how the perturbed rows run.

Batched or separate: where safe, an adapter puts the perturbed rows into the host's own model call (the
perturbations in lib_asag/perturb/ are row-aware); where not, it runs them in a call of their own and says
why, once per pass. `ASAG_BATCH=0` in the WebUI's environment forces the separate call on every host.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from .. import params as asag_params
from ..perturb import families

log = logging.getLogger("asag")


def edit_model_refusal(sd_model: Any) -> str | None:
    """InstructPix2Pix-style models (`cond_stage_key == "edit"` in ldm and in Forge) are refused on every host."""
    if getattr(sd_model, "cond_stage_key", None) == "edit":
        return ("ASAG does not support edit models (InstructPix2Pix): their CFG mixes image and text "
                "guidance. Generating without ASAG.")
    return None


def report_failure(p: Any, applied_steps: int, error: BaseException) -> str:
    """Log a failed perturbed pass and keep the image's infotext honest: no ASAG keys if no step was
    guided (and `ASAG error: <message>`), else `ASAG error: stopped after N steps`. Returns the message shown under the image."""
    message = f"ASAG turned off: {type(error).__name__}: {error}"
    log.error("ASAG: the perturbed pass failed (%s: %s); continuing without ASAG for this image.",
              type(error).__name__, error, exc_info=error)
    try:
        if applied_steps == 0:
            for key in asag_params.INFOTEXT_KEYS.values():
                p.extra_generation_params.pop(key, None)
            p.extra_generation_params[asag_params.ERROR_KEY] = message
        else:
            p.extra_generation_params[asag_params.ERROR_KEY] = f"stopped after {applied_steps} steps"
        p.comment(message)
    except Exception:  # p without these fields: the log line is enough
        pass
    return message


class AdapterBase:
    """Subclasses implement `_install(p, params) -> list[str]` and `teardown(p)` (idempotent; it adds the pass's
    guided steps to `guided_steps`)."""

    name = ""
    effective: asag_params.ASAGParams | None = None  # the settings the last setup armed, resolved for the model
    guided_steps = 0  # sampling steps ASAG guided since reset_count(), over every pass torn down since

    def reset_count(self) -> None:
        """Start counting guided steps afresh (the script does, at each batch's first pass)."""
        self.teardown()
        self.guided_steps = 0

    def for_model(self, p: Any, params: asag_params.ASAGParams, family: str) -> asag_params.ASAGParams:
        """`params` resolved for this model's family (its default window, the scope it can run), noted in p's
        infotext where the scope asked for cannot run; kept as `effective` for the infotext."""
        resolved = params.for_family(family)
        scope = families.effective_scope(families.FAMILIES.get(family), resolved.scope)
        if scope != resolved.scope:
            note = (f"the {resolved.scope}-only scope is not available for {families.FAMILIES[family].title}; "
                    f"the whole {scope} attention of the chosen layers is perturbed")
            log.warning("ASAG: %s.", note)
            asag_params.add_note(p, note)
            resolved = replace(resolved, scope=scope)
        self.effective = resolved
        return resolved

    def setup(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        """Arm ASAG for this sampling pass. Returns messages for the user; never raises."""
        self.teardown(p)
        self.effective = None
        try:
            if not params.enabled or (getattr(p, "is_hr_pass", False) and params.hires == "off"):
                return []
            return params.validate() or self._install(p, params)
        except Exception as e:
            self.teardown(p)
            log.exception("ASAG: setup failed")
            return [f"ASAG could not start ({type(e).__name__}: {e}); generating without ASAG."]

    def _install(self, p: Any, params: asag_params.ASAGParams) -> list[str]:
        raise NotImplementedError

    def teardown(self, p: Any = None) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Batched or separate

ENV = "ASAG_BATCH"


def switched_off() -> str | None:
    """Why batching is off by the user's choice (`ASAG_BATCH=0`), or None."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return f"{ENV}={os.environ[ENV]}"
    return None


def log_mode(reason: str | None, last: str | None, only_mode: bool = False) -> str:
    """Log how the perturbed prediction is computed, unless it is `last` (one line per pass and change).

    A fallback is a warning so that it reaches the console: the WebUIs configure no logging by default
    (A1111 modules/logging_config.py without --loglevel), which shows warnings only. The batched mode, the
    user's own switch and a mode that is the only one for the backbone (`only_mode`) are info."""
    text = ("ASAG: perturbed pass batched with cond/uncond" if reason is None
            else f"ASAG: perturbed pass in a separate call ({reason})")
    if text != last:
        quiet = reason is None or reason.startswith(ENV) or only_mode
        log.log(logging.INFO if quiet else logging.WARNING, text)
    return text
