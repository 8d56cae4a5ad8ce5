"""Stand-in of modules/scripts.py: Script (the hooks an AlwaysOn script overrides, with the real signatures),
AlwaysVisible, ScriptClassData/scripts_data (where extensions find xyz_grid), and the script-loading rule that
names a script module after its file (modules/script_loading.py load_module: "xyz_grid.py")."""
from __future__ import annotations

import importlib.util
import os
from collections import namedtuple

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def elem_id(self, item_id):
        tabkind = "img2img" if self.is_img2img else "txt2img"
        title = "".join(ch for ch in self.title().lower().replace(" ", "_") if ch.isalnum() or ch == "_")
        return f"script_{tabkind}_{title}_{item_id}"


def load_module(path: str):
    """modules/script_loading.py load_module: the module is named after the file, e.g. 'xyz_grid.py'."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register_scripts_from_file(path: str):
    """load_scripts(): every Script subclass of the file goes into scripts_data with its module."""
    module = load_module(path)
    for obj in list(vars(module).values()):
        if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script:
            scripts_data.append(ScriptClassData(obj, path, os.path.dirname(path), module))
    return module
