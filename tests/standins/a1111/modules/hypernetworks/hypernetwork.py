"""Stand-in of modules/hypernetworks/hypernetwork.py: apply_hypernetworks(hypernetworks, context, layer=None)
-> (context_k, context_v), each hypernetwork's `layers[dim]` = (module for k, module for v), as the real
apply_single_hypernetwork does."""
from __future__ import annotations


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    layers = hypernetwork.layers.get(context_k.shape[2], None)
    if layers is None:
        return context_k, context_v
    return layers[0](context_k), layers[1](context_v)


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v, layer)
    return context_k, context_v
