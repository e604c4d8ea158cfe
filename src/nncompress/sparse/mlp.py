"""A whole sparse MLP in one C call: no Python, no dispatcher, no allocation between its layers.

At batch 1 the layers of a pruned LeNet-300-100 are tiny (fc1 keeps ~15 k of 235 k weights, fc3 a few hundred):
each sparse product takes microseconds, and calling it layer by layer from Python — module call, checks,
output allocation, ctypes marshalling, then `torch.relu` on the result — costs about as much again per layer.
So a chain Flatten? → Linear → ReLU? → Linear → … → Linear, found in a module's traced forward, can run as
one call of `nnc_mlp_forward` (sparse/kernel.py): per sample, every layer's panel-CSR product (the same inner
loop and summation order as the per-layer "kernel" format) and its ReLU, with the hidden activations in a
two-slot scratch buffer that stays in L1.

`find_mlp_chain(module)` recognises the chain with torch.fx (no graph needed for anything else); `FusedSparseMLP`
executes it from the chain's `SparseLinear` layers (format "kernel"), reading their packed arrays, so nothing is
stored twice. `sparsify` installs it as the module's `forward` (an instance attribute, the way Hugging Face
accelerate attaches hooks) only where it measured it faster than the per-layer choice; `unfuse(module)` undoes it.
"""
from __future__ import annotations

import copy
import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.sparse import kernel as _kernel
from nncompress.sparse.modules import SparseLinear, _inference_only

_RELU_FUNCS = (torch.relu, F.relu, torch.nn.functional.relu)
_FLATTEN_FUNCS = (torch.flatten,)


@dataclass(frozen=True)
class MLPChain:
    """A module whose forward is: optional flatten(start_dim=1), then Linear layers each optionally followed by ReLU."""

    linears: tuple[str, ...]  # names relative to the module, in order
    relu: tuple[bool, ...]  # ReLU after each Linear
    flatten: bool  # the input is flattened from dim 1 first


class _Trace(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Linear, SparseLinear)) or super().is_leaf_module(m, qualname)


def find_mlp_chain(module: nn.Module) -> MLPChain | None:
    """The MLP chain `module.forward` computes, or None when it computes anything else (or cannot be traced)."""
    if isinstance(module, (nn.Linear, SparseLinear)) or "forward" in vars(module):
        return None
    try:
        graph = _Trace().trace(module)
    except Exception:  # noqa: BLE001 - any untraceable forward is simply not a chain
        return None
    mods = dict(module.named_modules())
    nodes = [n for n in graph.nodes]
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        return None
    linears: list[str] = []
    relu: list[bool] = []
    flatten = False
    prev = nodes[0]
    for n in nodes[1:]:
        if n.op == "output":
            if n.args != (prev,) or not linears:
                return None
            return MLPChain(tuple(linears), tuple(relu), flatten) if len(linears) >= 2 else None
        if list(n.all_input_nodes) != [prev] or len(prev.users) != 1:
            return None  # not a chain: a value is used twice, or a node reads something else
        target = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(target, (nn.Linear, SparseLinear)) and n.args == (prev,) and not n.kwargs:
            linears.append(str(n.target))
            relu.append(False)
        elif ((n.op == "call_function" and n.target in _RELU_FUNCS and n.args == (prev,) and not n.kwargs.get("inplace", False))
              or (n.op == "call_method" and n.target == "relu" and n.args == (prev,))
              or (isinstance(target, nn.ReLU) and n.args == (prev,))):
            if not linears or relu[-1]:
                return None
            relu[-1] = True
        elif (not linears and not flatten and
              ((n.op == "call_function" and n.target in _FLATTEN_FUNCS and _flatten_from_1(n.args[1:], n.kwargs))
               or (isinstance(target, nn.Flatten) and target.start_dim == 1 and target.end_dim == -1))):
            flatten = True
        else:
            return None
        prev = n
    return None


def _flatten_from_1(args: tuple, kwargs: dict) -> bool:
    start = args[0] if args else kwargs.get("start_dim", 0)
    end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
    return start == 1 and end == -1


