"""Stand-in of modules/ui_components.py (A1111 1.7+): InputAccordion, a hidden Checkbox whose value is the
accordion's open state, used as `with InputAccordion(False, label=...) as enabled:`; ToolButton, the small
emoji button (v1.8.0 bef51aed / v1.10.1, Forge dfdcbab6: a gr.Button with the "tool" class; `tooltip` is
accepted by every component through modules/gradio_extensons.py)."""
from __future__ import annotations

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or "input-accordion"
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        self.accordion.__exit__(*exc)


class ToolButton(gr.Button):
    def __init__(self, *args, elem_classes=None, tooltip=None, **kwargs):
        super().__init__(*args, elem_classes=["tool", *(elem_classes or [])], **kwargs)
        self.tooltip = tooltip
