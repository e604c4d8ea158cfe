"""Parameter, non-zero and sparsity counts per layer and in total.

A "layer" is any module that owns a `weight` tensor (Linear, Conv, BatchNorm, Embedding, ...).
Counts use the *effective* tensors `module.weight` / `module.bias`, which torch.nn.utils.parametrize
computes from masks or codebooks, so a pruned or weight-shared model is counted as it runs.
Sparsity is the L0 measure: sparsity = 1 − nnz / numel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def nnz(t: torch.Tensor) -> int:
    """Number of non-zero entries."""
    return int(torch.count_nonzero(t.detach()))


def sparsity(t: torch.Tensor) -> float:
    """L0 sparsity 1 − nnz/numel (0.0 for an empty tensor)."""
    n = t.numel()
    return 0.0 if n == 0 else 1.0 - nnz(t) / n


def _ratio_zero(nz: int, total: int) -> float:
    return 0.0 if total == 0 else 1.0 - nz / total


class _Totals:
    """params, nnz and sparsities derived from weight/bias counts (shared by a layer and a whole model)."""

    weight_params: int
    weight_nnz: int
    bias_params: int
    bias_nnz: int

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def nnz(self) -> int:
        return self.weight_nnz + self.bias_nnz

    @property
    def weight_sparsity(self) -> float:
        return _ratio_zero(self.weight_nnz, self.weight_params)

    @property
    def sparsity(self) -> float:
        return _ratio_zero(self.nnz, self.params)


@dataclass(frozen=True)
class LayerCounts(_Totals):
    """Counts for one layer; weights and biases separately."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    weight_params: int
    weight_nnz: int
    bias_params: int
    bias_nnz: int

    @property
    def bias_sparsity(self) -> float:
        return _ratio_zero(self.bias_nnz, self.bias_params)


@dataclass(frozen=True)
class ModelCounts(_Totals):
    """Per-layer counts (definition order) and their totals."""

    layers: dict[str, LayerCounts] = field(default_factory=dict)

    def _sum(self, attr: str) -> int:
        return sum(getattr(c, attr) for c in self.layers.values())

    @property
    def weight_params(self) -> int:
        return self._sum("weight_params")

    @property
    def weight_nnz(self) -> int:
        return self._sum("weight_nnz")

    @property
    def bias_params(self) -> int:
        return self._sum("bias_params")

    @property
    def bias_nnz(self) -> int:
        return self._sum("bias_nnz")


def is_parametrization_internal(name: str) -> bool:
    """True for the modules torch.nn.utils.parametrize inserts (`<layer>.parametrizations.<tensor>...`)."""
    return "parametrizations" in name.split(".")


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning a `weight` tensor, by qualified name, skipping parametrize internals."""
    out = {}
    for name, m in model.named_modules():
        if is_parametrization_internal(name):
            continue
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            out[name] = m
    return out


def count_layer(module: nn.Module, name: str = "") -> LayerCounts:
    """Counts of one module's effective weight and bias."""
    w = module.weight
    b = getattr(module, "bias", None)
    b = b if isinstance(b, torch.Tensor) else None
    return LayerCounts(
        name=name,
        type=type(module).__name__,
        weight_shape=tuple(w.shape),
        weight_params=w.numel(),
        weight_nnz=nnz(w),
        bias_params=0 if b is None else b.numel(),
        bias_nnz=0 if b is None else nnz(b),
    )


@torch.no_grad()
def count_parameters(model: nn.Module) -> ModelCounts:
    """Parameters, non-zeros and sparsity of every weight-owning layer, with totals.

    A tied tensor (GPT-2's `lm_head.weight is transformer.wte.weight`) is counted once, under its first
    holder: the model stores it once. Parameters held outside a layer's `weight`/`bias` (ViT's class token
    and position embeddings, a bare nn.Parameter on the model) are counted as rows of their own, typed
    "Parameter", so a size report never misses them.
    """
    layers: dict[str, LayerCounts] = {}
    seen: set[int] = set()
    for name, m in weight_layers(model).items():
        w_id = id(_stored(m, "weight"))
        if w_id in seen:
            continue  # the other holder of a tied weight
        row = count_layer(m, name)
        b = _stored(m, "bias")
        if b is not None and id(b) in seen:  # a tied bias (BERT's MLM decoder bias) is stored once too
            row = LayerCounts(row.name, row.type, row.weight_shape, row.weight_params, row.weight_nnz, 0, 0)
        seen.update({w_id} | ({id(b)} if b is not None else set()))
        layers[name] = row
    for name, p in model.named_parameters():
        if id(p) in seen or is_parametrization_internal(name):
            continue
        seen.add(id(p))
        layers[name] = LayerCounts(name=name, type="Parameter", weight_shape=tuple(p.shape), weight_params=p.numel(),
                                   weight_nnz=nnz(p.detach()), bias_params=0, bias_nnz=0)
    return ModelCounts(layers)


def _stored(module: nn.Module, tensor: str) -> torch.Tensor | None:
    """The tensor `module` stores as `tensor`, through a parametrization to its original (None if absent)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, tensor):
        return module.parametrizations[tensor].original
    t = module._parameters.get(tensor, module._buffers.get(tensor))
    if t is None:
        t = getattr(module, tensor, None)  # a property computing the tensor (some custom layers)
    return t if isinstance(t, torch.Tensor) else None
