"""A plain, seeded supervised training loop and top-1 evaluation, on the CPU or a GPU (`TrainConfig.device`)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError, check_finite_weights, check_hyperparameter
from nncompress.core.model_io import ForwardFn, batch_size, forward_and_loss, forward_batch, split_batch, to_device
from nncompress.core.progress import track
from nncompress.training.callbacks import Callback
from nncompress.training.device import module_device, resolve_device


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # "cosine" or "constant"
    seed: int = 0
    progress: bool | None = None  # None: bars when on a terminal
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK when a GPU is visible, else cpu), "cpu", "cuda", "cuda:N"
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse a NaN/inf or non-positive learning rate (and other impossible settings) before any work: an lr of
        nan trains to a chance-level model that would otherwise be saved like a result (issue 12)."""
        self.lr = check_hyperparameter("learning rate lr", self.lr)
        self.momentum = check_hyperparameter("momentum", self.momentum, positive=False)
        self.weight_decay = check_hyperparameter("weight_decay", self.weight_decay, positive=False)
        if self.momentum < 0 or self.weight_decay < 0:
            raise UserError(f"momentum and weight_decay must be ≥ 0, got {self.momentum} and {self.weight_decay}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise UserError(f"epochs must be a whole number ≥ 0, got {self.epochs!r}")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}': use 'sgd' or 'adam'")


