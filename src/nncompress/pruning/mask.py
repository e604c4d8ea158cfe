"""Pruning masks as `torch.nn.utils.parametrize` reparametrizations.

The dense tensor stays in `module.parametrizations.<name>.original`; every access to `module.<name>`
returns `original * mask`. Because the product is recomputed in forward, nothing the optimizer does
to the dense tensor (momentum, weight decay) can revive a pruned entry, and the gradient of a masked
entry is zero: d(w·m)/dw = m. `finalize()` bakes the product in and removes the parametrization.

A mask is a boolean buffer (True = keep), so it travels in `model.state_dict()` under
`<layer>.parametrizations.<name>.0.mask`. A fresh model has no such keys: load a saved masked state
dict with `load_masked_state_dict`, or move masks alone with `mask_state_dict` / `load_masks`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError


class Mask(nn.Module):
    """Parametrization w ↦ w·m with a boolean keep-mask m.

    `straight_through=True` keeps the forward value w·m but passes the gradient to every dense entry
    unchanged (∂L/∂w := ∂L/∂(w·m)), as dynamic network surgery needs (Guo et al. 2016) so a pruned
    weight can grow back; by default masked entries get zero gradient.
    """

    def __init__(self, mask: torch.Tensor, straight_through: bool = False):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self.straight_through = straight_through

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        masked = w * self.mask
        if self.straight_through:
            return w + (masked - w).detach()
        return masked


def _find_mask(module: nn.Module, name: str) -> Mask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, Mask):
            return p
    return None


def broken_parametrization(module: nn.Module) -> str | None:
    """The plain class name when `module` is a Parametrized* class without its parametrizations, else None.

    Building a layer with `type(masked_layer)(...)` gives such an object: its class routes `weight` through a
    parametrization list it does not have, and registering a mask on it fails inside torch with a bare KeyError.
    """
    if parametrize.is_parametrized(module):
        return None
    cls = type(module)

    def injected(c: type) -> bool:
        return any(isinstance(c.__dict__.get(t), property) for t in ("weight", "bias"))

    if not cls.__name__.startswith("Parametrized") or not injected(cls):
        return None
    return next((c.__name__ for c in cls.__mro__[1:] if not injected(c)), cls.__name__)


def _check(module: nn.Module, mask: torch.Tensor, name: str) -> None:
    plain = broken_parametrization(module)
    if plain is not None:
        raise UserError(f"{type(module).__name__} is a masked-layer class without its masks (a broken copy of a parametrized layer): "
                        f"rebuild it as a plain {plain} holding the effective weights, then prune again")
    if parametrize.is_parametrized(module, name):
        others = [type(q).__name__ for q in module.parametrizations[name] if not isinstance(q, Mask)]
        if others:  # e.g. SharedWeight computes centroids[codes] and ignores its input: a mask there would do nothing
            raise UserError(f"{type(module).__name__}.{name} carries a {others[0]} parametrization, which a pruning mask cannot "
                            "act through: prune before weight sharing (Deep Compression's order), or bake it in first")
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        raise UserError(f"{type(module).__name__} has no tensor '{name}' to mask (use 'weight' or 'bias')")
    if tuple(mask.shape) != tuple(tensor.shape):
        raise UserError(f"mask shape {list(mask.shape)} does not match {type(module).__name__}.{name} shape {list(tensor.shape)}")


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight", replace: bool = False,
               straight_through: bool | None = None) -> Mask:
    """Mask `module.<name>` with boolean `mask` (True = keep); returns the Mask parametrization.

    Re-applying **intersects** with the existing mask (keep = old ∧ new), so a pruned entry stays
    pruned and criteria should be computed on the effective (masked) tensor. `replace=True` swaps the
    mask for `mask` instead (splicing uses it to revive entries). `straight_through=None` keeps the
    current gradient mode (False for a new mask).
    """
    _check(module, mask, name)
    existing = _find_mask(module, name)
    if existing is not None:
        new = mask.to(device=existing.mask.device, dtype=torch.bool)
        existing.mask.copy_(new if replace else existing.mask & new)
        if straight_through is not None:
            existing.straight_through = straight_through
        return existing
    tensor = getattr(module, name)
    p = Mask(mask.to(tensor.device), straight_through=bool(straight_through))
    parametrize.register_parametrization(module, name, p)
    return p


def apply_shared_mask(modules: Sequence[nn.Module], mask: torch.Tensor, name: str = "weight", replace: bool = False,
                      straight_through: bool | None = None) -> Mask:
    """Mask one tensor that several modules hold (tied weights, e.g. `b.weight = a.weight`) with ONE Mask.

    Masking only the first module would move the tensor into its parametrization and leave every other
    holder reading the dense tensor: the "pruned" weights would still be used there. So the first module
    gets (or updates) the Mask and the others are parametrized with that same Mask object; each holder
    then computes w·m from the same dense tensor and mask, and `finalize` bakes all of them into the one
    Parameter again. A holder that already carries its own Mask (e.g. loaded from a state dict) gets the
    same keep-mask copied in.
    """
    modules = list({id(m): m for m in modules}.values())  # a module registered under two names counts once
    if not modules:
        raise UserError("apply_shared_mask needs at least one module")
    p = apply_mask(modules[0], mask, name, replace=replace, straight_through=straight_through)
    for other in modules[1:]:
        existing = _find_mask(other, name)
        if existing is p:
            continue
        if existing is not None:
            if not replace:
                p.mask.copy_(p.mask & existing.mask.to(p.mask.device))
            existing.mask.copy_(p.mask)
            existing.straight_through = p.straight_through
            continue
        _check(other, p.mask, name)
        parametrize.register_parametrization(other, name, p)
    return p


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The boolean keep-mask on `module.<name>`, or None when it is not masked (the live buffer, not a copy)."""
    p = _find_mask(module, name)
    return None if p is None else p.mask


