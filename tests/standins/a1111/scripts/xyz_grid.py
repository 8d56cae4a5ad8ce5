"""Stand-in of scripts/xyz_grid.py (A1111): AxisOption(label, type, apply, format_value, confirm, cost,
choices, prepare), the module-level `axis_options` list extensions append to, and the cell rule: each cell
runs on a shallow copy of p after `apply(pc, value, values)` (real: `pc = copy(p); x_opt.apply(pc, x, xs)`)."""
from __future__ import annotations

from copy import copy

from modules import scripts


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost = format_value, confirm, cost
        self.prepare, self.choices = prepare, choices


axis_options: list[AxisOption] = []


def run_cell(p, option: AxisOption, value, values):
    """What one grid cell does before process_images: copy p and apply the axis value."""
    pc = copy(p)
    option.apply(pc, option.type(value), values)
    return pc


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"
