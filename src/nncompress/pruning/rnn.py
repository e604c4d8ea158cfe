"""Magnitude pruning of recurrent layers (nn.LSTM, nn.GRU, nn.RNN), per gate.

The Linear/Conv pruners in `pruners.py` only see `weight` tensors; a recurrent layer keeps its matrices as
`weight_ih_l{k}[_reverse]` (input → gates) and `weight_hh_l{k}[_reverse]` (hidden → gates), so they are
not touched by those pruners. `RNNPruner` masks exactly those matrices (biases stay dense:
few, and each one feeds a whole gate unit) with the same `Mask` parametrization the other pruners use.

Why per gate. Each matrix is the vertical stack of one block per gate: LSTM rows [i; f; g; o] (4·H rows),
GRU rows [r; z; n] (3·H rows), a plain RNN one block. The gate blocks can have quite different
weight scales, so one threshold for the whole matrix can
empty one gate while barely touching another, which changes what the cell computes rather than thinning it.
`scope="per-gate"` (the default) removes round(s·n_gate) entries from each gate block separately, so every
gate keeps (1-s) of its weights. `scope="per-matrix"` uses one threshold per stacked matrix; that is what
Distiller does for LSTMs (its word-language-model AGP schedules, examples/agp-pruning, and the tutorial
"Using Distiller to prune a PyTorch language model", prune `rnn.weight_ih_l0` / `weight_hh_l0` element-wise
with one threshold per tensor), and what Narang et al. 2017, "Exploring Sparsity in Recurrent Neural
Networks" (ICLR), do with separate thresholds for the recurrent and the input matrices (≈90 % sparsity at
a small loss). Per-gate goes one step further along Narang et al.'s reasoning (matrices with different weight
scales need their own thresholds): the gate blocks inside one matrix differ too, and tests/pruning/test_rnn.py
shows a per-matrix threshold emptying a gate's input weights that per-gate keeps at the target.

`granularity="gate"` removes whole rows of a gate block (one hidden unit's incoming weights to that gate),
ranked by L2 row norm, a coarse structured option; the default `"element"` removes single weights.

How masks are enforced. `torch.nn.utils.parametrize` works on nn.LSTM/GRU/RNN (torch 2.13; checked on CPU
by tests/pruning/test_rnn.py): accessing `weight_ih_l0` returns original·mask, and the RNN modules rebuild
`_flat_weights` in forward when the tensors they see have changed, so the kernel gets the masked product
and masked entries get zero gradient (d(w·m)/dw = m) whatever the optimizer does. So no forward pre-hook
re-applying `weight.data.mul_(mask)` and no gradient hook are needed, masks are the same `Mask` buffers the
other pruners use (state dict, `mask_state_dict`), and `finalize` bakes them in, leaving a plain nn.LSTM.
Not checked on a GPU here: cuDNN may warn that the weights are not one contiguous chunk (it then
re-packs them each call, which costs time, not correctness).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.criteria import check_sparsity, prune_count, smallest_k_mask
from nncompress.pruning.mask import apply_mask, dense_tensor, get_mask

RNN_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)
GATES: dict[str, tuple[str, ...]] = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",)}
_WEIGHT = re.compile(r"^weight_(ih|hh)_l\d+(_reverse)?$")


def gate_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the stacked gate blocks in `module`'s weight matrices, in row order (PyTorch's layout)."""
    for cls in RNN_TYPES:
        if isinstance(module, cls):
            return GATES[cls.__name__]
    raise UserError(f"{type(module).__name__} is not an nn.LSTM, nn.GRU or nn.RNN")


def rnn_weight_names(module: nn.Module) -> list[str]:
    """The weight matrices of a recurrent layer: weight_ih_l{k}[_reverse], weight_hh_l{k}[_reverse] (no biases).

    `proj_size` LSTMs also hold weight_hr_l{k} (the projection, not gate-stacked); it is left dense.
    """
    names = [n for n in module._flat_weights_names if _WEIGHT.match(n)]  # type: ignore[attr-defined]
    return names


