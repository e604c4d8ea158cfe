"""Remove dead neurons and channels left behind by fine-grained pruning, exactly.

After unstructured pruning some hidden units have no outgoing connections (every weight reading them is
zero: they cannot affect the output) or no incoming ones (every weight of their filter is zero: they emit a
constant). The first kind is simply removed. For the second, the constant c that the next linear layer sees
is measured on the example input and folded into its bias, b' = b + W[:, j]·c, before the unit is removed
(Han et al. 2015 note that such neurons "can be safely pruned"); next to a convolution only c = 0 folds
exactly (zero padding), so other constants are left in place.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from nncompress.pruning.criteria import score_view
from nncompress.pruning.mask import dense_tensor
from nncompress.pruning.structured.criteria import grouped_input_slices, member_positions
from nncompress.pruning.structured.graph import build_dependency_graph, model_input
from nncompress.pruning.structured.thin import remove_channels


def _capture_inputs(model: nn.Module, names: set[str], example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def remember(name):
        def hook(module, args):
            seen.setdefault(name, args[0].detach())
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(remember(n)) for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(model_input(model, example_input))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _folds(graph, members, inputs: dict[str, torch.Tensor], j: int, atol: float) -> list[tuple[str, int, float]] | None:
    """(layer, input position, constant) to fold for group channel j, or None when it cannot be done exactly:
    the value the consumers see is not constant, or a convolution sees a non-zero constant."""
    fold = []
    for name, role, js in members:
        if role not in ("in", "gw_in"):  # a grouped conv's input is a convolution's: only zero folds
            continue
        for p in np.flatnonzero(js == j).tolist():
            v = inputs[name][:, p]
            c = float(v.flatten()[0])
            if float((v - c).abs().max()) > 1e-6 * (1 + abs(c)):
                return None
            if isinstance(graph.modules[name], nn.Linear):
                fold.append((name, p, c))
            elif abs(c) > atol:
                return None
    return fold


def remove_dead_channels(model: nn.Module, example_input: torch.Tensor, atol: float = 0.0) -> tuple[nn.Module, dict[str, int]]:
    """A thinned copy of `model` without dead units, and how many were removed per group.

    The thinned model's outputs equal the original's (up to float rounding of the folded bias)."""
    graph = build_dependency_graph(model, example_input)
    consumers = {n for g in graph.groups for n in g.consumers}
    inputs = _capture_inputs(model, consumers, example_input)
    new = copy.deepcopy(model)
    plan, folds = {}, []
    for g in graph.groups:
        fold_of: dict[int, list[tuple[str, int, float]]] = {}
        members = member_positions(graph, g)
        no_out = np.ones(g.size, dtype=bool)
        no_in = np.ones(g.size, dtype=bool) if not g.depthwise else np.zeros(g.size, dtype=bool)  # conv of a constant: not constant at borders
        for name, role, js in members:
            w = score_view(graph.modules[name].weight)
            ok = js >= 0
            positions = graph.grouped_modes.get(name) == "positions"  # a grouped conv pruned inside its conv-groups
            if role == "in" or (role == "gw_in" and positions):
                rows = w.transpose(0, 1).flatten(1) if role == "in" else grouped_input_slices(w, graph.modules[name].groups)
                used = (rows.abs().amax(1) > atol).cpu().numpy()
                np.logical_and.at(no_out, js[ok], ~used[ok])
            elif role == "out" or (role == "gw_out" and positions):
                alive = (w.flatten(1).abs().amax(1) > atol).cpu().numpy()
                np.logical_and.at(no_in, js[ok], ~alive[ok])
        if not g.consumers:
            no_out[:] = False
        for j in np.flatnonzero(no_in & ~no_out):  # constant units: fold their value into the next bias
            fold = _folds(graph, members, inputs, int(j), atol)
            if fold is not None:
                no_out[j] = True
                fold_of[int(j)] = fold
        dead = np.flatnonzero(no_out)
        if len(dead) == g.size:
            dead = dead[1:]  # keep one channel (unfolded): a layer cannot have zero width
        folds.extend(f for j in dead.tolist() for f in fold_of.get(j, []))
        if len(dead):
            plan[g.name] = dead.tolist()
    with torch.no_grad():
        for name, p, c in folds:
            lin = new.get_submodule(name)
            if c != 0.0:
                if lin.bias is None:
                    lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
                dense_tensor(lin, "bias").add_(lin.weight[:, p] * c)  # a masked bias: fold into its dense tensor
    return remove_channels(new, graph, plan, example_input), {k: len(v) for k, v in plan.items()}
