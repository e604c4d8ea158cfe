"""The model seam's *capture* part: a graph of a model, for the methods that truly need one.

Two kinds of graph, because methods need different things:

- **module level** (`trace_modules`): a torch.fx `GraphModule` whose nodes call the model's own submodules
  (`call_module` conv/linear/bn nodes). Channel dependency graphs (structured pruning) and static
  quantization's fusion/observer insertion read this level. Real models often hold a submodule fx cannot
  trace (Python control flow on tensor values, iteration over a tensor's shape, data-dependent shapes).
  Instead of failing the whole model, the tracer keeps such a submodule whole: it becomes an opaque leaf
  (retraced with it as a leaf, innermost culprit first), so the rest of the model still gets a graph; the
  methods leave an opaque module alone (pruning pins its channels, quantization keeps it in float). Only when
  the top-level forward itself cannot be traced does capture fail, with one line naming the model, the
  operation and the source line that stopped it. Which modules were kept whole is in `gm.meta["opaque_modules"]`.
- **operator level** (`capture_graph`): `torch.export.export(strict=False)` first — it runs the real Python
  forward on fake tensors, so control flow on shapes, kwargs inputs (a tokenizer's dict) and Hugging Face
  models work — with a dynamic batch axis (and sequence axis for token inputs) where the model allows it;
  then the module-level fx trace as a fallback; when both fail, a UserError naming the module and operation.

Anchors: torch.fx `Tracer.is_leaf_module`; `torch.export.export(..., strict=False)` and `Dim` for dynamic shapes;
Torch-Pruning builds its DependencyGraph from example inputs of any pytree.
"""
from __future__ import annotations

import io
import logging
import traceback
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Any

import torch
from torch import fx, nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import as_args_kwargs, tensor_leaves

_TORCH_DIR_MARKERS = ("/torch/", "\\torch\\", "/transformers/", "/torch_pruning/", "/nncompress/core/capture.py")