def train(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    val_loader: DataLoader | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    forward_fn: ForwardFn | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place; returns one dict of metrics per epoch (loss, and val_top1 if val_loader).

    Batches may be in any format `nncompress.core.model_io` understands: (x, y) pairs, tensors, dicts from a
    tokenizer with `labels`, nested pytrees. `loss_fn(outputs, target)` defaults to cross-entropy, or the
    model's own `output.loss` when it takes `labels` (Hugging Face); `forward_fn(model, batch)` replaces the
    call. Callbacks' `loss(model, x, y, output, loss)` get the batch's inputs as x and its target as y.

    The model trains on `cfg.device` and is handed back on the device it came on, so callers that go on with
    CPU work (k-means, Huffman coding, export) need not care where it trained. Batches are moved per step.
    A passed `optimizer` must hold the model's own parameters: `Module.to` keeps the Parameter objects, and
    any state the optimizer already has (momentum, a resumed checkpoint) is moved beside them.
    """
    cfg = cfg or TrainConfig()
    device, home = resolve_device(cfg.device), module_device(model)
    torch.manual_seed(cfg.seed)
    _move(model, device, optimizer)
    opt = optimizer or _optimizer(model, cfg)
    total_steps = max(1, cfg.epochs * len(loader))
    sched = None
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    net, layout = data_parallel(model), _layout(model)  # DDP under torchrun; callbacks see the plain model
    for cb in callbacks:
        cb.on_train_begin(model, opt)
    step, history = 0, []
    for epoch in track(range(cfg.epochs), "training", total=cfg.epochs, enabled=cfg.progress):
        model.train()
        for cb in callbacks:
            cb.on_epoch_begin(epoch, model)
        loss_sum, n = torch.zeros((), dtype=torch.float64, device=device), 0  # read once per epoch: no GPU sync per step
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first step with a NaN/inf loss, on the device
        for i, batch in enumerate(loader):
            batch = to_device(batch, device)
            for cb in callbacks:
                cb.on_step_begin(step, model)
            if net is not model and _layout(model) != layout:  # a callback re-parametrized a layer: new autograd
                net, layout = data_parallel(model), _layout(model)  # leaves, so DDP's gradient hooks must be rebuilt
            fwd = forward_and_loss(net, batch, loss_fn, forward_fn)
            x, y, out, loss = split_batch(batch)[0], fwd.target, fwd.outputs, fwd.loss
            for cb in callbacks:
                loss = cb.loss(model, x, y, out, loss)
            if _reads_loss_every_step(device) or step < _CHECK_FIRST_STEPS:  # free on the host; on a GPU, the first steps
                _stop_if_nonfinite(float(loss.detach()), epoch, i, cfg)
            else:  # no sync: remember the first bad step on the device, read with the epoch's loss
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for cb in callbacks:
                cb.on_after_backward(model)
            opt.step()
            if sched is not None:
                sched.step()
            for cb in callbacks:
                cb.on_step_end(step, model)
            size = batch_size(batch)
            loss_sum += loss.detach().double() * size  # float64, as Python floats were: same sums bit for bit
            n += size
            step += 1
        metrics = {"epoch": float(epoch), "loss": float(loss_sum) / max(n, 1)}
        if int(first_bad) >= 0 or not math.isfinite(metrics["loss"]):  # before callbacks can checkpoint the epoch
            _stop_if_nonfinite(None, epoch, int(first_bad) if int(first_bad) >= 0 else None, cfg)
        if val_loader is not None:
            metrics["val_top1"] = evaluate(model, val_loader, forward_fn=forward_fn)
        for cb in callbacks:
            cb.on_epoch_end(epoch, model, metrics)
        history.append(metrics)
    if cfg.epochs > 0:  # the loss can stay finite while a weight is not (an inf in an unused branch, BN statistics)
        check_finite_weights(model, f"training ({cfg.epochs} epochs at lr={cfg.lr:g})",
                             f"lower the learning rate (lr={cfg.lr:g}) or check the data")
    for cb in callbacks:
        cb.on_train_end(model)
    _move(model, home, opt)
    cfg.history.extend(history)
    return history


_CHECK_FIRST_STEPS = 3  # loss read on the host at these first steps of a run even on a GPU (a bad lr shows at once)


def _reads_loss_every_step(device: torch.device) -> bool:
    """Whether the loss is read on the host at every step (the CPU: no sync to avoid) or tracked on the device."""
    return device.type == "cpu"


def _stop_if_nonfinite(value: float | None, epoch: int, i: int | None, cfg: TrainConfig) -> None:
    """Raise DivergenceError naming where the loss went NaN/inf and what to change (epochs and steps counted from 1).
    `value` None: found on the device at epoch end, so only "nan or inf" is known."""
    if value is not None and math.isfinite(value):
        return
    word = "nan or inf" if value is None else ("nan" if math.isnan(value) else "inf")
    at = f"epoch {epoch + 1}" + (f" step {i + 1}" if i is not None else "")
    raise DivergenceError(f"training diverged at {at}: loss is {word}; "
                          f"lower the learning rate (lr={cfg.lr:g}) or check the data and the model's outputs")


def _move(model: nn.Module, device: torch.device, optimizer: torch.optim.Optimizer | None) -> None:
    """Put the model on `device`, and the optimizer's per-parameter state (kept beside each parameter) with it."""
    if module_device(model) == device:
        return
    model.to(device)
    if optimizer is not None and optimizer.state:
        optimizer.load_state_dict(optimizer.state_dict())  # load_state_dict casts state to each parameter's device


def data_parallel(model: nn.Module) -> nn.Module:
    """`model` wrapped in DistributedDataParallel when running under torchrun with more than one rank, else itself.

    DDP averages gradients across ranks during backward, g = (1/W)·Σ_r g_r, and syncs buffers (masks, BN
    statistics, codebook indices) from rank 0 before each forward. Rebuilt when the parameter layout changes.
    On a GPU it is bound to the model's device (one GPU per rank); on the CPU it takes no device_ids.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    if not any(p.requires_grad for p in model.parameters()):
        return model
    device = module_device(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _layout(model: nn.Module) -> tuple[str, ...]:
    """Names of the trainable parameters: changes when a callback (pruning, sharing) re-parametrizes a layer."""
    return tuple(n for n, p in model.named_parameters() if p.requires_grad)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """Concatenated model outputs (logits) over a loader of any batch format, in eval mode, computed on the
    model's device, returned on the CPU."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    outs = [forward_batch(model, to_device(batch, device), forward_fn)[0].cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(outs)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, forward_fn: ForwardFn | None = None) -> float:
    """Top-1 accuracy in percent over a labelled loader of any batch format, computed on the model's device."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    correct, total = 0, 0
    for batch in loader:
        out, y = forward_batch(model, to_device(batch, device), forward_fn)
        if y is None:
            model.train(was_training)
            raise UserError("evaluation needs labelled batches: yield (x, y) pairs or dicts with 'labels'")
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)
