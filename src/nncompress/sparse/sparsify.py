"""`sparsify`: make a pruned model run faster, layer by layer, only where this machine says it does.

Pruning zeroes weights but a dense layer still multiplies by every zero, so a 90 %-sparse model runs as
fast as the dense one. A sparse product skips the zeros but pays for indices and irregular access; whether it
wins depends on sparsity, shape, batch size, threads and the CPU. So nothing is assumed: for each pruned
nn.Linear / nn.Conv2d, every available sparse format is built, checked against the dense layer on the
activations the example input produces there, and timed interleaved with the dense layer (medians; see
`analysis.latency.measure_interleaved_ms`). A layer is swapped for the fastest sparse module only when that
beats dense by `min_speedup`; otherwise it stays dense, and the report says why.

Then whole MLPs: a module whose forward is a chain Flatten? → Linear → ReLU? → … → Linear (`sparse.mlp`) is timed
once more as a single fused C call against what the per-layer choices give, and switched to it only where that is
measured faster by `min_speedup` (at batch 1 a small MLP's time is mostly per-layer call overhead).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.analysis.latency import measure_interleaved_ms
from nncompress.core.errors import UserError
from nncompress.sparse import kernel as _kernel
from nncompress.sparse.mlp import FusedSparseMLP, MLPChain, find_mlp_chain
from nncompress.sparse.modules import SparseConv2d, SparseLinear, check_format, csr_parts

DEFAULT_FORMATS = ("csr", "bsr", "scipy", "kernel")
BSR_BLOCKS = (4, 8, 16, 32)
MAX_BSR_FILL = 0.5
"""A BSR candidate is built only if its blocks hold at most half the dense elements: a fuller one stores about
as much as the dense weight and multiplies all of it, so it cannot beat dense (and takes long to build)."""


@dataclass
class LayerChoice:
    """What `sparsify` decided for one layer; times are medians in ms at the example input's batch size."""

    name: str
    kind: str  # "Linear" or "Conv2d"
    shape: list[int]
    sparsity: float
    format: str  # "dense" or the sparse format it now runs
    dense_ms: float | None = None
    sparse_ms: float | None = None  # best sparse candidate's median (also when dense won)
    speedup: float | None = None  # dense_ms / sparse_ms of the best candidate
    candidates_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass
class FusedChoice:
    """What `sparsify` decided for one MLP chain; times are medians in ms of the whole module at the example's batch."""

    module: str  # "" is the model itself
    layers: list[str]
    applied: bool
    unfused_ms: float | None = None  # the module with the per-layer choices
    fused_ms: float | None = None
    speedup: float | None = None  # unfused_ms / fused_ms
    reason: str = ""