class _LeafTracer(fx.Tracer):
    """An fx tracer that remembers which module it is inside (to name a culprit) and treats the modules in
    `opaque` as leaves, besides torch's own leaves (the built-in `torch.nn` layers)."""

    def __init__(self, opaque: Iterable[str] = ()) -> None:
        super().__init__()
        self.opaque = set(opaque)
        self.stack: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.stack.append((name, type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def _operation(e: BaseException) -> str:
    """'<message> at file.py:line `source`': the error and the innermost line of model code (not torch's) it came from."""
    msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not any(k in f.filename for k in _TORCH_DIR_MARKERS)]
    if frames:
        f = frames[-1]
        where = f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
        code = f" `{f.line.strip()[:80]}`" if f.line else ""
        return f"{type(e).__name__}: {msg} at {where}{code}"
    return f"{type(e).__name__}: {msg}"


def trace_modules(model: nn.Module, purpose: str = "this method", leaf_modules: Iterable[str] = (),
                  concrete_args: dict[str, Any] | None = None, max_opaque: int | None = None) -> fx.GraphModule:
    """Module-level torch.fx graph of `model` (see the module docstring); untraceable submodules kept whole.

    `leaf_modules`: qualified names to keep whole from the start. `max_opaque`: how many submodules may be
    made opaque before giving up (default: all of them). Raises UserError, naming the model, the operation and
    its source line, when the top-level forward cannot be traced; `purpose` says what needed the graph.
    """
    opaque: list[str] = list(leaf_modules)
    limit = len(list(model.modules())) if max_opaque is None else max_opaque
    reasons: dict[str, str] = {}
    while True:
        tracer = _LeafTracer(opaque)
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
            break
        except Exception as e:  # noqa: BLE001 - fx raises many types; all mean "not traceable here"
            culprit = tracer.stack[-1] if tracer.stack else None
            if culprit is None or culprit[0] in opaque or len(reasons) >= limit:
                where = (f"module '{culprit[0]}' ({culprit[1]})" if culprit else f"the top-level forward of {type(model).__name__}")
                raise UserError(f"cannot capture a graph of {type(model).__name__} for {purpose}: {where} is not traceable "
                                f"({_operation(e)}); remove Python control flow on tensor values from that forward, "
                                "or pass a model whose top-level forward only calls submodules and tensor operations") from None
            opaque.append(culprit[0])
            reasons[culprit[0]] = f"{culprit[1]}: {_operation(e)}"
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.meta["opaque_modules"] = dict(reasons)
    if reasons:
        shown = "; ".join(f"'{n}' ({r})" for n, r in list(reasons.items())[:3])
        more = f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        warnings.warn(f"{purpose}: kept {len(reasons)} submodule(s) of {type(model).__name__} whole because torch.fx cannot "
                      f"trace inside them, so {purpose} leaves them unchanged: {shown}{more}", RuntimeWarning, stacklevel=2)
    return gm


def _dynamic_shapes(args: tuple, kwargs: dict, dynamic: bool) -> tuple[dict | None, tuple, dict]:
    """(dynamic_shapes, args, kwargs): dim 0 of every input tensor may vary (the batch), and when the inputs hold
    integer token ids of rank 2, dim 1 of every rank-2 input may too (the sequence: ids, attention mask, token
    types). `Dim.AUTO` lets torch.export keep a dimension static where the model fixes it instead of failing.
    A batch of 1 is repeated to 2, because torch.export specializes a size-1 dimension to the constant 1."""
    if not dynamic:
        return None, args, kwargs
    tokens = any(isinstance(t, torch.Tensor) and t.dim() == 2 and not t.is_floating_point() and t.shape[1] > 1
                 for t in (*args, *kwargs.values()))
    auto = torch.export.Dim.AUTO

    def spec(t: Any):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return None
        axes = {0: auto}
        if tokens and t.dim() == 2:
            axes[1] = auto
        return axes

    def widen(t: Any):
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1:
            return t.repeat(2, *[1] * (t.dim() - 1))
        return t

    args = tuple(widen(a) for a in args)
    kwargs = {k: widen(v) for k, v in kwargs.items()}
    return ({"args": tuple(spec(a) for a in args), "kwargs": {k: spec(v) for k, v in kwargs.items()}}), args, kwargs


def export_program(model: nn.Module, example_inputs: Any, dynamic: bool = True) -> torch.export.ExportedProgram:
    """`torch.export.export(strict=False)` of `model` on example inputs given as `model_io` takes them (a tensor,
    a tuple of positional inputs, a dict of keyword inputs); dynamic batch (and token sequence) axes, falling
    back to static shapes when the model pins them (e.g. a reshape to a constant batch)."""
    args, kwargs = as_args_kwargs(example_inputs)
    if not tensor_leaves((args, kwargs)):
        raise UserError(f"example inputs for {type(model).__name__} hold no tensor: pass a batch of real inputs")
    errors = []
    for dyn in ((True, False) if dynamic else (False,)):
        shapes, a, k = _dynamic_shapes(args, kwargs, dyn)
        if shapes is not None:
            shapes = _match_signature(model, shapes, a, k)
        try:
            with torch.no_grad(), _quiet_torch_logs():
                return torch.export.export(model, a, k, dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    raise errors[-1]


@contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs whole graphs and symbolic-shape notes when a model fails to export; the caller turns the
    failure into one line, so torch's loggers are held at ERROR for the attempt."""
    logger = logging.getLogger("torch")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(before)


def _match_signature(model: nn.Module, shapes: dict, args: tuple, kwargs: dict):
    """torch.export wants dynamic_shapes keyed like forward's parameters: positional args by their names."""
    import inspect

    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return shapes["args"] if not kwargs else None
    if len(params) < len(args):  # *args forward: a tuple for the positional ones
        return shapes["args"] if not kwargs else None
    named = dict(zip(params, shapes["args"]))
    named.update(shapes["kwargs"])
    return named


def capture_graph(model: nn.Module, example_inputs: Any, purpose: str = "this method",
                  dynamic: bool = True) -> fx.GraphModule:
    """An operator-level graph of `model`: torch.export (non-strict, dynamic batch) first, the module-level fx
    trace as a fallback; one UserError naming the module and the operation when both fail.

    The torch.export result is `ExportedProgram.module()`, a GraphModule whose `meta["captured_by"]` is
    "torch.export"; the fallback's is "torch.fx". Inputs are the model's inputs (see `model_io.as_args_kwargs`).
    """
    was_training = model.training
    model.eval()
    try:
        try:
            gm = export_program(model, example_inputs, dynamic).module()
            gm.meta["captured_by"] = "torch.export"
            return gm
        except UserError:
            raise
        except Exception as export_error:  # noqa: BLE001
            try:
                gm = trace_modules(model, purpose)
            except UserError as fx_error:
                raise UserError(f"{fx_error} (torch.export also failed: {_operation(export_error)})") from None
            gm.meta["captured_by"] = "torch.fx"
            return gm
    finally:
        model.train(was_training)