class _MLPStruct(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int64), ("panel", ctypes.c_int64), ("max_dim", ctypes.c_int64),
                ("dims", ctypes.c_void_p), ("relu", ctypes.c_void_p), ("indptr", ctypes.c_void_p), ("idx", ctypes.c_void_p),
                ("val", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class FusedSparseMLP:
    """Callable running a chain of "kernel"-format `SparseLinear` layers (+ ReLUs, + leading flatten) in one C call.

    Holds references to the layers, not copies: the packed arrays are those of each layer's kernel executor. If a
    layer's executor is rebuilt (e.g. `load_state_dict`), the next call re-reads it.
    """

    def __init__(self, layers: list[SparseLinear], relu: tuple[bool, ...], flatten: bool):
        if _kernel.load() is None:
            raise UserError(f"the fused sparse MLP needs the C kernel, which is unavailable here ({_kernel.unavailable_reason()})")
        if len(layers) != len(relu) or not layers:
            raise UserError("FusedSparseMLP: give one relu flag per layer, and at least one layer")
        for a, b in zip(layers, layers[1:]):
            if a.out_features != b.in_features:
                raise UserError(f"FusedSparseMLP: a layer with {a.out_features} outputs feeds one with {b.in_features} inputs")
        for layer in layers:
            if not isinstance(layer, SparseLinear) or layer.format != "kernel":
                raise UserError("FusedSparseMLP runs SparseLinear layers in format 'kernel'")
        self.layers = list(layers)
        self.relu = tuple(bool(r) for r in relu)
        self.flatten = bool(flatten)
        self.in_features, self.out_features = layers[0].in_features, layers[-1].out_features
        self._fn = _kernel.load().nnc_mlp_forward
        self._pack()

    def _pack(self) -> None:
        n = len(self.layers)
        self._runs = tuple(layer._run for layer in self.layers)
        keeps = [r.keep for r in self._runs]  # (idx, ptr, val, bias-or-0) per layer, see modules._build_executor
        dims = torch.tensor([self.layers[0].in_features] + [layer.out_features for layer in self.layers], dtype=torch.int64)
        relu = torch.tensor(self.relu, dtype=torch.int64)
        ptrs = ctypes.c_void_p * n
        self._arrays = (dims, relu, keeps)
        self._ptrs = (ptrs(*[k[1].data_ptr() for k in keeps]), ptrs(*[k[0].data_ptr() for k in keeps]),
                      ptrs(*[k[2].data_ptr() for k in keeps]),
                      ptrs(*[(None if isinstance(k[3], int) else k[3].data_ptr()) for k in keeps]))
        self._struct = _MLPStruct(n, _kernel.PANEL, int(dims[1:-1].max()) if n > 1 else 1, dims.data_ptr(), relu.data_ptr(),
                                  *(ctypes.cast(p, ctypes.c_void_p) for p in self._ptrs))
        self._struct_ref = ctypes.byref(self._struct)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        first = self.layers[0]
        if first.training or x.requires_grad or x.dtype is not torch.float32 or not x.is_cpu:
            _inference_only(first, x)
        if any(r is not layer._run for r, layer in zip(self._runs, self.layers)):
            self._pack()  # an executor was rebuilt (state dict loaded): point at its new arrays
        if self.flatten:
            n = x.shape[0] if x.dim() else 1
            if x.numel() != n * self.in_features:
                raise UserError(f"fused sparse MLP: input {list(x.shape)} does not flatten to {self.in_features} features")
            lead = (n,)
        else:
            if x.shape[-1] != self.in_features:
                raise UserError(f"fused sparse MLP: input {list(x.shape)} does not end in {self.in_features} features")
            lead = tuple(x.shape[:-1])
            n = x.numel() // self.in_features
        if not x.is_contiguous():
            x = x.contiguous()
        y = torch.empty(*lead, self.out_features)
        if self._fn(self._struct_ref, n, x.data_ptr(), y.data_ptr()) != 0:
            raise MemoryError("fused sparse MLP: scratch allocation failed")
        return y

    def __reduce__(self):  # deepcopy / pickle: rebuild from the (copied) layers; raw pointers never travel
        return (FusedSparseMLP, (self.layers, self.relu, self.flatten))

    def __deepcopy__(self, memo: dict) -> "FusedSparseMLP":
        return FusedSparseMLP(copy.deepcopy(self.layers, memo), self.relu, self.flatten)

    def __repr__(self) -> str:
        dims = [self.in_features] + [layer.out_features for layer in self.layers]
        return f"FusedSparseMLP({' -> '.join(map(str, dims))}, relu={list(self.relu)}, flatten={self.flatten})"


def fuse(module: nn.Module, chain: MLPChain) -> FusedSparseMLP:
    """Install a FusedSparseMLP as `module.forward`; the chain's layers must already be "kernel" SparseLinear."""
    layers = [module.get_submodule(name) for name in chain.linears]
    fused = FusedSparseMLP(layers, chain.relu, chain.flatten)
    module.forward = fused  # instance attribute: nn.Module.__call__ (hooks included) now calls it
    return fused


def unfuse(module: nn.Module) -> bool:
    """Remove an installed fused forward (the module then runs its own forward again); True if there was one."""
    if isinstance(vars(module).get("forward"), FusedSparseMLP):
        del module.forward
        return True
    return False


def fused_modules(model: nn.Module) -> dict[str, FusedSparseMLP]:
    """Every module of `model` that runs a fused forward, by name."""
    return {name: vars(m)["forward"] for name, m in model.named_modules() if isinstance(vars(m).get("forward"), FusedSparseMLP)}
