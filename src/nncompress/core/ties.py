"""Tied (shared) parameters: find them once, so no method unties them silently.

A tie is one Parameter object held under two names: GPT-2's `lm_head.weight is transformer.wte.weight`, BERT's
MLM decoder and its word embeddings, ALBERT's shared layers, a module registered twice (`self.b = self.a`).
`state_dict()` lists a tied tensor under every name, `parameters()` only once. A method that rebuilds a
tensor for one holder (a parametrization, a factorized replacement, a quantized copy) leaves the other holder
on the old tensor, and the two drift apart in the next optimizer step — silently. Each method therefore asks
`tie_partners` which other places hold the tensor it is about to change, and either changes all of them the
same way (one mask, one codebook) or skips the tensor with `warn_tied`, which names both places.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize


def _owned_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Direct parameters of `module` by local name, looking through a parametrization to its original tensor."""
    out = {name: p for name, p in module._parameters.items() if p is not None}
    if parametrize.is_parametrized(module):
        for name in module.parametrizations.keys():
            original = getattr(module.parametrizations[name], "original", None)
            if isinstance(original, torch.Tensor):
                out[name] = original
    return out


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Groups of qualified parameter names that share one tensor (only groups of two or more names).

    A module registered under two names yields one group per parameter (`a.weight`, `b.weight`); a tied
    embedding and output layer yields `[transformer.wte.weight, lm_head.weight]`. Names are in definition order.
    """
    by_tensor: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for local, tensor in _owned_tensors(module).items():
            names = by_tensor.setdefault(id(tensor), [])
            qualified = prefix + local
            if qualified not in names:
                names.append(qualified)
    return [names for names in by_tensor.values() if len(names) > 1]


def tie_partners(model: nn.Module, parameter: str) -> list[str]:
    """The other qualified names holding the same tensor as `parameter` (empty when it is not tied)."""
    for group in tied_groups(model):
        if parameter in group:
            return [n for n in group if n != parameter]
    return []


def tie_map(model: nn.Module) -> dict[str, list[str]]:
    """parameter name → its partners, for every tied parameter (one pass; use it inside loops over layers)."""
    out: dict[str, list[str]] = {}
    for group in tied_groups(model):
        for name in group:
            out[name] = [n for n in group if n != name]
    return out


def tie_message(parameter: str, partners: list[str], action: str) -> str:
    """One line naming both places: '<p> is tied to <q> (one tensor): <action>'."""
    return f"{parameter} is tied to {', '.join(partners)} (one tensor held in both places): {action}"


def warn_tied(parameter: str, partners: list[str], action: str, stacklevel: int = 3) -> None:
    """Warn that a tied tensor is handled as one (or skipped); never silent, always naming both places."""
    warnings.warn(tie_message(parameter, partners, action), UserWarning, stacklevel=stacklevel)


def weight_holders_by_name(model: nn.Module, tensor: str = "weight") -> dict[int, list[tuple[str, nn.Module]]]:
    """id(tensor) → [(module name, module)] for every module holding that `tensor` (through a parametrization too).

    A module registered under two names is listed once (its first name); tied modules are listed each.
    """
    out: dict[int, list[tuple[str, nn.Module]]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen:
            continue
        seen.add(id(module))
        t = _owned_tensors(module).get(tensor)
        if isinstance(t, torch.Tensor):
            out.setdefault(id(t), []).append((name, module))
    return out
