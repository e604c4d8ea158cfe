"""Batch-norm folding: conv → BN becomes one conv, so the integer kernel sees the weights it will use.

For y = γ · (W∗x + b − μ) / √(σ² + ε) + β:
    W' = W · γ / √(σ² + ε)   (per output channel),   b' = (b − μ) · γ / √(σ² + ε) + β
(Jacob et al. 2018, §3.2; Krishnamoorthi 2018, §2.8). ReLU fusion is done when the graph is prepared for
quantization: a following ReLU moves into the layer so the output quantizer sits after it.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn


_BN_AFTER = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d, nn.Linear: nn.BatchNorm1d}


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of the conv/linear that equals layer → BN in eval mode (running statistics)."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    w = weight * factor.reshape([-1] + [1] * (weight.dim() - 1))
    return w, (b - bn.running_mean) * factor + beta


def trace(model: nn.Module) -> fx.GraphModule:
    """Module-level torch.fx graph (`nncompress.core.capture.trace_modules`): a submodule fx cannot trace stays
    whole and in float; a UserError naming the module and the operation when the top-level forward cannot be traced."""
    from nncompress.core.capture import trace_modules

    return trace_modules(model, "quantization")


def find_layer_bn_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(layer node, BN node) where the BN is the layer's only consumer and matches its dimensionality."""
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or type(mods.get(node.target)) not in _BN_AFTER:
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and type(mods.get(users[0].target)) is _BN_AFTER[type(mods[node.target])]:
            pairs.append((node, users[0]))
    return pairs


def fuse_conv_bn(model: nn.Module) -> fx.GraphModule:
    """A traced copy of `model` (eval semantics) with every conv/linear → BN pair folded into the layer."""
    gm = trace(copy.deepcopy(model).eval())
    mods = dict(gm.named_modules())
    for layer_node, bn_node in find_layer_bn_pairs(gm):
        layer, bn = mods[layer_node.target], mods[bn_node.target]
        with torch.no_grad():
            w, b = fold_bn(layer.weight, layer.bias, bn)
            layer.weight.copy_(w)
            if layer.bias is None:
                layer.bias = nn.Parameter(b.detach().clone())
            else:
                layer.bias.copy_(b)
        bn_node.replace_all_uses_with(layer_node)
        gm.graph.erase_node(bn_node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
