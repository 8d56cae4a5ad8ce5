"""Stand-in of modules/prompt_parser.py: the conditioning containers and the two reconstruct functions
CFGDenoiser.forward calls (same semantics: pick the schedule for the step; AND-prompts flattened into one
tensor with conds_list[i] = [(row index, weight), ...]; token lengths equalised by repeating the last token;
dict conds (SDXL) stacked per key)."""
from __future__ import annotations

from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def _at_step(schedules, current_step):
    for item in schedules:
        if current_step <= item.end_at_step:
            return item.cond
    return schedules[-1].cond


class DictWithShape(dict):
    """SDXL conds: a dict {crossattn, vector} that also answers `.shape` (the crossattn shape), as the real one."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def stack_conds(tensors):
    """Stack, first equalising token counts by repeating each tensor's last token (real stack_conds)."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack([t if t.shape[0] == longest else torch.vstack([t, t[-1:].repeat(longest - t.shape[0], 1)])
                        for t in tensors])


def _stack(conds):
    if isinstance(conds[0], dict):
        return DictWithShape({key: stack_conds([c[key] for c in conds]) for key in conds[0]})
    return stack_conds(conds)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step):
    return _stack([_at_step(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        row = []
        for composable in composable_prompts:
            row.append((len(tensors), composable.weight))
            tensors.append(_at_step(composable.schedules, current_step))
        conds_list.append(row)
    return conds_list, _stack(tensors)


def multicond(per_image: list[list[tuple[object, float]]]) -> MulticondLearnedConditioning:
    """Test helper (not in the real module): [[(cond, weight), ...] per image] -> MulticondLearnedConditioning."""
    batch = [[ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10**9, c)], w) for c, w in image]
             for image in per_image]
    return MulticondLearnedConditioning((len(batch),), batch)


def plain(conds: list[object]) -> list[list[ScheduledPromptConditioning]]:
    """Test helper (not in the real module): one unscheduled cond per image (the uncond layout)."""
    return [[ScheduledPromptConditioning(10**9, c)] for c in conds]
