"""The model seam's *call* part: run any model on any batch, the one place that knows batch formats.

Every method that runs a model (training, evaluation, calibration, sensitivity sweeps, distillation, latency
measurement) goes through these helpers, so none of them assumes `for x, y in loader: model(x)`.

Batch conventions (what `split_batch` understands; a `forward_fn` / `loss_fn` overrides them):

- a tensor `x`                       → inputs `x`, no target (unlabelled calibration data);
- a pair `(x, y)` (tuple or list)    → inputs `x`, target `y` (torchvision / TensorDataset style);
- a 1-tuple `(x,)`                   → inputs `x`, no target;
- a longer tuple `(a, b, ..., y)`    → inputs `(a, b, ...)` (positional), target the last item;
- a mapping (a tokenizer's dict, HF `BatchEncoding`) → inputs the mapping without `labels` (called as
  keyword arguments), target `labels` (or `label`, the name HF datasets use before a collator renames it).

Calling (`call_model`): a tensor is passed as `model(x)`, a tuple/list as `model(*xs)`, a mapping as
`model(**d)`. Hugging Face models return a `ModelOutput` (an ordered dict with attributes); when the output
is such a mapping and carries `logits`, `call_model` returns the logits tensor, so top-1 accuracy, KD losses
and cross-entropy work unchanged on classifiers from transformers. A user `forward_fn(model, inputs)`
overrides all of this and is called with exactly what the caller passed (for the batch-level helpers,
`forward_batch` / `forward_and_loss`, that is the whole batch, so the user sees their own format).

Loss (`forward_and_loss`): `loss_fn(outputs, target)` when given; otherwise the model's own `output.loss`
when it returns one (HF models given `labels`); otherwise cross-entropy, flattening sequence logits
(B, T, V) against token labels (B, T) with the HF ignore index -100.

Anchor: Torch-Pruning's `DependencyGraph(example_inputs=...)` and `torch.export`'s (args, kwargs) take
example inputs as any pytree; Hugging Face's `Trainer.compute_loss` reads `outputs.loss` when labels are given.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from nncompress.core.errors import UserError

ForwardFn = Callable[[nn.Module, Any], Any]
LossFn = Callable[[Any, Any], torch.Tensor]

LABEL_KEYS = ("labels", "label")
IGNORE_INDEX = -100  # the label Hugging Face tokenizers/collators give padding positions


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {list(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"{type(obj).__name__} with keys {list(obj)[:8]}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of {len(obj)} items"
    return type(obj).__name__


def split_batch(batch: Any) -> tuple[Any, Any | None]:
    """(inputs, target or None) of one batch, by the conventions in the module docstring."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if not inputs:
            raise UserError(f"batch is a {_describe(batch)} with no model inputs besides the labels: "
                            "yield the tokenizer's inputs (input_ids, attention_mask, ...) alongside 'labels'")
        return inputs, (batch[key] if key is not None else None)
    if isinstance(batch, (tuple, list)) and not _is_namedtuple(batch):
        if len(batch) == 0:
            raise UserError("batch is an empty tuple: yield a tensor, an (x, y) pair or a dict of tensors")
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    return batch, None  # a namedtuple, dataclass or custom object: passed whole; the user's forward_fn knows it


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def example_inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) to call the model with on `batch`'s inputs, as `torch.export.export` and ONNX export take them.

    Accepts a batch in any of the conventions, or an iterable of batches (a DataLoader: its first batch).
    """
    if not isinstance(batch, (torch.Tensor, Mapping, tuple, list)) and hasattr(batch, "__iter__"):
        try:
            batch = next(iter(batch))
        except StopIteration:
            raise UserError("the data yields no batches: cannot take example inputs from it") from None
    inputs, _ = split_batch(batch)
    return as_args_kwargs(inputs)


def as_args_kwargs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """How `call_model` spreads inputs: a mapping → kwargs, a tuple/list → positional args, anything else → one arg."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)) and not _is_namedtuple(inputs):
        return tuple(inputs), {}
    return (inputs,), {}


def logits_of(output: Any) -> Any:
    """The logits of a model output: `output['logits']` for HF `ModelOutput`s (ordered dicts) and other mappings
    carrying logits, the output itself otherwise (a tensor, or a tuple such as GoogLeNet's training-mode
    (logits, aux1, aux2) that the user's loss_fn understands whole)."""
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return output


def call_model(model: nn.Module, inputs: Any, forward_fn: ForwardFn | None = None) -> Any:
    """Run `model` on `inputs` and return its logits (see `logits_of`): tensor → model(x), tuple/list →
    model(*xs), mapping → model(**d). A `forward_fn(model, inputs)` overrides everything and its return value
    is passed through `logits_of` as well."""
    if forward_fn is not None:
        return logits_of(forward_fn(model, inputs))
    args, kwargs = as_args_kwargs(inputs)
    return logits_of(model(*args, **kwargs))


