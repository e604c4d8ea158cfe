"""One-call twins of the CLI commands: load a model and data, prune channels (or run NetAdapt), fine-tune,
measure before and after, save the thinned weights. Reports are plain dicts (the CLI prints them)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights, save_weights
from nncompress.core.seed import seed_everything
from nncompress.data import Dataset, load_dataset, make_loaders
from nncompress.pruning.mask import load_masked_state_dict
from nncompress.pruning.structured.measure import count_macs, count_params, latency_ms
from nncompress.pruning.structured.netadapt import FirstBatches, netadapt
from nncompress.pruning.structured.prune import prune_channels
from nncompress.pruning.structured.sensitivity import ratios_from_sensitivity, structured_sensitivity
from nncompress.pruning.structured.thin import resize_to_state_dict
from nncompress.training import TrainConfig, evaluate, train


def measure(model: nn.Module, example_input: torch.Tensor, test_loader: DataLoader, threads: int = 1, repeats: int = 20) -> dict:
    """Parameters, MACs per sample, median latency (ms) on `example_input` at `threads` threads, top-1 (%)."""
    return {"params": count_params(model), "macs": count_macs(model, example_input),
            "latency_ms": latency_ms(model, example_input, repeats=repeats, threads=threads), "top1": evaluate(model, test_loader)}


def _load(model_name: str, ds: Dataset, weights: str | os.PathLike | None, pretrain_epochs: int, loader: DataLoader, seed: int) -> nn.Module:
    model = build_model(model_name, ds.input_shape, ds.num_classes)
    if weights is not None:
        state = load_weights(weights)
        resize_to_state_dict(model, state)  # a model thinned before loads into its narrower shapes
        if any(".parametrizations." in k or k.startswith("parametrizations.") for k in state):
            try:  # saved with pruning masks on: they come back as masks, and channel removal carries them along
                load_masked_state_dict(model, state)
            except UserError as e:
                raise UserError(f"weights {weights} (masked) for model '{model_name}': {e}") from None
        else:
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:200]
                raise UserError(f"weights {weights} do not fit model '{model_name}' on this data: {detail}") from None
    elif pretrain_epochs > 0:
        train(model, loader, TrainConfig(epochs=pretrain_epochs, lr=0.05, weight_decay=5e-4, seed=seed))
    return model.eval()


def _holdout(ds: Dataset, fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    """Split the training set: proposals and sensitivity are judged on held-out training data, not the test set."""
    n = len(ds.x_train) - max(1, int(len(ds.x_train) * fraction))
    return (Dataset(ds.name, ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test, ds.num_classes),
            Dataset(ds.name, ds.x_train[:n], ds.y_train[:n], ds.x_train[n:], ds.y_train[n:], ds.num_classes))


def _setup(model: str, data: str, weights, pretrain_epochs: int, latency_batch: int, threads: int, seed: int):
    """Seeded data, loaders, the trained model, the latency batch and the model's measurements before pruning."""
    seed_everything(seed)
    ds = load_dataset(data)
    train_loader, test_loader = make_loaders(ds, seed=seed)
    net = _load(model, ds, weights, pretrain_epochs, train_loader, seed)
    x = ds.x_test[:latency_batch]
    return ds, train_loader, test_loader, net, x, measure(net, x, test_loader, threads)


def _summary(before: dict, after: dict) -> dict:
    return {"params_ratio": before["params"] / after["params"], "macs_ratio": before["macs"] / after["macs"],
            "speedup": before["latency_ms"] / after["latency_ms"], "top1_drop_pp": before["top1"] - after["top1"]}


