"""Capture intermediate feature maps of named modules with forward hooks (for AT, hints and RKD)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from nncompress.core.errors import UserError


def find_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """The submodule called `name` (as in `model.named_modules()`), or a UserError listing the choices."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        choices = ", ".join(n for n in modules if n) or "(none)"
        raise UserError(f"{role} has no module '{name}': choose one of {choices}")
    return modules[name]


class FeatureTaps:
    """Keeps the latest output of each named module; `remove()` detaches the hooks."""

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model"):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(names):  # unique, in order
            module = find_module(model, name, role)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.features[name] = output if isinstance(output, torch.Tensor) else output[0]
        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.features:
            raise RuntimeError(f"no feature captured for '{name}' yet: run a forward pass first")
        return self.features[name]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()
