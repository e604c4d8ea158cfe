"""Factorize a model's layers in place, choosing ranks per layer, and report what each replacement costs.

Rank rules (exactly one): `energy` (fraction of Σs² kept; for CP, 1 − ‖W − Ŵ‖²/‖W‖²), `ratio` (each layer's
parameters, or MACs with ratio_of="macs", shrink by at least this factor), `vbmf` (EVBMF on the weight, or on
the channel unfoldings for Tucker/CP as in Kim et al. 2016), or explicit `ranks` per layer. For the separable
method every rule acts on the (C·k_h) × (k_w·N) matrix whose rank is the number K of intermediate channels.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.guards import check_finite_weights
from nncompress.core.io import load_weights, save_weights, state_dict_mismatch
from nncompress.core.ties import tie_map, tie_message, warn_tied
from nncompress.lowrank.decompose import (
    LowRank,
    cp_conv,
    cp_factors,
    cp_structure,
    relative_error,
    separable_conv,
    separable_matrix,
    separable_structure,
    svd_linear,
    svd_structure,
    tucker2_conv,
    tucker_structure,
)
from nncompress.lowrank.rank import budget_rank, energy_rank, evbmf_rank, unfold

METHODS = ("svd", "tucker", "cp", "separable")
SPEC_KEY = "nncompress.lowrank"


@dataclass
class LayerFactorization:
    name: str
    shape: tuple[int, ...]
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int | None = None   # per sample; None without example_input
    macs_after: int | None = None
    rel_error: float | None = None   # ‖W − Ŵ‖_F / ‖W‖_F
    skipped: str | None = None       # why the layer was left dense


@dataclass
class FactorizationReport:
    method: str
    layers: list[LayerFactorization]

    @property
    def params_before(self) -> int:
        return sum(lf.params_before for lf in self.layers)

    @property
    def params_after(self) -> int:
        return sum(lf.params_after for lf in self.layers)

    @property
    def param_ratio(self) -> float:
        """original / factorized parameters over the layers considered."""
        return self.params_before / max(self.params_after, 1)

    @property
    def mac_ratio(self) -> float | None:
        if any(lf.macs_before is None for lf in self.layers) or not self.layers:
            return None
        return sum(lf.macs_before for lf in self.layers) / max(sum(lf.macs_after for lf in self.layers), 1)

    def to_dict(self) -> dict:
        return {"method": self.method, "params_before": self.params_before, "params_after": self.params_after,
                "param_ratio": self.param_ratio, "mac_ratio": self.mac_ratio, "layers": [asdict(lf) for lf in self.layers]}


# --- costs (per sample; MACs exclude bias additions) ------------------------------------------------------

def _bias(layer: nn.Module) -> int:
    return 0 if layer.bias is None else layer.bias.numel()


def _costs(layer: nn.Module, method: str, ranks: tuple[int, ...], io: dict | None) -> tuple[int, int | None]:
    """(parameters, MACs) of `layer` factorized with `ranks` (ranks=() means the dense layer)."""
    if isinstance(layer, nn.Linear):
        n_in, n_out = layer.in_features, layer.out_features
        w = n_in * n_out if not ranks else ranks[0] * (n_in + n_out)
        return w + _bias(layer), None if io is None else w * io["positions"]
    c_out, c_in, kh, kw = layer.weight.shape
    if io is None:
        hi = wi = ho = wo = None
    else:
        (hi, wi), (ho, wo) = io["in"], io["out"]
    if not ranks:
        w = c_out * c_in * kh * kw
        return w + _bias(layer), None if io is None else w * ho * wo
    if method == "tucker":
        ro, ri = ranks
        params = c_in * ri + ri * ro * kh * kw + ro * c_out
        macs = None if io is None else c_in * ri * hi * wi + (ri * ro * kh * kw + ro * c_out) * ho * wo
        return params + _bias(layer), macs
    if method == "separable":  # k_h×1 conv on (h_out × w_in) outputs, 1×k_w conv on (h_out × w_out)
        k = ranks[0]
        macs = None if io is None else k * c_in * kh * ho * wi + c_out * k * kw * ho * wo
        return k * c_in * kh + c_out * k * kw + _bias(layer), macs
    r = ranks[0]
    params = r * (c_in + kh + kw + c_out)
    macs = None if io is None else c_in * r * hi * wi + r * kh * ho * wi + (r * kw + r * c_out) * ho * wo
    return params + _bias(layer), macs


def _record_io(model: nn.Module, layers: dict[str, nn.Module], example_input: torch.Tensor) -> dict[str, dict]:
    io: dict[str, dict] = {}

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                io[name] = {"in": tuple(x.shape[-2:]), "out": tuple(output.shape[-2:])}
            else:
                io[name] = {"positions": math.prod(x.shape[1:-1])}
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return io


# --- rank selection ---------------------------------------------------------------------------------------

def _tucker_ranks(c_out: int, c_in: int, t: int) -> tuple[int, int]:
    """Ranks growing together in proportion to the channel counts, t = 1 … max(c_out, c_in)."""
    m = max(c_out, c_in)
    return max(1, min(c_out, round(t * c_out / m))), max(1, min(c_in, round(t * c_in / m)))


def _cp_energy_rank(weight: torch.Tensor, energy: float, max_rank: int, seed: int) -> int:
    """Smallest CP rank whose ALS fit explains `energy`, by doubling then bisection.

    Starts from the largest unfolding's energy rank: an unfolding's rank never exceeds the CP rank, so no
    smaller rank can reach the energy. ALS gets slow at high rank, so the search fits quickly (25 sweeps).
    """
    w = weight.detach().double()

    def explained(r: int) -> float:
        lam, factors = cp_factors(weight, r, n_iter_max=25, seed=seed, tol=1e-6)
        w_hat = torch.einsum("r,or,ir,hr,wr->oihw", *(torch.from_numpy(a) for a in (lam, *factors)))
        return 1.0 - float((w - w_hat).norm() ** 2 / w.norm().clamp_min(1e-30) ** 2)

    lo = min(max(energy_rank(torch.linalg.svdvals(unfold(w, m)), energy) for m in range(4)), max(1, max_rank))
    if explained(lo) >= energy:
        return lo
    hi = lo
    while True:  # invariant: explained(lo) < energy
        hi = min(2 * hi, max_rank)
        if explained(hi) >= energy:
            break
        if hi == max_rank:  # not reachable with any saving: the caller leaves the layer dense
            return max_rank
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if explained(mid) >= energy:
            hi = mid
        else:
            lo = mid
    return hi


def _select_ranks(layer: nn.Module, method: str, energy: float | None, ratio: float | None, vbmf: bool,
                  io: dict | None, ratio_of: str, seed: int) -> tuple[int, ...]:
    w = layer.weight.detach()
    if method == "svd":
        full = min(w.shape)
        if energy is not None:
            return (energy_rank(torch.linalg.svdvals(w.double()), energy),)
        if vbmf:
            return (evbmf_rank(w),)
        dense = _costs(layer, method, (), io)
        pick = 0 if ratio_of == "params" else 1
        return (budget_rank(lambda r: _costs(layer, method, (r,), io)[pick], dense[pick] / ratio, full),)
    c_out, c_in = w.shape[:2]
    if method == "separable":
        m = separable_matrix(w.double())
        if energy is not None:
            return (energy_rank(torch.linalg.svdvals(m), energy),)
        if vbmf:
            return (evbmf_rank(m),)
        dense = _costs(layer, method, (), io)
        pick = 0 if ratio_of == "params" else 1
        return (budget_rank(lambda r: _costs(layer, method, (r,), io)[pick], dense[pick] / ratio, min(m.shape)),)
    if method == "tucker":
        if energy is not None:
            return (energy_rank(torch.linalg.svdvals(unfold(w, 0).double()), energy),
                    energy_rank(torch.linalg.svdvals(unfold(w, 1).double()), energy))
        if vbmf:
            return evbmf_rank(unfold(w, 0)), evbmf_rank(unfold(w, 1))
        dense = _costs(layer, method, (), io)
        pick = 0 if ratio_of == "params" else 1
        t = budget_rank(lambda t: _costs(layer, method, _tucker_ranks(c_out, c_in, t), io)[pick], dense[pick] / ratio, max(c_out, c_in))
        return _tucker_ranks(c_out, c_in, t)
    dense_params = _costs(layer, method, (), io)[0]
    max_rank = budget_rank(lambda r: _costs(layer, method, (r,), io)[0], dense_params, 10 * max(w.shape))
    if energy is not None:
        return (_cp_energy_rank(w, energy, max_rank, seed),)
    if vbmf:  # no VB rule for CP itself: the larger of the channel unfoldings' EVBMF ranks
        return (max(evbmf_rank(unfold(w, 0)), evbmf_rank(unfold(w, 1))),)
    dense = _costs(layer, method, (), io)
    pick = 0 if ratio_of == "params" else 1
    return (budget_rank(lambda r: _costs(layer, method, (r,), io)[pick], dense[pick] / ratio, max_rank),)


# --- model surgery ----------------------------------------------------------------------------------------

def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _candidates(model: nn.Module, method: str, layers: list[str] | None) -> dict[str, nn.Module]:
    kind = nn.Linear if method == "svd" else nn.Conv2d
    inside = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, LowRank))
    found = {n: m for n, m in model.named_modules() if isinstance(m, kind) and n and not n.startswith(inside or ("\0",))}
    if method != "svd":  # 1×1 and grouped convolutions have nothing for Tucker-2/CP to factor
        found = {n: m for n, m in found.items() if m.groups == 1 and m.kernel_size != (1, 1)}
    if layers is None:
        return found
    missing = [n for n in layers if n not in found]
    if missing:
        kinds = "Linear" if method == "svd" else "Conv2d (k×k, groups=1)"
        raise UserError(f"{method}: no {kinds} layer named {', '.join(missing)}; candidates: {', '.join(found) or '(none)'}")
    return {n: found[n] for n in layers}


def factorize(model: nn.Module, method: str = "svd", *, energy: float | None = None, ratio: float | None = None,
              vbmf: bool = False, ranks: dict[str, int | tuple[int, int]] | None = None, layers: list[str] | None = None,
              example_input: torch.Tensor | None = None, ratio_of: str = "params", seed: int = 0) -> FactorizationReport:
    """Replace Linear (svd) or k×k Conv2d (tucker, cp, separable) layers of `model` in place by factorized ones.

    Tucker ranks are (R_out, R_in). With a rank rule, layers where factorizing saves nothing stay dense (reported
    as skipped); explicit `ranks` are always applied. Pass `example_input` for per-layer MACs (needed for
    ratio_of="macs"). Fine-tune afterwards with `nncompress.training.train` to win back accuracy.
    """
    if method not in METHODS:
        raise UserError(f"unknown factorization '{method}': use one of {', '.join(METHODS)}")
    rules = sum(x is not None for x in (energy, ratio, ranks)) + bool(vbmf)
    if rules != 1:
        raise UserError("choose exactly one rank rule: energy, ratio, vbmf or explicit ranks")
    if ratio is not None and ratio <= 1.0:
        raise UserError(f"ratio is original/compressed and must be > 1, got {ratio}")
    if ratio_of not in ("params", "macs"):
        raise UserError(f"ratio_of must be 'params' or 'macs', got '{ratio_of}'")
    if ratio_of == "macs" and example_input is None and ratio is not None:
        raise UserError("a MAC ratio needs example_input to know the feature-map sizes")
    cands = _candidates(model, method, list(ranks) if ranks is not None else layers)
    if not cands:
        kinds = "Linear" if method == "svd" else "k×k Conv2d (groups=1)"
        raise UserError(f"{method}: the model has no {kinds} layers to factorize; use --method svd for Linear layers, tucker/cp/separable for convolutions")
    io_all = _record_io(model, cands, example_input) if example_input is not None else {}
    report = FactorizationReport(method, [])
    ties = tie_map(model)
    for name, layer in cands.items():
        io = io_all.get(name)
        partners = ties.get(f"{name}.weight")
        if partners:  # factors cannot stay tied to a full matrix (e.g. GPT-2's lm_head and its embedding table)
            p0, m0 = _costs(layer, method, (), io)
            entry = LayerFactorization(name, tuple(layer.weight.shape), (), p0, p0, m0, m0)
            entry.skipped = tie_message(f"{name}.weight", partners, "left dense (factorizing would untie it)")
            warn_tied(f"{name}.weight", partners, "left dense (factorizing one holder would untie it)")
            report.layers.append(entry)
            continue
        check_finite_weights(layer, f"{method} factorization of layer {name}",
                             "its weights hold NaN/inf before factorizing: retrain or reload the model")
        if ranks is not None:
            r = ranks[name]
            chosen = tuple(r) if isinstance(r, (tuple, list)) else (r,)
            if method == "tucker" and len(chosen) != 2:
                raise UserError(f"Tucker-2 needs two ranks (R_out, R_in) for layer {name}, got {chosen}")
        else:
            chosen = _select_ranks(layer, method, energy, ratio, vbmf, io, ratio_of, seed)
        p0, m0 = _costs(layer, method, (), io)
        p1, m1 = _costs(layer, method, chosen, io)
        entry = LayerFactorization(name, tuple(layer.weight.shape), chosen, p0, p0, m0, m0)
        if ranks is None and (p1 >= p0 or (m1 is not None and m1 >= m0)):
            entry.skipped = f"no saving at ranks {chosen}"
            report.layers.append(entry)
            continue
        if method == "svd":
            new = svd_linear(layer, chosen[0])
        elif method == "tucker":
            new = tucker2_conv(layer, *chosen, seed=seed)
        elif method == "separable":
            new = separable_conv(layer, chosen[0])
        else:
            new = cp_conv(layer, chosen[0], seed=seed)
        check_finite_weights(new, f"{method} factorization of layer {name} (ranks {new.ranks})",
                             "the layer's weights or the decomposition are not finite: check the weights, or try another method or rank")
        entry.ranks = new.ranks
        entry.params_after, entry.macs_after = _costs(layer, method, new.ranks, io)
        entry.rel_error = relative_error(layer.weight, new)
        new.train(layer.training)
        _set_module(model, name, new)
        report.layers.append(entry)
    return report


# --- saving and restoring factorized models ---------------------------------------------------------------

def lowrank_spec(model: nn.Module) -> dict[str, dict]:
    """{layer name: {"method", "ranks"}} for every factorized layer, enough to rebuild the structure."""
    return {n: {"method": m.method, "ranks": list(m.ranks)} for n, m in model.named_modules() if isinstance(m, LowRank)}


def restructure(model: nn.Module, spec: dict[str, dict]) -> nn.Module:
    """Swap the named dense layers for empty factorized ones of the given ranks (to load a checkpoint into)."""
    builders = {"svd": svd_structure, "tucker": tucker_structure, "cp": cp_structure, "separable": separable_structure}
    for name, entry in spec.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"factorized layer '{name}' is not in this model: was it saved from another architecture?") from None
        if entry["method"] not in builders:
            raise UserError(f"unknown factorization '{entry['method']}' for layer {name}")
        _set_module(model, name, builders[entry["method"]](layer, *entry["ranks"]))
    return model


def save_factorized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save weights as safetensors with the factorization spec in the file's metadata."""
    return save_weights(model.state_dict(), path, metadata={SPEC_KEY: json.dumps(lowrank_spec(model))})


def load_factorized(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild the factorized structure recorded in `path` on a fresh `model`, then load the weights."""
    state = load_weights(path)
    spec = {}
    if Path(path).suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            spec = json.loads((f.metadata() or {}).get(SPEC_KEY, "{}"))
    restructure(model, spec)
    problem = state_dict_mismatch(model.state_dict(), state)  # names the first mismatched key and both shapes
    if problem:
        raise UserError(f"weights in {path} do not fit the model: {problem}; were they factorized from another model?")
    model.load_state_dict(state)
    return model
