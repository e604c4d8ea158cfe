"""Data-driven (and data-free) element scores for unstructured pruning: higher score = keep.

Each function returns {layer name: score tensor shaped like the layer's weight}, float32 or better, computed on
the *effective* (masked) weight, so an entry already pruned scores 0. `ScorePruner` (granularity.py) turns the
scores into masks at element, kernel, vector or block granularity.

  taylor   |w·ḡ|, ḡ = ∂L/∂w averaged over the calibration batches: the first-order Taylor estimate of the loss
           change when w is set to 0, ΔL ≈ −g·w (Molchanov et al., "Pruning Convolutional Neural Networks for
           Resource Efficient Inference", ICLR 2017; Mozer & Smolensky 1989).
  obd      ½·h_ii·w², Optimal Brain Damage (LeCun, Denker, Solla, NeurIPS 1990): the second-order loss change of
           zeroing w at a minimum (g ≈ 0), with the Hessian taken as diagonal. h_ii is estimated by the empirical
           Fisher diagonal, the mean over batches of (∂L/∂w)²; see `obd_scores` for why.
  snip     |g⊙w| / Σ|g⊙w| on ONE batch, the sum over all chosen layers (Lee, Ajanthan, Torr, "SNIP: Single-shot
           Network Pruning based on Connection Sensitivity", ICLR 2019): meant for a network at initialization.
  apoz     1 − APoZ_j broadcast to every weight feeding unit j, APoZ_j = the fraction of zeros in unit j's post-ReLU
           output over the calibration data (Hu, Peng, Tai, Tang, "Network Trimming", arXiv:1607.03250, 2016).
  synflow  |θ⊙∂R/∂θ|, R = 1ᵀ(Π|W_l|)1 the output sum of the network with every parameter replaced by its absolute
           value on an all-ones input (Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data
           by iteratively conserving synaptic flow", NeurIPS 2020): needs no data, only the input shape.
           Magnitude |w| (criteria.py) is the other data-free criterion.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.criteria import score_view
from nncompress.pruning.mask import dense_tensor

SALIENCY_CRITERIA = ("taylor", "obd", "snip", "apoz", "synflow")

Layers = Mapping[str, nn.Module]


def _input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from nncompress.pruning.structured.graph import model_input  # late: structured imports this package

    return model_input(model, x)


def _grad_stats(model: nn.Module, layers: Layers, data: Iterable, loss_fn: Callable, max_batches: int | None,
                what: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Per layer: Σ_b g_b and Σ_b g_b² over batches b of (x, y), g_b = ∂L_b/∂w of the batch-mean loss L_b.

    Gradients land on the dense tensor (`parametrizations.weight.original` of a masked layer); they are read
    there and are the gradients w.r.t. the effective weight at unmasked entries. eval() mode, so batch-norm
    running statistics and dropout do not change the model while it is being scored.
    """
    if data is None:
        raise UserError(f"criterion {what} needs calibration data: pass batches of (inputs, labels)")
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    sq: dict[str, torch.Tensor] = {}
    n = 0
    try:
        for b, batch in enumerate(data):
            if max_batches is not None and b >= max_batches:
                break
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError(f"criterion {what} needs (inputs, labels) batches to compute a loss")
            x, y = batch[0], batch[1]
            model.zero_grad(set_to_none=True)
            out = model(_input(model, x))
            loss_fn(out, y.to(out.device) if isinstance(y, torch.Tensor) else y).backward()
            for name, m in layers.items():
                g = dense_tensor(m).grad
                g = torch.zeros_like(score_view(dense_tensor(m))) if g is None else score_view(g)
                sums[name] = sums[name] + g if name in sums else g.clone()
                sq[name] = sq[name] + g * g if name in sq else g * g
            n += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n == 0:
        raise UserError(f"criterion {what} got no batches of calibration data")
    return sums, sq, n


def _weight(m: nn.Module) -> torch.Tensor:
    """The effective (masked) weight in float32 or better: pruned entries are 0 and so score 0."""
    with torch.no_grad():
        return score_view(m.weight)


def taylor_scores(model: nn.Module, layers: Layers, data: Iterable, loss_fn: Callable = F.cross_entropy,
                  max_batches: int | None = 8) -> dict[str, torch.Tensor]:
    """|w·ḡ|, ḡ = mean over batches of ∂L/∂w: first-order Taylor estimate of |ΔL| when w is zeroed.

    The gradient is averaged *before* the absolute value, so it estimates the gradient of the loss over the
    whole calibration set (the quantity the Taylor expansion is about), not the mean per-batch noise.
    """
    sums, _, n = _grad_stats(model, layers, data, loss_fn, max_batches, "taylor")
    return {name: (_weight(m) * sums[name] / n).abs() for name, m in layers.items()}


def obd_scores(model: nn.Module, layers: Layers, data: Iterable, loss_fn: Callable = F.cross_entropy,
               max_batches: int | None = 8) -> dict[str, torch.Tensor]:
    """Optimal Brain Damage saliency s = ½·h_ii·w² (LeCun et al. 1990), h_ii ≈ mean over batches of (∂L/∂w)².

    Why the empirical Fisher diagonal: for a log-likelihood loss near a minimum the Hessian equals the Fisher
    information (Gauss–Newton), whose diagonal E[g²] needs only the gradients already computed, where the exact
    diagonal needs a second backward pass per parameter (or a noisy Hutchinson estimate). It is also never
    negative, as OBD's saliency must be (a negative h_ii far from the minimum would rank weights nonsensically).
    Gradients are per batch (of the batch-mean loss); batches of one sample give the per-sample Fisher exactly,
    larger batches shrink every h_ii by about the same factor, which leaves the ranking intact.
    """
    _, sq, n = _grad_stats(model, layers, data, loss_fn, max_batches, "obd")
    return {name: 0.5 * (sq[name] / n) * _weight(m) ** 2 for name, m in layers.items()}


