"""NetAdapt: shrink a network until its *measured* latency meets a budget (Yang et al., ECCV 2018).

Iteration i asks for latency L_i = L_{i-1} − ΔR_i (ΔR_i = step·L_0·decay^i). For every channel group it
proposes the smallest removal of filters (those with the smallest L2 norm) whose latency, estimated from a
lookup table of per-layer latencies measured on this machine, meets L_i; each proposal is fine-tuned for a
few batches ("short-term") and scored on held-out data; the most accurate one is kept. Once the budget
holds the network is fine-tuned for longer ("long-term"). Latency comes from timing real layers at the
candidate widths, never from MAC counts: on real hardware the two do not move together.

Two extensions, both from MobileNetV3 (Howard et al., ICCV 2019, §4.2 "NetAdapt for Layer-wise Search"):
- **Selection rule.** `rule="accuracy"` is NetAdapt's: keep the most accurate proposal. `rule="ratio"` is
  MobileNetV3's: every proposal already cuts the resource by at least the step, so keep the one maximizing
  ΔAcc / |ΔR| — ΔAcc = val top-1 of the proposal after short-term fine-tuning − val top-1 of the current
  network (percentage points, ≤ 0 as a rule), ΔR = resource of the proposal − resource of the current
  network — i.e. the one losing the least accuracy per unit of resource saved. The accuracy rule ignores how
  much a proposal saves beyond the step; the ratio credits it (a coarse group whose smallest cut overshoots
  the step can win if its accuracy cost per unit saved is lower).
- **Several resources.** `resources={"latency": 0.5, "macs": 0.6, ...}` holds one budget (a fraction of the
  original) per resource, all of which must be met: `latency` (the measured lookup table above), `macs`,
  `params` (formulas on the conv/linear widths: params = c_out·c_in/g·k_h·k_w (+c_out bias),
  MACs = params_without_bias · output positions — the counts `analysis.macs.count_macs` makes; batch norms
  fold into the preceding conv at inference so they are not counted) and `energy` (the Horowitz 45 nm
  estimate of `analysis.energy.layer_energy_pj`: each layer's MACs plus one DRAM read of its dense weight
  bytes; an estimate, not a measurement). The step schedule and the ratio's ΔR use one combined,
  normalized resource C = Σ_r w_r·R_r / R_r(original) with Σ w_r = 1 (`weights`; default: weight 1 on the
  first resource of `resources`, the "primary" one), so C(original) = 1 and the step ΔC_i = step·decay^i.
  With a single resource this is exactly NetAdapt's schedule (ΔR_i = step·R_0·decay^i) and the ratio
  differs from ΔAcc/|ΔR| only by the constant R_0, so it picks the same proposal. A proposal of a group is
  the fewest filters whose removal brings C down by the step, or meets every budget, whichever needs fewer.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from nncompress.analysis.energy import layer_energy_pj
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


RESOURCES = ("latency", "macs", "params", "energy")
RULES = ("accuracy", "ratio")
_MAC_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class LayerCosts:
    """Params, MACs and estimated energy of a network's conv/linear layers at any (input, output) widths, by formula.

    Shapes come from one forward pass on `example_input`: for each layer the kernel size, the grouping, the
    bias and its output positions per sample (H_out·W_out for a 2-d conv; summed over calls when a layer is
    called more than once, as `count_macs` does). Removing channels does not change output positions.
      params(c_in, c_out) = c_out · c_in/g · Πk  (+ c_out with a bias)
      macs(c_in, c_out)   = c_out · c_in/g · Πk · positions        (per sample)
      energy_pj           = layer_energy_pj(macs, dense weight bytes read once from DRAM), summed
    g is the layer's group count at these widths: 1 for a plain conv; a depthwise/grouped conv loses whole groups.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (*_CONVS, nn.Linear))}
        self.positions: dict[str, int] = dict.fromkeys(self.layers, 0)
        batch = int(example_input.shape[0]) if example_input.dim() > 0 else 1

        def remember(name):
            def hook(module, args, output):
                channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                self.positions[name] += output.numel() // (channels * max(batch, 1))
            return hook

        hooks = [m.register_forward_hook(remember(n)) for n, m in self.layers.items()]
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(model_input(model, example_input))
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        self.element_bytes = torch.empty((), dtype=dtype).element_size()
        self.mac_type = _MAC_TYPES.get(dtype, "fp32")

    def _weights(self, name: str, c_in: int, c_out: int) -> int:
        m = self.layers[name]
        if isinstance(m, nn.Linear):
            return c_in * c_out
        groups = 1 if m.groups == 1 else max(1, m.groups * c_out // m.out_channels)
        return c_out * (c_in // groups) * math.prod(m.kernel_size)

    def layer_params(self, name: str, c_in: int, c_out: int) -> int:
        return self._weights(name, c_in, c_out) + (c_out if self.layers[name].bias is not None else 0)

    def layer_macs(self, name: str, c_in: int, c_out: int) -> int:
        return self._weights(name, c_in, c_out) * self.positions[name]

    def layer_energy_pj(self, name: str, c_in: int, c_out: int) -> float:
        macs, nbytes = self.layer_macs(name, c_in, c_out), self.layer_params(name, c_in, c_out) * self.element_bytes
        return layer_energy_pj(macs, macs, nbytes, nbytes, mac_type=self.mac_type).total_pj

    def total(self, resource: str, widths: dict[str, tuple[int, int]]) -> float:
        fn = {"macs": self.layer_macs, "params": self.layer_params, "energy": self.layer_energy_pj}[resource]
        return float(sum(fn(n, ci, co) for n, (ci, co) in widths.items() if n in self.layers))


def check_resources(resources: Mapping[str, float], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Validate budgets (fractions in (0, 1) of the original, one per known resource) and return the
    normalized weights of the combined resource C (default: weight 1 on the first, primary, resource)."""
    if not resources:
        raise UserError(f"give at least one resource budget, e.g. {{'latency': 0.5}}; resources: {', '.join(RESOURCES)}")
    for name, budget in resources.items():
        if name not in RESOURCES:
            raise UserError(f"unknown resource '{name}': use one of {', '.join(RESOURCES)}")
        if not (isinstance(budget, (int, float)) and 0.0 < float(budget) < 1.0):
            raise UserError(f"budget of resource '{name}' is a fraction of the original, in (0, 1); got {budget}")
    if weights is None:
        return {next(iter(resources)): 1.0}
    for name, w in weights.items():
        if name not in resources:
            raise UserError(f"weight given for '{name}', which has no budget: weight only resources among {', '.join(resources)}")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise UserError(f"weight of resource '{name}' must be a finite number >= 0; got {w}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise UserError("resource weights sum to 0: give at least one positive weight")
    return {n: float(w) / total for n, w in weights.items() if w > 0}


@dataclass(frozen=True)
class Proposal:
    """One group's proposal: its val top-1 (%) after short-term fine-tuning and its combined resource C."""

    name: str
    top1: float
    cost: float


def proposal_score(p: Proposal, rule: str, current_top1: float, current_cost: float) -> tuple:
    """Sort key (larger is better) of a proposal under `rule`.

    accuracy (NetAdapt): (top1, −cost) — most accurate, then cheapest.
    ratio (MobileNetV3): ΔAcc/|ΔC| with ΔAcc = top1 − current_top1 and ΔC = cost − current_cost, then top1.
    """
    if rule == "accuracy":
        return (p.top1, -p.cost)
    saved = current_cost - p.cost
    if saved <= 0:  # saves nothing: cannot be chosen by accuracy per unit saved
        return (-math.inf, p.top1)
    return ((p.top1 - current_top1) / saved, p.top1)


def select_proposal(proposals: Sequence[Proposal], rule: str = "accuracy", current_top1: float = 0.0,
                    current_cost: float = 1.0) -> int | None:
    """Index of the proposal `rule` keeps (see `proposal_score`); None when there is none to keep.
    The first of equal scores wins, so the choice does not depend on anything but the order of groups."""
    if rule not in RULES:
        raise UserError(f"unknown NetAdapt rule '{rule}': use one of {', '.join(RULES)}")
    best, best_key = None, None
    for i, p in enumerate(proposals):
        key = proposal_score(p, rule, current_top1, current_cost)
        if rule == "ratio" and key[0] == -math.inf:
            continue
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


@dataclass
class NetAdaptResult:
    model: nn.Module
    latency_ms_before: float  # measured on the whole model (median)
    latency_ms_after: float  # measured again after long-term fine-tuning
    reached: bool  # whether every budget held when the loop stopped (latency: its last measurement)
    history: list[dict] = field(default_factory=list)
    table: LatencyTable | None = None  # None when latency is not among the resources
    resources_before: dict[str, float] = field(default_factory=dict)  # per resource: ms, MACs, params, pJ
    resources_after: dict[str, float] = field(default_factory=dict)  # latency measured after long-term fine-tuning
    budgets: dict[str, float] = field(default_factory=dict)
    rule: str = "accuracy"


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
    latency_budget: float | None = None,
    *,
    resources: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    rule: str = "accuracy",
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
    """Prune `model` (a copy) until every resource budget holds; by default latency on `example_input` ≤
    `latency_budget` (0.5 when neither it nor `resources` is given) × the original's.

    resources: {name: budget fraction} over latency, macs, params, energy — all must be met (module docstring);
    replaces latency_budget. weights: {name: w} of the combined resource C that the step schedule and the ratio
    rule use (default: the first resource alone). rule: "accuracy" (NetAdapt: most accurate proposal) or
    "ratio" (MobileNetV3: largest ΔAcc/|ΔC|). val_loader: held-out data that picks among proposals (NetAdapt
    holds out part of the training set; do not pass the test set). step, decay: ΔC_i = step·decay^i of the
    original. short_steps: batches of fine-tuning per proposal; long_epochs: final fine-tuning.
    """
    if resources is None:
        budget = 0.5 if latency_budget is None else latency_budget
        if not 0.0 < budget < 1.0:
            raise UserError(f"latency budget is a fraction of the current latency, in (0, 1); got {budget}")
        resources = {"latency": float(budget)}
    elif latency_budget is not None:
        raise UserError("give either latency_budget or resources={'latency': ...}, not both")
    w = check_resources(resources, weights)
    if rule not in RULES:
        raise UserError(f"unknown NetAdapt rule '{rule}': use one of {', '.join(RULES)}")
    if not 0.0 < step < 1.0:
        raise UserError(f"step (ΔC as a fraction of the original resource) must be in (0, 1); got {step}")
    current = copy.deepcopy(model)
    table = LatencyTable(current, example_input, threads, repeats) if "latency" in resources else None
    formulas = LayerCosts(current, example_input) if set(resources) - {"latency"} else None

    def predicted(widths: dict[str, tuple[int, int]]) -> dict[str, float]:
        return {r: table.estimate_ms(widths) if r == "latency" else formulas.total(r, widths) for r in resources}

    widths0 = layer_widths(current)
    original = {r: table.model_ms if r == "latency" else formulas.total(r, widths0) for r in resources}
    if any(v <= 0 for v in original.values()):
        raise UserError(f"the model has no conv/linear layer to count {', '.join(r for r, v in original.items() if v <= 0)} on")
    limits = {r: resources[r] * original[r] for r in resources}
    latency_before = table.model_ms if table is not None else latency_ms(current, example_input, repeats=max(repeats, 20), warmup=5,
                                                                         threads=threads)

    def combined(values: dict[str, float]) -> float:
        return sum(wr * values[r] / original[r] for r, wr in w.items())

    def all_met(values: dict[str, float]) -> bool:
        return all(values[r] <= limits[r] for r in resources)

    now = dict(original)
    history: list[dict] = []
    for i in track(range(max_iterations), "NetAdapt", enabled=progress):
        if all_met(now):
            break
        cost_now = combined(now)
        target = cost_now - step * decay**i
        graph = build_dependency_graph(current, example_input)
        scores = channel_scores(current, graph, criterion, seed=seed)
        widths = layer_widths(current)
        batches = list(FirstBatches(InModelDtype(train_loader, current), short_steps))  # every proposal fine-tunes on the same batches
        top1_now = evaluate(current, InModelDtype(val_loader, current)) if rule == "ratio" else float("nan")
        best = best_key = None
        for g in graph.groups:
            members = member_positions(graph, g)
            order = np.argsort(scores[g.name], kind="stable")

            def values(k, members=members, order=order):
                return predicted(_widths_after(widths, members, order[:k]))

            def enough(k):
                v = values(k)
                return combined(v) <= target or all_met(v)

            if g.size < 2 or not enough(g.size - 1):
                continue  # this group alone cannot meet the target
            lo, hi = 0, g.size - 1  # fewest filters k meeting the target, by bisection (every resource falls with k)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if enough(mid) else (mid, hi)
            k, new_values = hi, values(hi)
            proposal = remove_channels(current, graph, {g.name: sorted(order[:k].tolist())}, example_input)
            train(proposal, batches, TrainConfig(epochs=1, lr=lr, lr_schedule="constant", seed=seed + i, progress=False))
            candidate = Proposal(g.name, evaluate(proposal, InModelDtype(val_loader, proposal)), combined(new_values))
            key = proposal_score(candidate, rule, top1_now, cost_now)
            if key[0] != -math.inf and (best_key is None or key > best_key):
                best, best_key = (candidate, new_values, proposal, k), key
        if best is None:
            break
        candidate, new_values, current, k = best
        widths = layer_widths(current)
        now = {r: table.rebase(current, example_input) if r == "latency" else formulas.total(r, widths) for r in resources}
        only_latency = w == {"latency": 1.0}  # latency is measured (rebase): the loop stops on real latency, not on the table
        history.append({"iteration": i, "group": candidate.name, "removed": k,
                        "predicted_ms": new_values.get("latency"), "measured_ms": now.get("latency"),
                        "target_ms": max(limits["latency"], target * original["latency"]) if only_latency else None,
                        "val_top1": candidate.top1, "val_top1_before": None if rule != "ratio" else top1_now,
                        "score": best_key[0], "cost": combined(now), "target_cost": target,
                        "predicted": new_values, "measured": dict(now),
                        "widths": {n: list(wd) for n, wd in widths.items()}})
    if long_epochs > 0 and history:
        train(current, InModelDtype(train_loader, current), TrainConfig(epochs=long_epochs, lr=lr, seed=seed, progress=progress))
    current.eval()
    latency_after = latency_ms(current, example_input, repeats=max(repeats, 20), warmup=5, threads=threads)
    after = {**now, "latency": latency_after} if "latency" in resources else dict(now)
    return NetAdaptResult(current, latency_before, latency_after, all_met(now), history, table,
                          resources_before=dict(original), resources_after=after, budgets=dict(resources), rule=rule)