def dense_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The underlying dense tensor (masked entries keep their last trained value); `module.<name>` if unmasked."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def masked_layers(model: nn.Module, name: str = "weight") -> dict[str, nn.Module]:
    """Modules whose `<name>` carries a mask, by qualified name, in definition order."""
    return {n: m for n, m in model.named_modules() if _find_mask(m, name) is not None}


def remove_mask(module: nn.Module, name: str = "weight") -> None:
    """Drop the mask and restore the dense tensor (pruned entries come back with their dense values)."""
    if _find_mask(module, name) is not None:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask in: `weight` becomes a plain nn.Parameter equal to weight·mask; returns `model`.

    The Parameter object is kept (its data is overwritten), so an optimizer built earlier still holds it.
    Any other parametrization stacked on a masked tensor is baked in with it.
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            if _find_mask(module, name) is not None:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def mask_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """All masks as {"<layer>.<name>": bool tensor}, e.g. {"fc1.weight": ...}; copies, safe to save."""
    out = {}
    for layer, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in module.parametrizations.keys():
                p = _find_mask(module, name)
                if p is not None:
                    out[f"{layer}.{name}" if layer else name] = p.mask.detach().clone()
    return out


def load_masks(model: nn.Module, masks: dict[str, torch.Tensor], replace: bool = True) -> nn.Module:
    """Apply masks from `mask_state_dict` (keys "<layer>.<name>") to `model`; replaces existing masks by default."""
    # every name a module is registered under (`self.b = self.a` saves masks under both a.* and b.*)
    modules = dict(model.named_modules(remove_duplicate=False))
    for key, mask in masks.items():
        layer, _, name = key.rpartition(".")
        if layer not in modules:
            raise UserError(f"mask '{key}' names layer '{layer}', which the model does not have")
        apply_mask(modules[layer], mask, name, replace=replace)
    return model


_MASK_KEY = re.compile(r"^(?:(?P<layer>.*)\.)?parametrizations\.(?P<name>[^.]+)\.\d+\.mask$")


def load_masked_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Load a state dict saved from a masked model (or a plain one) into a fresh `model`.

    Keys `<layer>.parametrizations.<name>.<i>.mask` first become masks on `model`, so the remaining
    `...original` keys then load into the dense tensors; plain keys load as usual.
    """
    masks = {}
    for key, value in state_dict.items():
        m = _MASK_KEY.match(key)
        if m:
            layer = m.group("layer")
            masks[f"{layer}.{m.group('name')}" if layer else m.group("name")] = value
    load_masks(model, masks, replace=True)
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        raise UserError(f"weights do not fit the model: {str(e).splitlines()[0][:300]}") from None
    return model