def rnn_layers(model: nn.Module) -> dict[str, nn.Module]:
    """nn.LSTM / nn.GRU / nn.RNN modules by qualified name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RNN_TYPES)}


def _gate_mask(scores: torch.Tensor, sparsity: float, granularity: str) -> torch.Tensor:
    """Keep-mask for one block (a gate, or a whole matrix): the round(s·n) lowest-score units removed."""
    if granularity == "element":
        return smallest_k_mask(scores, prune_count(sparsity, scores.numel()))
    # one unit per row; a row with masked (-inf) entries counts the live part: norm over finite entries
    rows = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores)).pow(2).sum(dim=1)
    dead = ~torch.isfinite(scores).any(dim=1)
    rows = rows.masked_fill(dead, float("-inf"))
    keep_rows = smallest_k_mask(rows, prune_count(sparsity, rows.numel()))
    return keep_rows[:, None].expand_as(scores).clone()


class RNNPruner:
    """Prune LSTM/GRU/RNN weight matrices to an exact sparsity by magnitude, per gate or per matrix.

    sparsity: fraction in [0, 1) of each block's weights to remove (entries already masked count first, so
        pruning again never revives a weight and a target below the current sparsity changes nothing).
    granularity: "element" (single weights, |w|) or "gate" (whole rows of a gate block, L2 norm).
    scope: "per-gate" — each gate block of each matrix reaches the target separately (keeps every gate
        alive); "per-matrix" — one threshold over the whole stacked matrix (Distiller's LSTM pruning; Narang
        et al. 2017, "Exploring Sparsity in Recurrent Neural Networks").
    layers: qualified names of recurrent modules, or None for every nn.LSTM/GRU/RNN in the model.

        RNNPruner(0.8).prune(model)   # masks on weight_ih_l*/weight_hh_l*; fine-tune; then finalize(model)

    The Linear/Conv pruners (LevelPruner, MagnitudePruner, ...) do not look inside recurrent modules: they
    prune a model's Linear heads and leave the LSTM dense, so a model with recurrent layers needs RNNPruner
    for those (use both: LevelPruner for the head, RNNPruner for the recurrent layers).
    """

    def __init__(self, sparsity: float, *, granularity: str = "element", scope: str = "per-gate",
                 layers: Sequence[str] | None = None):
        self.sparsity = sparsity
        self.granularity = granularity
        self.scope = scope
        self.layers = layers
        check_sparsity(sparsity, "sparsity")
        if granularity not in ("element", "gate"):
            raise UserError(f"granularity must be 'element' or 'gate', got {granularity!r}")
        if scope not in ("per-gate", "per-matrix"):
            raise UserError(f"scope must be 'per-gate' or 'per-matrix', got {scope!r}")

    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.layers is None:
            found = rnn_layers(model)
            if not found:
                raise UserError(f"{type(model).__name__} has no nn.LSTM, nn.GRU or nn.RNN layers; "
                                "use LevelPruner for Linear/Conv layers")
            return found
        names = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        modules = dict(model.named_modules())
        out = {}
        for n in names:
            if n not in modules:
                raise UserError(f"unknown layer {n!r}; recurrent layers are: {', '.join(rnn_layers(model)) or 'none'}")
            if not isinstance(modules[n], RNN_TYPES):
                raise UserError(f"layer {n!r} is a {type(modules[n]).__name__}, not an nn.LSTM/GRU/RNN; use LevelPruner for it")
            out[n] = modules[n]
        return out

    def prune(self, model: nn.Module) -> nn.Module:
        """Attach (or tighten) a keep-mask on every weight matrix of the chosen recurrent layers; returns `model`."""
        with torch.no_grad():
            for module in self._modules(model).values():
                n_gates = len(gate_names(module))
                for name in rnn_weight_names(module):
                    w = dense_tensor(module, name)
                    scores = w.detach().abs().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
                    old = get_mask(module, name)
                    if old is not None:
                        scores = scores.masked_fill(~old, float("-inf"))
                    if self.scope == "per-gate":
                        keep = torch.cat([_gate_mask(b, self.sparsity, self.granularity) for b in scores.chunk(n_gates, 0)])
                    else:
                        keep = _gate_mask(scores, self.sparsity, self.granularity)
                    apply_mask(module, keep, name)
        return model


def rnn_sparsity(model: nn.Module) -> dict[str, dict[str, float]]:
    """Sparsity (fraction of zeros in the effective tensor) of every recurrent weight matrix, overall and per gate.

    {"lstm.weight_ih_l0": {"all": 0.8, "i": 0.8, "f": 0.8, "g": 0.8, "o": 0.8}, ...}; works before and after
    `finalize` (it reads the effective weights, masked or baked).
    """
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for lname, module in rnn_layers(model).items():
            gates = gate_names(module)
            for name in rnn_weight_names(module):
                w = getattr(module, name)
                zero = (w == 0)
                row = {"all": zero.float().mean().item()}
                for g, block in zip(gates, zero.chunk(len(gates), 0)):
                    row[g] = block.float().mean().item()
                out[f"{lname}.{name}" if lname else name] = row
    return out