def snip_scores(model: nn.Module, layers: Layers, data: Iterable, loss_fn: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity |g⊙w| / Σ|g⊙w| on the first batch only (Lee et al. 2019).

    The sum runs over every chosen layer, so the scores of all layers add up to 1 and are comparable across
    layers: SNIP prunes globally, once, at initialization. One batch is the paper's recipe (single shot).
    """
    sums, _, _ = _grad_stats(model, layers, data, loss_fn, 1, "snip")
    raw = {name: (_weight(m) * sums[name]).abs() for name, m in layers.items()}
    total = sum(float(s.double().sum()) for s in raw.values())
    if total == 0.0:
        raise UserError("criterion snip: every |g·w| is 0 on this batch (zero gradients), so no weight can be ranked")
    return {name: s / total for name, s in raw.items()}


def _unit_dim_sizes(m: nn.Module) -> int:
    """Output units of a layer: rows of a Linear weight, filters of a conv."""
    return dense_tensor(m).shape[0]


def apoz_scores(model: nn.Module, layers: Layers, data: Iterable, max_batches: int | None = 8,
                activations: Mapping[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """1 − APoZ_j for every weight feeding output unit j (row j of a Linear, filter j of a conv).

    APoZ_j (Hu et al. 2016) = the fraction of zeros in unit j's post-ReLU output, over every sample (and every
    spatial position of a conv) of the calibration data. A unit whose ReLU output is almost always 0 contributes
    almost nothing downstream, so the weights feeding it score lowest and go first. By default the activation is
    relu(layer output), i.e. the layer is assumed to feed a ReLU directly; `activations` maps a layer name to the
    module whose output is the unit's real activation (e.g. the ReLU after a batch norm). A Linear applied to
    (batch, tokens, features) counts every token as a sample. Weights of one unit tie;
    ties are removed in flat-index order. Labels, if present, are ignored.
    """
    if data is None:
        raise UserError("criterion apoz needs calibration data: pass batches of inputs (labels are ignored)")
    activations = dict(activations or {})
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str, post_relu: bool):
        def hook(_mod, _inp, out):
            a = out.detach()
            if isinstance(layers[name], nn.Linear) and a.dim() > 2:  # (batch, tokens, units): units are the last axis
                a = a.flatten(0, -2)
            if a.dim() < 2 or a.shape[1] != _unit_dim_sizes(layers[name]):
                raise UserError(f"apoz: the activation measured for layer '{name}' has shape {list(a.shape)}, not "
                                f"(batch, {_unit_dim_sizes(layers[name])}, ...) units")
            z = (a == 0) if post_relu else (a <= 0)  # relu(a) == 0 exactly when a <= 0
            per_unit = z.transpose(0, 1).flatten(1)
            zeros[name] = zeros.get(name, 0) + per_unit.sum(1).double()
            counts[name] = counts.get(name, 0) + per_unit.shape[1]
        return hook

    for name, m in layers.items():
        target = activations.get(name)
        hooks.append((target if target is not None else m).register_forward_hook(hook_for(name, target is not None)))
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for b, batch in enumerate(data):
                if max_batches is not None and b >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(_input(model, x))
                n += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise UserError("criterion apoz got no batches of calibration data")
    out = {}
    for name, m in layers.items():
        if name not in zeros:
            raise UserError(f"apoz: layer '{name}' (or its activation module) never ran on the calibration data")
        apoz = zeros[name] / counts[name]
        w = _weight(m)
        out[name] = (1.0 - apoz).to(w.dtype).to(w.device).view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
    return out


def apoz(model: nn.Module, layers: Layers, data: Iterable, max_batches: int | None = 8,
         activations: Mapping[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """APoZ_j per output unit j of each layer (1.0 = the unit's post-ReLU output was always zero)."""
    scores = apoz_scores(model, layers, data, max_batches, activations)
    return {name: 1.0 - s.flatten(1)[:, 0] for name, s in scores.items()}


def synflow_scores(model: nn.Module, layers: Layers, example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """SynFlow |θ⊙∂R/∂θ| with R = Σ f_|θ|(1), data-free (Tanaka et al. 2020), one shot.

    Every parameter (and buffer, so batch-norm statistics) of a copy of the model is replaced by its absolute
    value and the copy runs in eval mode in float64 on ONE all-ones sample shaped like `example_input[0]`; R is the sum
    of the output. The score of a weight is the total "synaptic flow" through it, which, unlike magnitude, does not
    collapse a whole layer at high sparsity. The paper iterates 100 prune/re-score rounds; this is one round
    (call the pruner repeatedly for the iterative version). The model itself is not changed.
    """
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise UserError("criterion synflow needs a floating-point example input (its shape is what matters)")
    shadow = copy.deepcopy(model).double().eval()
    names = {id(m): n for n, m in model.named_modules()}
    shadow_modules = dict(shadow.named_modules())
    with torch.no_grad():
        for t in (*shadow.parameters(), *shadow.buffers()):
            if t.is_floating_point():
                t.abs_()
    shadow.zero_grad(set_to_none=True)
    device = next((t.device for t in shadow.parameters()), torch.device("cpu"))
    out = shadow(torch.ones((1, *example_input.shape[1:]), dtype=torch.float64, device=device))  # one sample, as the paper
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.sum().backward()
    scores = {}
    for name, m in layers.items():
        sm = shadow_modules[names.get(id(m), name)]
        g = dense_tensor(sm).grad
        w = _weight(m)
        scores[name] = torch.zeros_like(w) if g is None else (g.to(w.dtype) * w).abs()
    return scores
