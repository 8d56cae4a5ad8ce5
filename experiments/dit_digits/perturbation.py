"""The degraded joint attentions (or skipped blocks) each DiT guidance method pushes away from.

- `pag`: diffusers' PAG on joint attention (`PAGJointAttnProcessor2_0`): image x image block identity,
  image queries still see every text key, text rows untouched (`lib_asag.joint_scope.image_identity_attention`).
- `slg`: skip-layer guidance (ComfyUI `SkipLayerGuidanceDiT` / `SkipLayerGuidanceSD3`): the chosen
  blocks return their inputs, both streams.
- `asag_joint`: the extension's current DiT behaviour, `lib_asag.sinkhorn.adversarial_sinkhorn_attention`
  over all text + image queries and keys.
- `asag_image`: `lib_asag.joint_scope.image_only_sinkhorn_attention`, Sinkhorn on the image x image block only.

Blocks are chosen with the extension's layer grammar ("joint.2") through `lib_asag.layers`, as the hosts do.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from lib_asag.joint_scope import image_identity_attention, image_only_sinkhorn_attention
from lib_asag.layers import find_self_attention, resolve_layers
from lib_asag.sinkhorn import adversarial_sinkhorn_attention

from .mmdit import JointAttentionFn

KINDS = ("pag", "slg", "asag_joint", "asag_image")


def joint_attention(kind: str, iterations: int, epsilon: float) -> JointAttentionFn | None:
    """The replacement joint attention of `kind`; None for `slg`, which skips the block instead."""
    if kind == "pag":
        return lambda q, k, v, heads, n_text: image_identity_attention(q, k, v, heads=heads, n_text=n_text)
    if kind == "asag_joint":
        return lambda q, k, v, heads, n_text: adversarial_sinkhorn_attention(
            q, k, v, heads=heads, iterations=iterations, epsilon=epsilon)
    if kind == "asag_image":
        return lambda q, k, v, heads, n_text: image_only_sinkhorn_attention(
            q, k, v, heads=heads, n_text=n_text, iterations=iterations, epsilon=epsilon)
    if kind == "slg":
        return None
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {KINDS}")


@contextlib.contextmanager
def perturbed(model: torch.nn.Module, layers: str, kind: str, iterations: int = 3,
              epsilon: float = 1.0) -> Iterator[None]:
    """Perturb the joint blocks of `layers` (lib_asag grammar) for the duration of the block only."""
    blocks = find_self_attention(model)
    chosen = [blocks[ref] for ref in resolve_layers(layers, blocks)]
    attention = joint_attention(kind, iterations, epsilon)
    try:
        for block in chosen:
            block.attention_override, block.skip = attention, kind == "slg"
        yield
    finally:
        for block in chosen:
            block.attention_override, block.skip = None, False