@dataclass
class SparsifyReport:
    layers: list[LayerChoice]
    threads: int
    batch_size: int
    repeats: int
    max_abs_diff: float  # sparse model vs dense model on the example input
    tolerance: float
    notes: list[str] = field(default_factory=list)
    fused: list[FusedChoice] = field(default_factory=list)

    @property
    def converted(self) -> list[str]:
        return [c.name for c in self.layers if c.format != "dense"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: layer, sparsity, format, dense ms, sparse ms, speed-up."""
        rows = [f"{'layer':<24} {'sparsity':>8} {'format':>8} {'dense ms':>9} {'sparse ms':>9} {'speed-up':>8}"]
        for c in self.layers:
            f = (lambda v, p=3: "-" if v is None else f"{v:.{p}f}")
            rows.append(f"{c.name:<24} {c.sparsity:>8.3f} {c.format:>8} {f(c.dense_ms):>9} {f(c.sparse_ms):>9} {f(c.speedup, 2):>8}"
                        + (f"  ({c.reason})" if c.reason else ""))
        for c in self.fused:
            f = (lambda v, p=3: "-" if v is None else f"{v:.{p}f}")
            rows.append(f"fused MLP '{c.module or '<model>'}' ({', '.join(c.layers)}): {'applied' if c.applied else 'not applied'}, "
                        f"{f(c.unfused_ms)} -> {f(c.fused_ms)} ms ({f(c.speedup, 2)}x)" + (f"  ({c.reason})" if c.reason else ""))
        rows.append(f"threads={self.threads} batch={self.batch_size} repeats={self.repeats} "
                    f"max|sparse-dense|={self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
        return "\n".join(rows)


def _as_args(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise UserError(f"sparsify compares the model's tensor output, but the model returned {type(out).__name__}")


def _check_args(threads: int, min_sparsity: float, formats: Sequence[str], verify_atol: float, min_speedup: float,
                repeats: int) -> list[str]:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"sparsify: threads must be an integer >= 1, got {threads!r}")
    if not (isinstance(min_sparsity, (int, float)) and 0.0 <= min_sparsity <= 1.0):
        raise UserError(f"sparsify: min_sparsity must be in [0, 1], got {min_sparsity!r}")
    if not (isinstance(verify_atol, (int, float)) and math.isfinite(verify_atol) and verify_atol > 0):
        raise UserError(f"sparsify: verify_atol must be a positive finite number, got {verify_atol!r}")
    if not (isinstance(min_speedup, (int, float)) and math.isfinite(min_speedup) and min_speedup > 0):
        raise UserError(f"sparsify: min_speedup must be a positive number, got {min_speedup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"sparsify: repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(formats, str) or not formats:
        raise UserError(f"sparsify: formats must be a non-empty sequence such as ('csr', 'kernel'), got {formats!r}")
    return [f if f == "bsr" else check_format(f) for f in formats]


def _bsr_formats(weight2d: torch.Tensor) -> list[str]:
    """bsr<b> for the block sizes that divide the shape and store at most MAX_BSR_FILL of the dense elements."""
    nz = weight2d != 0
    out = []
    rows, cols = nz.shape
    for b in BSR_BLOCKS:
        if rows % b or cols % b:
            continue
        filled = nz.reshape(rows // b, b, cols // b, b).any(dim=3).any(dim=1).float().mean().item()
        if filled > MAX_BSR_FILL:
            break  # a 2b-block holds four b-blocks: if too many b-blocks are filled, larger ones are fuller still
        out.append(f"bsr{b}")
    return out


def _dense_fn(layer: nn.Module, x: torch.Tensor):
    # the effective weight is computed once, outside the timing: a masked layer's w·m product is a
    # training-time cost, not what a finalized dense model pays per call
    w = layer.weight.detach().clone()
    b = None if layer.bias is None else layer.bias.detach().clone()
    if isinstance(layer, nn.Conv2d):
        return lambda: F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    return lambda: F.linear(x, w, b)


def _from_parts(layer: nn.Module, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], fmt: str) -> nn.Module:
    w = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d(*parts, w.shape[0], w.shape[1], tuple(w.shape[2:]), layer.stride, layer.padding, layer.dilation, bias, fmt)
    return SparseLinear(*parts, tuple(w.shape), bias, fmt)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` is registered (a module registered under two names is swapped under both)."""
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, child_name, new)


def _mlp_candidates(model: nn.Module) -> dict[str, MLPChain]:
    """Outermost modules (the model included) whose forward is an MLP chain of >= 2 Linear layers."""
    out: dict[str, MLPChain] = {}
    for name, m in model.named_modules():
        if any(k == "" or name.startswith(k + ".") for k in out):
            continue  # inside a chain already found
        if sum(isinstance(c, (nn.Linear, SparseLinear)) for c in m.children()) < 2:
            continue  # cheap filter: trace only modules that hold two Linear layers themselves
        chain = find_mlp_chain(m)
        if chain is not None:
            out[name] = chain
    return out


