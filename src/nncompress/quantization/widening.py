"""Network widening for reduced precision: WRPN (Mishra, Nurvitadhi, Cook, Marr 2018, ICLR, arXiv:1709.01134).

Why: at 2–4 bits a network loses accuracy because each layer's capacity shrinks; WRPN restores it by making
every hidden layer wider (2× or 3× filters), so a wide low-precision network can match the narrow
full-precision one's accuracy at a similar or smaller number of weight *bits* (the paper's claim for 4-bit
and lower weights and activations on ImageNet). Widening changes the function: the result is a new model with
fresh initialisation that must be trained (quantization-aware), not a transformation of trained weights.

`widen(factory, factor)` calls a zoo factory with `width_mult × factor`; `widen(sequential, factor)` rebuilds an
nn.Sequential conv/linear net with every hidden layer's output channels × factor (the next layer's inputs and
BatchNorm sizes follow), keeping the first layer's inputs and the last layer's outputs. A layer's cost grows
about factor² (inputs and outputs both wider), the first and last layers about factor×.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from nncompress.analysis.macs import count_macs as _count_macs
from nncompress.core.errors import UserError
from nncompress.quantization.pact import PACT

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class WidenResult:
    """The widened (freshly initialised) model and its cost before and after; MACs need `in_shape`."""

    model: nn.Module
    factor: float
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    def summary(self) -> str:
        s = f"widen ×{self.factor:g}: params {self.params_before:,} → {self.params_after:,} ({self.params_ratio:.2f}×)"
        if self.macs_before is not None and self.macs_after is not None:
            s += f", MACs {self.macs_before:,} → {self.macs_after:,} ({self.macs_after / self.macs_before:.2f}×)"
        return s


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    return _count_macs(model, tuple(in_shape)).total_macs


def _scaled(c: int, factor: float) -> int:
    return max(1, int(round(c * factor)))


def _widen_sequential(model: nn.Sequential, factor: float) -> nn.Sequential:
    layers = list(model.children())
    weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise UserError(f"widen: {type(model).__name__} has no Conv2d/Linear layer to widen")
    first, last = weighted[0], weighted[-1]
    out: list[nn.Module] = []
    c_old = c_new = None  # channels/features flowing out of the previous weighted layer, before / after widening
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            cin = m.in_channels if i == first else c_new
            if i != first and m.in_channels != c_old:
                raise UserError(f"widen: layer {i} ({type(m).__name__}) takes {m.in_channels} channels but the previous "
                                f"layer gives {c_old}; only plain chains can be widened")
            depthwise = m.groups == m.in_channels and m.groups > 1
            if m.groups > 1 and not depthwise:
                raise UserError(f"widen: grouped conv at layer {i} (groups={m.groups}) is not supported; use groups=1 or depthwise")
            cout = m.out_channels if i == last else (cin if depthwise else _scaled(m.out_channels, factor))
            new = nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, cin if depthwise else 1,
                            m.bias is not None, m.padding_mode)
            c_old, c_new = m.out_channels, cout
        elif isinstance(m, nn.Linear):
            if i == first:
                fin = m.in_features
            elif m.in_features % c_old:
                raise UserError(f"widen: Linear layer {i} has {m.in_features} inputs, not a multiple of the previous "
                                f"layer's {c_old} channels")
            else:
                fin = m.in_features // c_old * c_new  # a Flatten before it: spatial size × channels
            fout = m.out_features if i == last else _scaled(m.out_features, factor)
            new = nn.Linear(fin, fout, m.bias is not None)
            c_old, c_new = m.out_features, fout
        elif isinstance(m, _NORMS):
            if c_old is None or m.num_features != c_old:
                raise UserError(f"widen: {type(m).__name__} at layer {i} has {m.num_features} features, expected {c_old}")
            new = type(m)(c_new, m.eps, m.momentum, m.affine, m.track_running_stats)
        elif isinstance(m, PACT):
            new = PACT(m.bits, float(m.alpha.detach()))  # one scalar α: size-agnostic, kept at its (initial) value
        elif any(True for _ in m.parameters()):
            raise UserError(f"widen: layer {i} ({type(m).__name__}) has parameters and is not Conv2d/Linear/BatchNorm; "
                            f"widen a factory with width_mult instead")
        else:
            new = copy.deepcopy(m)  # ReLU, pooling, Flatten, Dropout: size-agnostic
        out.append(new)
    return nn.Sequential(*out)


def widen(model_or_factory: nn.Module | Callable[..., nn.Module], factor: float = 2.0,
          in_shape: tuple[int, ...] | None = None, **factory_kwargs) -> WidenResult:
    """A `factor`× wider, freshly initialised model (WRPN, Mishra et al. 2018) and its params/MACs before and after.

    - a factory (class or function) accepting `width_mult`: built as factory(width_mult=w·factor, **kwargs), with
      w = factory_kwargs' width_mult or 1.0 (e.g. the zoo's MobileNets); the "before" model uses w.
    - an nn.Sequential of Conv2d/Linear/BatchNorm and parameter-free layers: every hidden layer's outputs × factor.
    `in_shape` (C, H, W) adds MAC counts. Anything else raises UserError.
    """
    if not factor > 0:
        raise UserError(f"widen: factor must be > 0, got {factor!r}")
    if isinstance(model_or_factory, nn.Module):
        if factory_kwargs:
            raise UserError("widen: keyword arguments are for a factory, not a built model")
        if not isinstance(model_or_factory, nn.Sequential):
            raise UserError(f"widen: {type(model_or_factory).__name__} is not an nn.Sequential; pass its factory if "
                            f"it takes width_mult")
        before, after = model_or_factory, _widen_sequential(model_or_factory, factor)
    elif callable(model_or_factory):
        try:
            params = inspect.signature(model_or_factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "width_mult" not in params:
            raise UserError(f"widen: {getattr(model_or_factory, '__name__', model_or_factory)} takes no width_mult; "
                            f"pass an nn.Sequential model instead")
        w = float(factory_kwargs.pop("width_mult", 1.0))
        before = model_or_factory(width_mult=w, **factory_kwargs)
        after = model_or_factory(width_mult=w * factor, **factory_kwargs)
    else:
        raise UserError(f"widen: expected an nn.Module or a factory, got {type(model_or_factory).__name__}")
    res = WidenResult(after, float(factor), count_params(before), count_params(after))
    if in_shape is not None:
        res.macs_before, res.macs_after = count_macs(before, tuple(in_shape)), count_macs(after, tuple(in_shape))
    return res
