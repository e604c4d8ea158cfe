"""Pruning granularities coarser than one weight, and `ScorePruner`, which prunes by any criterion at any of them.

Mao et al., "Exploring the Granularity of Sparsity in Convolutional Neural Networks" (CVPR-W 2017) compare
  element  one weight (fine-grained, the most accurate at a given sparsity, the hardest to run fast);
  vector   a 1-D slice of one conv kernel: a row (along the last spatial axis, fixed (o, i, r)) or a column
           (along the second-to-last axis, fixed (o, i, c));
  kernel   a whole k×k 2-D kernel of a conv, fixed (o, i): what a sparse convolution can skip outright;
  block    a b_h×b_w tile of a Linear weight, or of a conv weight reshaped to 2-D (out, in·k·k) (Narang et al.,
           "Block-Sparse Recurrent Neural Networks", 2017): what block-sparse kernels run fast.
Coarser groups keep regular shapes that hardware can exploit; the cost is a little accuracy.

A group's score combines its elements' scores: `norm="l1"` sums them (Σ|w| for magnitude: the L1 norm of the
kernel; the summed saliency for taylor/obd/snip, which estimate the loss change additively), `norm="l2"` takes
sqrt(Σ s²) (‖w‖₂ for magnitude). Exact sparsity: groups are removed lowest score first and counted by their
elements, taking the prefix whose element count is nearest round(sparsity·n), so the reached sparsity is within
half a group of the target (edge blocks of a weight not divisible by the block size are smaller groups).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.criteria import check_sparsity, prune_count, score_view
from nncompress.pruning.mask import apply_shared_mask, get_mask
from nncompress.pruning.pruners import _targets, _Unit
from nncompress.pruning.saliency import (
    SALIENCY_CRITERIA,
    apoz_scores,
    obd_scores,
    snip_scores,
    synflow_scores,
    taylor_scores,
)

GRANULARITIES = ("element", "kernel", "vector", "block")
CRITERIA = ("magnitude", *SALIENCY_CRITERIA)


def _block_size(block: int | Sequence[int]) -> tuple[int, int]:
    b = (block, block) if isinstance(block, int) and not isinstance(block, bool) else tuple(block) if isinstance(block, (tuple, list)) else ()
    if len(b) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b):
        raise UserError(f"block must be a positive int b (b×b blocks) or a pair (b_h, b_w), got {block!r}")
    return b  # type: ignore[return-value]


def group_ids(shape: Sequence[int], granularity: str, block: int | Sequence[int] = 4, vector: str = "row") -> torch.Tensor:
    """A long tensor shaped like the weight giving each entry's group index (0..G-1), groups in row-major order.

    shape (O, I, kh, kw): kernel → group o·I + i; vector="row" → one group per (o, i, r); vector="col" → one per
    (o, i, c); block (b_h, b_w) → tiles of the 2-D view (O, I·kh·kw). Element → every entry its own group.
    """
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    flat = torch.arange(n).view(shape)
    if granularity == "element":
        return flat
    if granularity in ("kernel", "vector"):
        if len(shape) < 3:
            raise UserError(f"granularity {granularity!r} needs a conv weight (out, in, *kernel); this weight is "
                            f"{list(shape)}: use 'element' or 'block' for a Linear")
        if granularity == "kernel":
            lead = shape[0] * shape[1]
            return torch.arange(lead).view(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape).clone()
        if vector not in ("row", "col"):
            raise UserError(f"vector must be 'row' or 'col', got {vector!r}")
        if vector == "row":  # every index but the last spatial one names the group
            return torch.arange(n // shape[-1]).view(*shape[:-1], 1).expand(shape).clone()
        if len(shape) < 4:
            raise UserError(f"vector='col' needs a kernel with two spatial axes; this weight is {list(shape)}")
        ids = torch.arange(n // shape[-2]).view(*shape[:-2], shape[-1])
        return ids.unsqueeze(-2).expand(shape).clone()
    if granularity == "block":
        bh, bw = _block_size(block)
        rows, cols = shape[0], n // shape[0]
        r = torch.arange(rows) // bh
        c = torch.arange(cols) // bw
        ncb = (cols + bw - 1) // bw
        return (r.view(-1, 1) * ncb + c.view(1, -1)).view(shape)
    raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def group_scores(scores: torch.Tensor, ids: torch.Tensor, norm: str = "l1") -> tuple[torch.Tensor, torch.Tensor]:
    """(score per group, elements per group): Σ s (norm='l1') or sqrt(Σ s²) (norm='l2') over each group."""
    if norm not in ("l1", "l2"):
        raise UserError(f"norm must be 'l1' or 'l2', got {norm!r}")
    s = scores.flatten()
    i = ids.flatten().to(s.device)
    g = int(i.max()) + 1 if i.numel() else 0
    sizes = torch.zeros(g, dtype=torch.long, device=s.device).index_add_(0, i, torch.ones_like(i))
    finite = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    vals = finite if norm == "l1" else finite * finite
    out = torch.zeros(g, dtype=s.dtype, device=s.device).index_add_(0, i, vals)
    if norm == "l2":
        out = out.sqrt()
    # a group whose every entry is already pruned (-inf) is removed first, as LevelPruner counts masked weights
    dead = torch.zeros(g, dtype=torch.long, device=s.device).index_add_(0, i, (~torch.isfinite(s)).long())
    return out.masked_fill(dead == sizes, float("-inf")), sizes


def remove_groups(scores: torch.Tensor, sizes: torch.Tensor, target: int) -> torch.Tensor:
    """Keep-flags per group: remove the lowest-scoring groups (ties: lower index first) whose element count is
    nearest `target` (the shorter prefix on a tie), so the removed count is within half a group of it."""
    order = torch.argsort(scores, stable=True)
    cum = torch.cat([torch.zeros(1, dtype=torch.long, device=sizes.device), torch.cumsum(sizes[order], 0)])
    k = int(torch.argmin((cum - target).abs()))  # argmin returns the first minimum: the shorter prefix
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = False
    return keep


def group_mask(scores: torch.Tensor, sparsity: float, granularity: str = "element", block: int | Sequence[int] = 4,
               vector: str = "row", norm: str = "l1") -> torch.Tensor:
    """Keep-mask zeroing whole groups of lowest combined score, about round(sparsity·numel) entries (± half a group)."""
    sparsity = check_sparsity(sparsity)
    ids = group_ids(scores.shape, granularity, block, vector).to(scores.device)
    gs, sizes = group_scores(score_view(scores), ids, norm)
    keep = remove_groups(gs, sizes, prune_count(sparsity, scores.numel()))
    return keep[ids]


def kernel_mask(w: torch.Tensor, sparsity: float, norm: str = "l1") -> torch.Tensor:
    """Prune whole conv kernels (fixed out, in) of smallest L1 (or L2) norm."""
    return group_mask(score_view(w).abs(), sparsity, "kernel", norm=norm)


def vector_mask(w: torch.Tensor, sparsity: float, vector: str = "row", norm: str = "l1") -> torch.Tensor:
    """Prune 1-D rows (or columns) of conv kernels of smallest L1 (or L2) norm."""
    return group_mask(score_view(w).abs(), sparsity, "vector", vector=vector, norm=norm)


def block_mask(w: torch.Tensor, sparsity: float, block: int | Sequence[int] = 4, norm: str = "l1") -> torch.Tensor:
    """Prune b_h×b_w blocks of the 2-D weight (a conv reshaped to (out, in·k·k)) of smallest L1 (or L2) norm."""
    return group_mask(score_view(w).abs(), sparsity, "block", block=block, norm=norm)


class ScorePruner:
    """Prune to a target sparsity by any criterion at any granularity.

        ScorePruner(0.8, criterion="obd", granularity="kernel", data=calib_batches).prune(model)

    criterion: magnitude (|w|, data-free) or taylor / obd / snip / apoz / synflow (see saliency.py; data-driven
    ones need `data`, batches of (inputs, labels); synflow needs only `example_input`). granularity: element /
    kernel / vector (`vector`='row'|'col') / block (`block`=b or (b_h, b_w)); group scores use `norm` (l1: sum of
    element scores, the L1 norm for magnitude; l2: root of the sum of squares). scope="layer" hits the sparsity in
    every layer; scope="global" ranks the groups of all chosen layers together (SNIP's recipe; its scores are
    normalized over all layers for that reason). Masks intersect with existing ones: entries already pruned count
    toward the target, a group costs only its entries still alive, and a fully pruned group goes first, so the
    sparsity reached is still within half a group of the target on a model pruned before.
    """

    def __init__(self, sparsity: float | Mapping[str, float], criterion: str = "magnitude", granularity: str = "element",
                 scope: str = "layer", layers: Sequence[str] | None = None, data: Iterable | None = None,
                 loss_fn: Callable = F.cross_entropy, max_batches: int | None = 8, block: int | Sequence[int] = 4,
                 vector: str = "row", norm: str = "l1", example_input: torch.Tensor | None = None,
                 activations: Mapping[str, nn.Module] | None = None):
        if criterion not in CRITERIA:
            raise UserError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        if scope not in ("layer", "global"):
            raise UserError(f"scope must be 'layer' or 'global', got {scope!r}")
        if scope == "global" and isinstance(sparsity, Mapping):
            raise UserError("scope='global' takes one sparsity for all layers, not a dict; use scope='layer' for per-layer targets")
        if norm not in ("l1", "l2"):
            raise UserError(f"norm must be 'l1' or 'l2', got {norm!r}")
        if vector not in ("row", "col"):
            raise UserError(f"vector must be 'row' or 'col', got {vector!r}")
        if criterion in ("taylor", "obd", "snip", "apoz") and data is None:
            raise UserError(f"criterion {criterion} needs calibration data (data=batches of (inputs, labels))")
        if criterion == "synflow" and example_input is None:
            raise UserError("criterion synflow needs example_input (a tensor with the model's input shape)")
        _block_size(block)
        if isinstance(sparsity, Mapping):
            for n, v in sparsity.items():
                check_sparsity(v, f"sparsity for layer '{n}'")
        else:
            check_sparsity(sparsity)
        self.sparsity, self.criterion, self.granularity, self.scope = sparsity, criterion, granularity, scope
        self.layers, self.data, self.loss_fn, self.max_batches = layers, data, loss_fn, max_batches
        self.block, self.vector, self.norm = block, vector, norm
        self.example_input, self.activations = example_input, activations

    def scores(self, model: nn.Module, units: list[_Unit]) -> dict[str, torch.Tensor]:
        """Element scores per unit name (higher = keep), before grouping and before existing masks are applied."""
        layers = {u.name: u.module for u in units}
        c = self.criterion
        if c == "magnitude":
            with torch.no_grad():
                return {n: score_view(m.weight).abs() for n, m in layers.items()}
        if c == "taylor":
            return taylor_scores(model, layers, self.data, self.loss_fn, self.max_batches)
        if c == "obd":
            return obd_scores(model, layers, self.data, self.loss_fn, self.max_batches)
        if c == "snip":
            return snip_scores(model, layers, self.data, self.loss_fn)
        if c == "apoz":
            acts = None
            if self.activations:
                modules = dict(model.named_modules())
                acts = {}
                for n, a in self.activations.items():
                    if isinstance(a, str):
                        if a not in modules:
                            raise UserError(f"apoz: activation module '{a}' for layer '{n}' is not in the model")
                        a = modules[a]
                    acts[n] = a
            return apoz_scores(model, layers, self.data, self.max_batches, acts)
        return synflow_scores(model, layers, self.example_input)

    def prune(self, model: nn.Module) -> nn.Module:
        units = _targets(model, self.sparsity, self.layers, check_sparsity)
        raw = self.scores(model, units)
        with torch.no_grad():
            per = []
            for u in units:
                s = score_view(raw[u.name])
                for m in u.modules:
                    mask = get_mask(m)
                    if mask is not None:
                        s = s.masked_fill(~mask.to(s.device), float("-inf"))
                ids = group_ids(s.shape, self.granularity, self.block, self.vector).to(s.device)
                gs, _ = group_scores(s, ids, self.norm)
                alive = torch.isfinite(s).flatten()
                # a group costs only its entries still alive; entries already pruned count toward the target
                live = torch.zeros(gs.numel(), dtype=torch.long, device=s.device).index_add_(0, ids.flatten(), alive.long())
                per.append((u, ids, gs, live, int((~alive).sum())))
            if self.scope == "layer":
                for u, ids, gs, live, dead in per:
                    keep = remove_groups(gs, live, max(prune_count(u.value, ids.numel()) - dead, 0))
                    apply_shared_mask(u.modules, keep[ids])
            else:
                dev = per[0][2].device
                allg = torch.cat([p[2].to(dev) for p in per])
                alls = torch.cat([p[3].to(dev) for p in per])
                total = sum(p[1].numel() for p in per)
                dead = sum(p[4] for p in per)
                keep = remove_groups(allg, alls, max(prune_count(float(self.sparsity), total) - dead, 0))
                for (u, ids, *_), part in zip(per, torch.split(keep, [p[2].numel() for p in per])):
                    apply_shared_mask(u.modules, part.to(ids.device)[ids])
        return model