def sparsify(model: nn.Module, example_input: Any, *, threads: int = 1, min_sparsity: float = 0.5,
             formats: Sequence[str] = DEFAULT_FORMATS, verify_atol: float = 1e-5, min_speedup: float = 1.05,
             repeats: int = 15, fuse: bool = True) -> SparsifyReport:
    """Swap each pruned Linear/Conv2d of `model` (in place) for a sparse-executing module where that is measured faster.

    `example_input`: a tensor (or tuple of positional tensors) at the batch size you will serve; latency is
    timed at that size with `threads` torch threads (interleaved medians of `repeats` calls). Layers with
    sparsity below `min_sparsity` are never converted. `formats`: any of "csr", "bsr" (block sizes 4..32
    that fit, each measured), "bsr<b>", "scipy", "kernel". A candidate is used only if it is at least
    `min_speedup` times faster than the dense layer and matches it within
    ``verify_atol · max(1, max|dense output|)`` (fp32 sums in another order differ by rounding that grows with
    the output's magnitude); the whole model is checked the same way at the end.

    `fuse`: also try each MLP chain (module doc) as one fused C call ("kernel" must be among `formats`, and every
    layer of the chain at least `min_sparsity` sparse); it is kept only if it is `min_speedup` times faster than the
    module with the per-layer choices, and matches within the same tolerance.

    Masked (parametrized) layers use their effective weight w·m; finalized layers their plain weight. The
    model is put in eval mode: sparse layers are inference-only. Returns a `SparsifyReport`.
    """
    wanted = _check_args(threads, min_sparsity, formats, verify_atol, min_speedup, repeats)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise UserError("sparsify: the model has no nn.Linear or nn.Conv2d layer to run sparse")
    for name, m in layers.items():
        w = m.weight
        if w.device.type != "cpu" or w.dtype != torch.float32:
            raise UserError(f"sparsify: layer '{name}' is {w.dtype} on {w.device}; sparse execution is float32 on CPU "
                            "(call model.float().cpu() first)")
        if not torch.isfinite(w.detach()).all() or (m.bias is not None and not torch.isfinite(m.bias.detach()).all()):
            raise UserError(f"sparsify: layer '{name}' has NaN or infinite weights; fix the model (re-train or reload) first")
    notes = []
    if "kernel" in wanted and _kernel.load() is None:
        wanted.remove("kernel")
        notes.append(f"kernel format unavailable: {_kernel.unavailable_reason()}")

    model.eval()
    args = _as_args(example_input)
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(mod: nn.Module, inp: tuple, out: Any) -> None:  # returns None: a hook's return value would replace the output
            if name not in captured and inp and isinstance(inp[0], torch.Tensor):
                captured[name] = inp[0].detach()
        return hook

    chains = _mlp_candidates(model) if fuse and "kernel" in wanted else {}
    modules = dict(model.named_modules())
    hooks = [m.register_forward_hook(capture(name)) for name, m in layers.items()]
    hooks += [modules[name].register_forward_hook(capture("mlp:" + name)) for name in chains]
    try:
        with torch.no_grad():
            ref = _first_tensor(model(*args)).detach().clone()
    finally:
        for h in hooks:
            h.remove()
    batch = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1

    choices = []
    for name, layer in layers.items():
        kind = "Conv2d" if isinstance(layer, nn.Conv2d) else "Linear"
        w = layer.weight.detach()
        w2 = w.reshape(w.shape[0], -1)
        sparsity = float((w2 == 0).sum().item()) / max(1, w2.numel())
        choice = LayerChoice(name, kind, list(w.shape), round(sparsity, 6), "dense")
        choices.append(choice)
        why = SparseConv2d.supports(layer) if kind == "Conv2d" else None
        if sparsity < min_sparsity:
            choice.reason = f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
            continue
        if why is not None:
            choice.reason = why
            continue
        if name not in captured:
            choice.reason = "not called by the example input"
            continue
        x = captured[name]
        if x.dtype != torch.float32:
            choice.reason = f"its input is {x.dtype}, sparse execution is float32"
            continue
        fmts = [f for f in wanted if f != "bsr"] + (_bsr_formats(w2) if "bsr" in wanted else [])
        with torch.no_grad():
            y_dense = _dense_fn(layer, x)()
            tol = verify_atol * max(1.0, float(y_dense.abs().max()))
            cands: dict[str, nn.Module] = {}
            rejected = []
            parts = csr_parts(w2)  # once per layer: every format is built from the same CSR arrays
            for fmt in dict.fromkeys(fmts):
                mod = _from_parts(layer, parts, fmt)
                diff = float((mod(x) - y_dense).abs().max())
                if diff <= tol:
                    cands[fmt] = mod
                else:
                    rejected.append(f"{fmt} off by {diff:.3g}")
            if not cands:
                choice.reason = "no sparse format matched the dense output: " + ", ".join(rejected)
                continue
            fns = [_dense_fn(layer, x)] + [(lambda m=m: m(x)) for m in cands.values()]
            res = measure_interleaved_ms(fns, warmup=1, repeats=repeats, threads=threads)
        choice.dense_ms = round(res[0].median_ms, 4)
        choice.candidates_ms = {f: round(r.median_ms, 4) for f, r in zip(cands, res[1:])}
        best = min(choice.candidates_ms, key=choice.candidates_ms.get)
        choice.sparse_ms = choice.candidates_ms[best]
        choice.speedup = round(res[0].median_ms / max(res[1 + list(cands).index(best)].median_ms, 1e-9), 3)
        if choice.speedup >= min_speedup:
            choice.format = best
            _replace(model, layer, cands[best])
        else:
            choice.reason = f"dense is faster (best sparse: {best} at {choice.speedup:.2f}x, needs {min_speedup}x)"
        if rejected:
            choice.reason = "; ".join(filter(None, [choice.reason, "rejected " + ", ".join(rejected)]))

    fused = [_try_fuse(model, name, chain, layers, choices, captured.get("mlp:" + name), threads, min_sparsity, min_speedup,
                       verify_atol, repeats) for name, chain in chains.items()]

    with torch.no_grad():
        out = _first_tensor(model(*args))
    tolerance = verify_atol * max(1.0, float(ref.abs().max()))
    max_diff = float((out - ref).abs().max()) if out.numel() else 0.0
    if not max_diff <= tolerance:
        raise UserError(f"sparsify: the sparse model differs from the dense one by {max_diff:.3g} (> {tolerance:.3g}) "
                        "although every layer matched; the model may reuse a layer with different inputs")
    return SparsifyReport(choices, threads, batch, repeats, max_diff, tolerance, notes, fused)


