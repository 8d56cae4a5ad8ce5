"""Stand-in of modules/api/api.py (A1111 v1.10.1 82a973c0; identical in Forge dfdcbab6): how /sdapi turns a
request's `alwayson_scripts` into the script args the WebUI passes to the script hooks.

`init_script_args` starts from the UI defaults of every script and copies at most the script's own number
of args (`args_to - args_from`) from the request: extra args are dropped silently, a short list keeps the
UI defaults for the rest, and a non-list `args` is not handled (the real host raises -> HTTP 500)."""
from __future__ import annotations


class HTTPException(Exception):
    """fastapi.HTTPException (real: raised with status 422 for an unknown always-on script)."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def script_name_to_index(name, scripts):
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


class Api:
    def get_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None
        return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]

    def init_script_args(self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *,
                         input_script_args=None):
        script_args = default_script_args.copy()
        if input_script_args is not None:
            for index, value in input_script_args.items():
                script_args[index] = value
        if selectable_scripts:
            script_args[selectable_scripts.args_from:selectable_scripts.args_to] = request.script_args
            script_args[0] = selectable_idx + 1
        if request.alwayson_scripts:
            for name in request.alwayson_scripts.keys():
                script = self.get_script(name, script_runner)
                if script is None:
                    raise HTTPException(status_code=422, detail=f"always on script {name} not found")
                if script.alwayson is False:
                    raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
                if "args" in request.alwayson_scripts[name]:
                    # min between arg length in scriptrunner and arg length in the request
                    given = request.alwayson_scripts[name]["args"]
                    for idx in range(0, min((script.args_to - script.args_from), len(given))):
                        script_args[script.args_from + idx] = given[idx]
        return script_args
