"""NetAdapt: shrink a network until its *measured* latency meets a budget (Yang et al., ECCV 2018).

Iteration i asks for latency L_i = L_{i-1} − ΔR_i (ΔR_i = step·L_0·decay^i). For every channel group it
proposes the smallest removal of filters (those with the smallest L2 norm) whose latency, estimated from a
lookup table of per-layer latencies measured on this machine, meets L_i; each proposal is fine-tuned for a
few batches ("short-term") and scored on held-out data; the most accurate one is kept. Once the budget
holds the network is fine-tuned for longer ("long-term"). Latency comes from timing real layers at the
candidate widths, never from MAC counts: on real hardware the two do not move together.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from nncompress.core.errors import UserError
from nncompress.core.progress import track
from nncompress.pruning.structured.criteria import channel_scores, member_positions
from nncompress.pruning.structured.graph import InModelDtype, build_dependency_graph, model_input
from nncompress.pruning.structured.measure import latency_ms
from nncompress.pruning.structured.thin import remove_channels
from nncompress.training import TrainConfig, evaluate, train
from nncompress.training.device import module_device

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) channels of every conv and linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONVS):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


class LatencyTable:
    """Measured milliseconds of each conv/linear layer at given (input, output) widths, filled on demand.

    The model's latency estimate is scale · Σ_layers table[layer, c_in, c_out]; `scale` = measured whole-model
    latency / Σ table at the current widths accounts for what the table does not hold (norms, activations,
    pooling, framework), assumed to shrink in proportion. Being a ratio, it also cancels a slow-down from
    other processes that hits the whole-model and the layer timings alike.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, threads: int | None = 1, repeats: int = 10):
        self.threads, self.repeats = threads, repeats
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (*_CONVS, nn.Linear))}
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        def remember(name):
            def hook(module, args):
                self.input_shapes.setdefault(name, tuple(args[0].shape))
            return hook

        hooks = [m.register_forward_pre_hook(remember(n)) for n, m in self.layers.items()]
        try:
            with torch.no_grad():
                model.eval()(model_input(model, example_input))
        finally:
            for h in hooks:
                h.remove()
        self.table: dict[tuple[str, int, int], float] = {}
        self.scale = 1.0
        self.model_ms = self.rebase(model, example_input, repeats=30)

    def rebase(self, model: nn.Module, example_input: torch.Tensor, repeats: int = 20) -> float:
        """Re-measure the whole (pruned) model and refit `scale` to it."""
        ms = latency_ms(model, example_input, repeats=max(self.repeats, repeats), warmup=5, threads=self.threads)
        self.scale = ms / max(self.sum_ms(layer_widths(model)), 1e-9)
        return ms

    def layer_ms(self, name: str, c_in: int, c_out: int) -> float:
        key = (name, c_in, c_out)
        if key not in self.table:
            m, shape = self.layers[name], self.input_shapes[name]
            device, dtype = module_device(m), m.weight.dtype  # time each layer where and as the model runs
            if isinstance(m, nn.Linear):
                layer = nn.Linear(c_in, c_out, bias=m.bias is not None, device=device, dtype=dtype)
            else:
                groups = 1 if m.groups == 1 else m.groups * c_out // m.out_channels  # grouped convs lose whole groups
                cls = parametrize.type_before_parametrizations(m)  # a masked conv's class is a Parametrized* copy
                layer = cls(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None, m.padding_mode,
                            device=device, dtype=dtype)
            x = torch.randn(shape[0], c_in, *shape[2:], device=device, dtype=dtype)
            self.table[key] = latency_ms(layer, x, repeats=self.repeats, warmup=2, threads=self.threads)
        return self.table[key]

    def sum_ms(self, widths: dict[str, tuple[int, int]]) -> float:
        return sum(self.layer_ms(n, ci, co) for n, (ci, co) in widths.items() if n in self.layers)

    def estimate_ms(self, widths: dict[str, tuple[int, int]]) -> float:
        return self.scale * self.sum_ms(widths)


@dataclass
class NetAdaptResult:
    model: nn.Module
    latency_ms_before: float  # measured on the whole model (median)
    latency_ms_after: float  # measured again after long-term fine-tuning
    reached: bool  # whether the measured latency met the budget
    history: list[dict] = field(default_factory=list)
    table: LatencyTable | None = None


