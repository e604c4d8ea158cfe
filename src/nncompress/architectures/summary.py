"""Parameter and multiply-accumulate counts of a model, by tracing one forward pass on a single sample.

MACs come from `nncompress.analysis.macs` (one counter for the whole package): Conv2d =
H_out·W_out·C_out·(C_in/groups)·k_h·k_w (so depthwise costs k²·C·H·W); Linear = in·out (times any leading
non-batch dims). BatchNorm, activations, pooling and the SE multiply are not multiply-accumulates of a weight
and count 0, the convention of the MobileNet/ShuffleNet tables. Models built under `torch.device("meta")` are
traced on shapes only, which makes ImageNet-size counts instant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nncompress.analysis.macs import count_macs as _count_macs
from nncompress.analysis.macs import module_macs


@dataclass
class LayerCost:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int
    macs: int


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (weights, biases, BatchNorm γ and β; running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def layer_costs(model: nn.Module, in_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per conv/linear layer call: output shape, parameters and MACs for one sample of shape `in_shape` (C, H, W).

    A model built under `torch.device("meta")` is traced without computing anything (fast at ImageNet size).
    """
    rows: list[LayerCost] = []
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inp, out):
            rows.append(LayerCost(name, type(module).__name__, tuple(out.shape[1:]),
                                  sum(p.numel() for p in module.parameters(recurse=False)), module_macs(module, inp[0], out)))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # "meta": shapes only, no compute
    try:
        model(torch.zeros(1, *in_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample of shape `in_shape` (C, H, W)."""
    return _count_macs(model, tuple(in_shape)).total_macs
