"""GPT-2-style `Conv1D` layers as plain `nn.Linear`, so every Linear method applies to them.

Hugging Face's GPT-2 family (and OpenAI GPT, GPT-J's ancestors, DistilGPT-2) store their projections in
`transformers.pytorch_utils.Conv1D`: `y = x @ W + b` with W of shape (in, out), the transpose of nn.Linear's
(out, in). Nothing about the math differs, but every method that asks `isinstance(m, nn.Linear)` (pruning,
sharing, quantization, SVD, export) would skip these layers — in GPT-2 that is every attention and MLP matrix.
`linearize_conv1d` swaps each for an nn.Linear holding Wᵀ, with identical outputs (up to float rounding of a
different matmul order, ≤ 1e-6 relative). Recognised by shape of the class, not by importing transformers:
a module whose class is named `Conv1D`, with an `nf` attribute and a 2-D weight of shape (in, nf).
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.core.errors import UserError


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for a Hugging Face GPT-2-style Conv1D (weight (in, out), forward x @ W + b)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(w, torch.Tensor)
            and w.dim() == 2 and w.shape[1] == module.nf)


def conv1d_layers(model: nn.Module) -> list[str]:
    """Qualified names of the GPT-2-style Conv1D layers in `model`."""
    return [name for name, m in model.named_modules() if is_hf_conv1d(m)]


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace every GPT-2-style Conv1D of `model` in place by an equivalent nn.Linear; returns their names.

    The new layer keeps dtype, device and `requires_grad`; a Conv1D registered under two names is replaced
    under both by the same Linear. A tied Conv1D weight (none in transformers' models) is refused, naming it,
    because a transposed copy cannot stay tied.
    """
    replaced: dict[int, nn.Linear] = {}
    names = []
    holders: dict[int, set[int]] = {}  # id(tensor) → ids of the distinct modules holding it
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), set()).add(id(m))
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not is_hf_conv1d(module):
            continue
        if id(module) not in replaced:
            if len(holders.get(id(module.weight), ())) > 1:
                raise UserError(f"{name}: its Conv1D weight is tied to another layer; a transposed nn.Linear copy "
                                "would untie it, so it is left to the caller (untie it first)")
            w = module.weight
            bias = getattr(module, "bias", None)
            linear = nn.Linear(w.shape[0], w.shape[1], bias=bias is not None, device=w.device, dtype=w.dtype)
            linear.weight.copy_(w.t())
            linear.weight.requires_grad_(w.requires_grad)
            if bias is not None:
                linear.bias.copy_(bias)
                linear.bias.requires_grad_(bias.requires_grad)
            linear.train(module.training)
            replaced[id(module)] = linear
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replaced[id(module)])
        names.append(name)
    return names
