"""Dropout adjustment after pruning (Han et al. 2015, "Learning both Weights and Connections", eq. 2):

    D_r = D_o · sqrt(C_r / C_o)

C_o and C_r are the layer's connections before and after pruning; a sparser layer already has less capacity
to overfit, so it gets less dropout.
"""
from __future__ import annotations

import math

from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers


def adjusted_dropout_rate(p_original: float, connections_original: int, connections_remaining: int) -> float:
    """D_r = D_o · sqrt(C_r / C_o)."""
    if not 0.0 <= p_original < 1.0:
        raise UserError(f"dropout rate must be in [0, 1), got {p_original}")
    if connections_original <= 0 or not 0 <= connections_remaining <= connections_original:
        raise UserError(f"need 0 <= remaining ({connections_remaining}) <= original ({connections_original}) connections, original > 0")
    return p_original * math.sqrt(connections_remaining / connections_original)


def dropout_layers(model: nn.Module) -> dict[str, str]:
    """Each Dropout module mapped to the Linear/Conv layer registered right after it (the layer whose inputs it drops)."""
    layers = set(compressible_layers(model))
    mapping, pending = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            pending.append(name)
        elif name in layers and pending:
            mapping.update({d: name for d in pending})
            pending = []
    return mapping


def adjust_dropout(model: nn.Module, original_rates: dict[str, float] | None = None,
                   mapping: dict[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """Set every Dropout's p from its layer's surviving (non-zero) weights; returns {dropout: (D_o, D_r)}.

    C_o is the layer's weight count, C_r its non-zero count. Pass `original_rates` when calling this again after
    further pruning, so the rate is always derived from the dense model's D_o.
    """
    mapping = dropout_layers(model) if mapping is None else mapping
    modules, layers = dict(model.named_modules()), compressible_layers(model)
    changes = {}
    for d_name, l_name in mapping.items():
        if d_name not in modules or l_name not in layers:
            raise UserError(f"dropout mapping {d_name} -> {l_name} names a module the model does not have")
        w = layers[l_name].weight
        p_o = (original_rates or {}).get(d_name, modules[d_name].p)
        p_r = adjusted_dropout_rate(p_o, w.numel(), int(w.count_nonzero()))
        modules[d_name].p = p_r
        changes[d_name] = (p_o, p_r)
    return changes