@torch.no_grad()
def run_batches(model: nn.Module, batches, forward_fn: ForwardFn | None = None) -> None:
    """Run `model` in eval mode, without gradients, on each batch's inputs (labels dropped; `forward_fn(model,
    batch)` sees the whole batch), on the model's own device — the pass that hooks (observers, statistics,
    corrections) listen to. The train/eval mode is restored afterwards."""
    from nncompress.training.device import module_device

    device = module_device(model)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = batch if forward_fn is not None else split_batch(batch)[0]
            call_model(model, to_device(inputs, device), forward_fn)
    finally:
        model.train(was_training)


def forward_batch(model: nn.Module, batch: Any, forward_fn: ForwardFn | None = None) -> tuple[Any, Any | None]:
    """(logits, target or None) for one batch: the user's `forward_fn(model, batch)` sees the whole batch."""
    inputs, target = split_batch(batch)
    if forward_fn is not None:
        return logits_of(forward_fn(model, batch)), target
    return call_model(model, inputs), target


@dataclass
class StepOutput:
    """What one forward pass with a loss produced: the logits, the target (None when the batch had none) and the loss."""

    outputs: Any
    target: Any | None
    loss: torch.Tensor


def _accepts_kwarg(model: nn.Module, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (or **kwargs); asked once per forward function, not per step."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # the wrapper's forward takes **kwargs whatever the model does
    forward = model.forward
    return _signature_accepts(getattr(forward, "__func__", forward), name)


@functools.lru_cache(maxsize=256)
def _signature_accepts(forward: Callable, name: str) -> bool:
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def default_loss(outputs: Any, target: Any) -> torch.Tensor:
    """Cross-entropy of logits against class indices (or class probabilities); sequence logits (B, T, V) against
    (B, T) token labels are flattened, classes last; HF's ignore index -100 marks padding positions. Other
    shapes go to `F.cross_entropy` as they are (classes in dimension 1, e.g. (B, C, H, W) segmentation)."""
    logits = logits_of(outputs)
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise UserError(f"the default cross-entropy loss needs logits and a target tensor, got {_describe(logits)} and "
                        f"{_describe(target)}: pass loss_fn(outputs, target)")
    if logits.dim() == 3 and target.dim() == 2 and logits.shape[:2] == target.shape and not target.is_floating_point():
        # (B, T, V) language-model / token-classification logits: classes last, unlike (B, C, H, W) segmentation
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)
    return nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def forward_and_loss(model: nn.Module, batch: Any, loss_fn: LossFn | None = None,
                     forward_fn: ForwardFn | None = None) -> StepOutput:
    """One forward pass and its loss, by the rules in the module docstring; the logits come back for callbacks."""
    inputs, target = split_batch(batch)
    if forward_fn is not None:
        raw = forward_fn(model, batch)
    elif isinstance(batch, Mapping) and target is not None and loss_fn is None and _accepts_kwarg(model, "labels"):
        key = next(k for k in LABEL_KEYS if k in batch)
        raw = model(**inputs, labels=batch[key])  # HF computes its own (shifted, masked) loss from labels
    else:
        args, kwargs = as_args_kwargs(inputs)
        raw = model(*args, **kwargs)
    outputs = logits_of(raw)
    if loss_fn is not None:
        return StepOutput(outputs, target, loss_fn(outputs, target))
    own = raw.get("loss") if isinstance(raw, Mapping) else getattr(raw, "loss", None)
    if isinstance(own, torch.Tensor):
        return StepOutput(outputs, target, own)
    if target is None:
        raise UserError(f"batch is a {_describe(batch)} with no target and the model returned no loss: yield (x, y) pairs "
                        "or dicts with 'labels', or pass loss_fn/forward_fn")
    return StepOutput(outputs, target, default_loss(outputs, target))


def compute_loss(model: nn.Module, batch: Any, loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """The loss of `model` on one batch (see `forward_and_loss`)."""
    return forward_and_loss(model, batch, loss_fn, forward_fn).loss


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """`batch` with every tensor leaf moved to `device`, any pytree (tuples, lists, dicts, namedtuples); mappings
    that are not dicts (HF `BatchEncoding`) come back as plain dicts of the same keys."""
    device = torch.device(device)

    def move(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and leaf.device != device:
            return leaf.to(device, non_blocking=non_blocking)
        return leaf

    return pytree.tree_map(move, _plain(batch))


def _plain(obj: Any) -> Any:
    """Non-dict mappings (UserDict-based BatchEncoding) as dicts, recursively, so pytree can walk them."""
    if isinstance(obj, Mapping) and not isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if type(obj) is dict:  # dict subclasses pytree knows (OrderedDict, defaultdict, HF ModelOutput) stay as they are
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple) and not _is_namedtuple(obj):
        return tuple(_plain(v) for v in obj)
    return obj


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a pytree, in pytree order."""
    return [t for t in pytree.tree_leaves(_plain(obj)) if isinstance(t, torch.Tensor)]


def batch_size(batch: Any) -> int:
    """Examples in a batch: the target's length when there is one, else the leading dimension of the first input tensor."""
    inputs, target = split_batch(batch)
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        return int(target.shape[0])
    for t in tensor_leaves(inputs):
        if t.dim() > 0:
            return int(t.shape[0])
    if target is not None and hasattr(target, "__len__"):
        return len(target)
    return 1
