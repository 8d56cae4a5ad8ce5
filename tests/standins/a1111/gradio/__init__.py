"""Stand-in of gradio 3.41 (A1111 pins gradio==3.41.2): components record their constructor arguments and
nest inside layout blocks, enough to build and inspect an extension's UI without a browser."""
from __future__ import annotations

from typing import Any

_stack: list["Block"] = []


class Block:
    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.children, self.events = args, kwargs, [], []
        self.elem_id = kwargs.get("elem_id")
        self.label = kwargs.get("label")
        if _stack:
            _stack[-1].children.append(self)

    def __enter__(self):
        _stack.append(self)
        return self

    def __exit__(self, *exc):
        _stack.pop()

    def _event(self, name, fn=None, inputs=None, outputs=None, **kwargs):
        self.events.append((name, fn, inputs, outputs, kwargs))
        return self

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):
        return self._event("change", fn, inputs, outputs, **kwargs)

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        return self._event("click", fn, inputs, outputs, **kwargs)


class Component(Block):
    def __init__(self, value: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.value = value


class Checkbox(Component):
    pass


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, step=None, **kwargs):
        super().__init__(value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class Number(Component):
    pass


class Textbox(Component):
    pass


class Dropdown(Component):
    def __init__(self, choices=None, value=None, **kwargs):
        super().__init__(value, **kwargs)
        self.choices = list(choices or [])


class Radio(Dropdown):
    pass


class Button(Component):
    def __init__(self, value: Any = "Run", **kwargs: Any):
        super().__init__(value, **kwargs)


class HTML(Component):
    pass


class Markdown(Component):
    pass


class Accordion(Block):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Blocks(Block):
    pass


def update(**kwargs: Any) -> dict:
    return {"__type__": "update", **kwargs}