def run_prune_channels(
    model: str = "resnet20",
    data: str = "mnist5k",
    weights: str | os.PathLike | None = None,
    *,
    criterion: str = "l1",
    ratio: float = 0.5,
    layer_ratios: Mapping[str, float] | None = None,
    remove_macs: float | None = None,
    sensitivity_drop: float | None = None,
    round_to: int = 1,
    finetune_epochs: int = 1,
    pretrain_epochs: int = 3,
    lr: float = 0.01,
    latency_batch: int = 32,
    threads: int = 1,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> dict:
    """Prune channels of a model (trained from `weights`, or for `pretrain_epochs` when none), fine-tune it,
    and report params, MACs, measured latency and top-1 before and after; save the weights to `out`.

    Ratios: uniform `ratio`, per group/layer `layer_ratios`, `remove_macs` (fraction of MACs), or
    `sensitivity_drop` (per-group ratios from a sensitivity scan allowing that many points of top-1 drop).
    """
    ds, train_loader, test_loader, net, x, before = _setup(model, data, weights, pretrain_epochs, latency_batch, threads, seed)
    if sensitivity_drop is not None:
        _, held = _holdout(ds)
        _, held_loader = make_loaders(held, seed=seed)
        scan = structured_sensitivity(net, x, held_loader, criterion if criterion != "taylor" else "l1", ratios=(0.1, 0.25, 0.5, 0.75))
        layer_ratios = {**ratios_from_sensitivity(scan, evaluate(net, held_loader), sensitivity_drop), **(layer_ratios or {})}
        ratio = 0.0
    calib = list(FirstBatches(train_loader, 8)) if criterion == "taylor" else None
    pruned = prune_channels(net, x, criterion, ratio, ratios=layer_ratios, remove_macs=remove_macs, data=calib,
                            round_to=round_to, seed=seed)
    pruned_top1 = evaluate(pruned, test_loader)
    if finetune_epochs > 0:
        train(pruned, train_loader, TrainConfig(epochs=finetune_epochs, lr=lr, weight_decay=5e-4, seed=seed))
    after = measure(pruned.eval(), x, test_loader, threads)
    if out is not None:
        save_weights(pruned.state_dict(), out, metadata={"model": model, "nncompress": "prune-channels"})
    return {"model": model, "data": data, "criterion": criterion, "ratio": ratio, "layer_ratios": dict(layer_ratios or {}),
            "remove_macs": remove_macs, "threads": threads, "latency_batch": latency_batch, "before": before,
            "pruned_top1": pruned_top1, "after": after, **_summary(before, after), "out": str(out) if out else None}


def run_netadapt(
    model: str = "lenet5",
    data: str = "mnist5k",
    weights: str | os.PathLike | None = None,
    *,
    latency_budget: float | None = None,
    resources: Mapping[str, float] | None = None,
    resource_weights: Mapping[str, float] | None = None,
    rule: str = "accuracy",
    step: float = 0.1,
    short_steps: int = 20,
    long_epochs: int = 1,
    pretrain_epochs: int = 3,
    lr: float = 0.01,
    latency_batch: int = 32,
    threads: int = 1,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> dict:
    """NetAdapt to `latency_budget` × the measured latency (default 0.5), or to every budget of `resources`
    (latency, macs, params, energy; see `netadapt`) with `rule` "accuracy" or "ratio" (MobileNetV3);
    proposals judged on 10% of the training set held out."""
    if resources is None and latency_budget is None:
        latency_budget = 0.5
    ds, train_loader, test_loader, net, x, before = _setup(model, data, weights, pretrain_epochs, latency_batch, threads, seed)
    fit, held = _holdout(ds)
    fit_loader, _ = make_loaders(fit, seed=seed)
    _, held_loader = make_loaders(held, seed=seed)
    result = netadapt(net, fit_loader, held_loader, x, latency_budget, resources=resources, weights=resource_weights, rule=rule,
                      step=step, short_steps=short_steps, long_epochs=long_epochs, lr=lr, threads=threads, seed=seed)
    after = measure(result.model, x, test_loader, threads)
    if out is not None:
        save_weights(result.model.state_dict(), Path(out), metadata={"model": model, "nncompress": "netadapt"})
    steps = [{k: h[k] for k in ("iteration", "group", "removed", "measured_ms", "val_top1")} for h in result.history]
    return {"model": model, "data": data, "latency_budget": latency_budget, "resources": result.budgets, "rule": rule,
            "resources_before": result.resources_before, "resources_after": result.resources_after,
            "threads": threads, "latency_batch": latency_batch,
            "before": before, "after": after, **_summary(before, after), "reached": result.reached, "iterations": steps,
            "out": str(out) if out else None}