class FirstBatches:
    """The first `n` batches of a loader, with a length, for short-term fine-tuning."""

    def __init__(self, loader: DataLoader, n: int):
        self.loader, self.n = loader, min(n, len(loader))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def _widths_after(widths, members, removed: np.ndarray) -> dict[str, tuple[int, int]]:
    new = dict(widths)
    for name, role, js in members:
        n = int(np.isin(js, removed).sum())
        if n and name in new:
            ci, co = new[name]
            new[name] = (ci - n if role in ("in", "dw", "gw_in") else ci, co - n if role in ("out", "dw", "gw_out") else co)
    return new


def netadapt(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    example_input: torch.Tensor,
    latency_budget: float = 0.5,
    *,
    step: float = 0.1,
    decay: float = 0.9,
    short_steps: int = 20,
    long_epochs: int = 1,
    lr: float = 0.01,
    criterion: str = "l2",
    threads: int | None = 1,
    repeats: int = 10,
    max_iterations: int = 30,
    seed: int = 0,
    progress: bool | None = None,
) -> NetAdaptResult:
    """Prune `model` (a copy) until its latency on `example_input` is ≤ `latency_budget` × the original's.

    val_loader: held-out data that picks among proposals (NetAdapt holds out part of the training set; do
    not pass the test set). step, decay: ΔR_i = step·L_0·decay^i. short_steps: batches of fine-tuning per
    proposal; long_epochs: final fine-tuning.
    """
    if not 0.0 < latency_budget < 1.0:
        raise UserError(f"latency budget is a fraction of the current latency, in (0, 1); got {latency_budget}")
    if not 0.0 < step < 1.0:
        raise UserError(f"step (ΔR as a fraction of the original latency) must be in (0, 1); got {step}")
    current = copy.deepcopy(model)
    table = LatencyTable(current, example_input, threads, repeats)
    est0 = est = table.model_ms
    budget_ms = latency_budget * est0
    history: list[dict] = []
    for i in track(range(max_iterations), "NetAdapt", enabled=progress):
        if est <= budget_ms:
            break
        target = max(budget_ms, est - step * est0 * decay**i)
        graph = build_dependency_graph(current, example_input)
        scores = channel_scores(current, graph, criterion, seed=seed)
        widths = layer_widths(current)
        batches = list(FirstBatches(InModelDtype(train_loader, current), short_steps))  # every proposal fine-tunes on the same batches
        best = None
        for g in graph.groups:
            members = member_positions(graph, g)
            order = np.argsort(scores[g.name], kind="stable")

            def estimate(k, members=members, order=order):
                return table.estimate_ms(_widths_after(widths, members, order[:k]))

            if g.size < 2 or estimate(g.size - 1) > target:
                continue  # this group alone cannot meet the target
            lo, hi = 0, g.size - 1  # smallest k with estimate(k) <= target, by bisection (latency falls with k)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if estimate(mid) <= target else (mid, hi)
            k, new_est = hi, estimate(hi)
            proposal = remove_channels(current, graph, {g.name: sorted(order[:k].tolist())}, example_input)
            train(proposal, batches, TrainConfig(epochs=1, lr=lr, lr_schedule="constant", seed=seed + i, progress=False))
            top1 = evaluate(proposal, InModelDtype(val_loader, proposal))
            if best is None or (top1, -new_est) > (best[0], -best[1]):
                best = (top1, new_est, proposal, g.name, k)
        if best is None:
            break
        top1, predicted, current, group, k = best
        est = table.rebase(current, example_input)  # measured: the loop stops on real latency, not on the table
        history.append({"iteration": i, "group": group, "removed": k, "predicted_ms": predicted, "measured_ms": est, "target_ms": target,
                        "val_top1": top1, "widths": {n: list(w) for n, w in layer_widths(current).items()}})
    if long_epochs > 0 and history:
        train(current, InModelDtype(train_loader, current), TrainConfig(epochs=long_epochs, lr=lr, seed=seed, progress=progress))
    current.eval()
    return NetAdaptResult(current, est0, latency_ms(current, example_input, repeats=max(repeats, 20), warmup=5, threads=threads),
                          est <= budget_ms, history, table)