def _try_fuse(model: nn.Module, name: str, chain: MLPChain, originals: dict[str, nn.Module], choices: list[LayerChoice],
              x: torch.Tensor | None, threads: int, min_sparsity: float, min_speedup: float, verify_atol: float,
              repeats: int) -> FusedChoice:
    """Time module `name` as it is now against its chain fused into one C call; install the fusion if it wins."""
    prefix = f"{name}." if name else ""
    full = [prefix + n for n in chain.linears]
    choice = FusedChoice(name, full, False)
    by_name = {c.name: c for c in choices}
    low = [n for n in full if by_name[n].sparsity < min_sparsity]
    if low:
        choice.reason = f"{', '.join(low)} below min_sparsity {min_sparsity}"
        return choice
    if x is None or x.dtype != torch.float32:
        choice.reason = "not called by the example input with a float32 tensor"
        return choice
    module = model.get_submodule(name) if name else model
    kernels = []
    for n in full:
        current = model.get_submodule(n)
        if isinstance(current, SparseLinear) and current.format == "kernel":
            kernels.append(current)
        else:
            orig = originals[n]
            kernels.append(_from_parts(orig, csr_parts(orig.weight.detach()), "kernel"))
    fused = FusedSparseMLP(kernels, chain.relu, chain.flatten)
    with torch.no_grad():
        ref = _first_tensor(module(x))
        diff = float((fused(x) - ref).abs().max())
        tol = verify_atol * max(1.0, float(ref.abs().max()))
        if not diff <= tol:
            choice.reason = f"fused output off by {diff:.3g} (> {tol:.3g})"
            return choice
        res = measure_interleaved_ms([lambda: module(x), lambda: fused(x)], warmup=3, repeats=max(repeats, 15) * 3,
                                     threads=threads)
    choice.unfused_ms, choice.fused_ms = round(res[0].median_ms, 4), round(res[1].median_ms, 4)
    choice.speedup = round(res[0].median_ms / max(res[1].median_ms, 1e-9), 3)
    if choice.speedup < min_speedup:
        choice.reason = f"per-layer execution is as fast ({choice.speedup:.2f}x, needs {min_speedup}x)"
        return choice
    for n, k in zip(full, kernels):
        current = model.get_submodule(n)
        if current is not k:
            _replace(model, current, k)
        c = by_name[n]
        c.format = "kernel"
        c.reason = f"fused into MLP '{name or '<model>'}' (one C call for the chain)"
    module.forward = fused  # instance attribute: nn.Module.__call__ (and its hooks) now runs the fused chain
    choice.applied = True
    return choice


def sparse_module_for(layer: nn.Module, format: str) -> nn.Module:
    """One layer's sparse twin in a given format without measuring (e.g. to force a format in a test)."""
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d.from_dense(layer, format)
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_dense(layer, format)
    raise UserError(f"only nn.Linear and nn.Conv2d run sparse, got {type(layer).__name__}")


__all__ = ["DEFAULT_FORMATS", "FusedChoice", "LayerChoice", "SparsifyReport", "csr_parts", "sparse_module_for", "sparsify"]
