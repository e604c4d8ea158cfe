"""Per-layer input statistics from calibration batches, shared by the LLM pruning and quantization methods.

One forward pass over a few calibration batches, with a pre-hook on every linear-like layer, gives what
the one-shot LLM methods need about each layer's input X (rows = tokens, columns = input channels):

    XᵀX       (float64 running sum)   GPTQ and SparseGPT: the layer-wise Hessian H = 2·XᵀX / n_tokens
    ‖X_j‖₂    (per input channel)     Wanda: score |W_ij|·‖X_j‖₂ (Sun et al. 2024)
    max|X_j|  (per input channel)     SmoothQuant: s_j = max|X_j|^α / max|W_j|^(1−α) (Xiao et al. 2023)
    mean|X_j| (per input channel)     AWQ: s_j = mean|X_j|^α (Lin et al. 2024)
    a sample of X rows (optional)     AWQ's and SmoothQuant's output-error searches

Linear-like layers are `nn.Linear` and Hugging Face's GPT-2 `Conv1D` (found by duck typing: a class named
`Conv1D` with an `nf` attribute, weight stored (in, out)), so transformers is never imported here.

Two calibration modes:
- **dense** (`collect_stats`): every layer's statistics come from the *dense* model's activations, all in
  one pass. Cheap; what Wanda does.
- **sequential** (`sequential_apply`): layer l is calibrated on inputs produced by the already-compressed
  layers < l (GPTQ's and SparseGPT's block-by-block scheme, here at single-layer granularity, GPTQ's
  "true sequential"). It costs one (truncated) forward pass per layer: each pass stops right after the
  layer being calibrated has seen its input.

Each layer also records which normalization module (LayerNorm, RMSNorm) produced its input tensor, when
the input *is* that module's output object — the pairing SmoothQuant and AWQ need to fold a per-channel
input scale into the norm's (γ, β) instead of keeping an explicit multiply.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import call_model as seam_call_model
from nncompress.core.model_io import split_batch, to_device


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, or Hugging Face's transformers `Conv1D` (weight (in, out), attribute `nf` = out features)."""
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(getattr(module, "weight", None), torch.Tensor)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, or any module whose class name ends in 'Norm' with a 1-D weight (RMSNorm, LlamaRMSNorm, ...)."""
    if isinstance(module, nn.LayerNorm):
        return True
    w = getattr(module, "weight", None)
    return type(module).__name__.endswith("Norm") and isinstance(w, torch.Tensor) and w.dim() == 1


def _transposed(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) matrix (a transposed view for Conv1D; the effective masked weight)."""
    return module.weight.t() if _transposed(module) else module.weight


def set_weight_matrix(module: nn.Module, w: torch.Tensor) -> None:
    """Write an (out, in) matrix into the layer's own layout, in place (dense tensor under any mask)."""
    from torch.nn.utils import parametrize

    target = module.parametrizations["weight"].original if parametrize.is_parametrized(module, "weight") else module.weight
    with torch.no_grad():
        target.copy_((w.t() if _transposed(module) else w).to(target.dtype))


def in_out_features(module: nn.Module) -> tuple[int, int]:
    w = weight_matrix(module)
    return int(w.shape[1]), int(w.shape[0])


def calibration_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Linear-like layers by name. Default: all of them except a language model's output head, which the LLM
    pruning/quantization papers leave dense: a layer whose weight is tied to an nn.Embedding, or one named
    `lm_head` / `embed_out` (untied heads of LLaMA-, GPT-NeoX-style models). Pass `layers` to choose others."""
    every = dict(model.named_modules())
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        bad = [n for n in layers if n not in every or not is_linear_like(every[n])]
        if bad:
            choices = ", ".join(n for n, m in every.items() if is_linear_like(m)) or "none"
            raise UserError(f"no linear layer named {', '.join(map(repr, bad))}: choose from {choices}")
        return {n: every[n] for n in layers}
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = ("lm_head", "embed_out")
    out = {n: m for n, m in every.items() if is_linear_like(m) and id(getattr(m, "weight", None)) not in embedded
           and n.rsplit(".", 1)[-1] not in heads}
    if not out:
        raise UserError(f"{type(model).__name__} has no nn.Linear (or transformers Conv1D) layers to calibrate")
    return out


def call_model(model: nn.Module, batch):
    """Run `model` on one calibration batch through the model seam (`core.model_io`): a tensor → model(x), an
    (x, y) pair → model(x), a tokenizer dict → model(**inputs) without its labels; moved to the model's device."""
    inputs, _ = split_batch(batch)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return seam_call_model(model, to_device(inputs, device))


@dataclass
class LayerStats:
    """Running statistics of one layer's input X (tokens × in_features)."""

    in_features: int
    tokens: int = 0
    xtx: torch.Tensor | None = None          # Σ x xᵀ, float64, (in, in)
    sq_sum: torch.Tensor | None = None       # Σ x_j², float64, (in,)
    abs_sum: torch.Tensor | None = None      # Σ |x_j|, float64, (in,)
    abs_max: torch.Tensor | None = None      # max |x_j|, float32, (in,)
    samples: list[torch.Tensor] = field(default_factory=list)  # kept input rows (float32)
    source: str | None = None                # name of the norm module whose output is this layer's input
    source_seen: bool = False

    def update(self, x: torch.Tensor, hessian: bool, keep_tokens: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if x.shape[-1] != self.in_features:
            raise UserError(f"layer input has {x.shape[-1]} features, the layer expects {self.in_features}")
        x64 = x.to(torch.float64)
        if self.sq_sum is None:
            z = torch.zeros(self.in_features, dtype=torch.float64, device=x.device)
            self.sq_sum, self.abs_sum = z.clone(), z.clone()
            self.abs_max = torch.zeros(self.in_features, dtype=torch.float32, device=x.device)
        self.sq_sum += (x64 * x64).sum(0)
        self.abs_sum += x64.abs().sum(0)
        self.abs_max = torch.maximum(self.abs_max, x.abs().amax(0).float())
        if hessian:
            self.xtx = x64.t() @ x64 if self.xtx is None else self.xtx + x64.t() @ x64
        kept = sum(s.shape[0] for s in self.samples)
        if kept < keep_tokens:
            self.samples.append(x[: keep_tokens - kept].float().clone())
        self.tokens += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2·XᵀX / n_tokens (float64): the Hessian of ‖WX − ŴX‖²/n with respect to each row of Ŵ."""
        if self.xtx is None or self.tokens == 0:
            raise UserError("no Hessian was collected for this layer: calibrate with hessian=True on at least one batch")
        return 2.0 * self.xtx / self.tokens

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ over all calibration tokens, per input channel (float32)."""
        return self.sq_sum.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean |X_j| per input channel (float32)."""
        return (self.abs_sum / max(self.tokens, 1)).float()

    @property
    def inputs(self) -> torch.Tensor:
        """The kept input rows, (tokens, in) float32."""
        if not self.samples:
            raise UserError("no input rows were kept for this layer: calibrate with keep_tokens > 0")
        return torch.cat(self.samples)


class _Stop(Exception):
    """Raised in a hook to end a forward pass early (the layers after it are not needed)."""


def _batches(batches) -> list:
    if isinstance(batches, (torch.Tensor, Mapping)):
        return [batches]
    out = list(batches)
    if not out:
        raise UserError("no calibration batches: give at least one batch (a tensor or a tokenizer dict)")
    return out


def collect_stats(model: nn.Module, batches: Iterable, layers: Sequence[str] | None = None, hessian: bool = True,
                  keep_tokens: int = 0, stop_after: str | None = None) -> dict[str, LayerStats]:
    """Input statistics of every calibration layer over `batches`, from one no-grad pass per batch.

    Memory: with `hessian=True` every chosen layer holds an in×in float64 XᵀX at once (11008² × 8 B ≈ 1 GB for a
    LLaMA-7B down projection); the sequential mode (`sequential_apply(sequential=True)`) holds one at a time.

    `keep_tokens` keeps up to that many input rows per layer (for output-error searches). `stop_after` ends
    each pass once that layer has seen its input (sequential calibration). Also records, per layer, the norm
    module whose output tensor is exactly the layer's input (`LayerStats.source`).
    """
    chosen = calibration_layers(model, layers)
    stats = {n: LayerStats(in_out_features(m)[0]) for n, m in chosen.items()}
    names = {id(m): n for n, m in chosen.items()}
    norm_out: dict[int, str] = {}
    handles = []

    def pre_hook(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        name = names[id(module)]
        s = stats[name]
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"the input of layer '{name}' holds NaN/inf during calibration: check the calibration data "
                            "and the layers before it (a diverged or wrongly loaded model)")
        s.update(x, hessian, keep_tokens)
        held = norm_out.get(id(x))
        src = held[1] if held is not None and held[0] is x else None
        if not s.source_seen:
            s.source, s.source_seen = src, True
        elif s.source != src:  # fed by the norm in one call and by something else in another: no single source
            s.source = None
        if stop_after is not None and name == stop_after:
            raise _Stop

    def norm_hook(module, args, out):
        if isinstance(out, torch.Tensor):
            norm_out[id(out)] = (out, norm_names[id(module)])  # the tensor is held so its id is not reused

    norm_names = {id(m): n for n, m in model.named_modules() if is_norm(m)}
    was_training = model.training
    try:
        for m in chosen.values():
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
        for n, m in model.named_modules():
            if id(m) in norm_names:
                handles.append(m.register_forward_hook(norm_hook))
        model.eval()
        with torch.no_grad():
            for batch in _batches(batches):
                norm_out.clear()
                try:
                    call_model(model, batch)
                except _Stop:
                    pass
    finally:
        model.train(was_training)
        norm_out.clear()
        for h in handles:
            h.remove()
    empty = [n for n, s in stats.items() if s.tokens == 0 and (stop_after is None or n == stop_after)]
    if empty:
        raise UserError(f"layer(s) {', '.join(empty)} never ran during calibration: check the batches reach them, "
                        "or pass layers= to choose the ones that run")
    return stats


def execution_order(model: nn.Module, batch, layers: Sequence[str] | None = None) -> list[str]:
    """Calibration layers in the order their forward runs on `batch` (layers that never run are dropped)."""
    chosen = calibration_layers(model, layers)
    order: list[str] = []
    names = {id(m): n for n, m in chosen.items()}

    def hook(module, _args):
        if names[id(module)] not in order:
            order.append(names[id(module)])

    handles = [m.register_forward_pre_hook(hook) for m in chosen.values()]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


def sequential_apply(model: nn.Module, batches: Iterable, fn: Callable[[str, nn.Module, LayerStats], None],
                     layers: Sequence[str] | None = None, sequential: bool = False, hessian: bool = True,
                     keep_tokens: int = 0) -> dict[str, LayerStats]:
    """Call `fn(name, layer, stats)` for each calibration layer, which compresses the layer in place.

    `sequential=False`: all statistics from the dense model in one pass, then `fn` on each layer.
    `sequential=True`: layers in execution order; each is calibrated on inputs produced by the layers already
    compressed (one truncated pass per layer), as GPTQ/SparseGPT do block by block.
    """
    batches = _batches(batches)
    if not sequential:
        stats = collect_stats(model, batches, layers, hessian=hessian, keep_tokens=keep_tokens)
        modules = calibration_layers(model, layers)
        for name, s in stats.items():
            fn(name, modules[name], s)
        return stats
    order = execution_order(model, batches[0], layers)
    modules = calibration_layers(model, layers)
    out = {}
    for name in order:
        # resolve by name each time: fn may swap the previous layer for another module
        current = dict(model.named_modules())
        s = collect_stats(model, batches, [name], hessian=hessian, keep_tokens=keep_tokens, stop_after=name)[name]
        fn(name, current.get(name, modules[name]), s)
        out[name] = s
    return out


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name` with `module`."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# --- the damped Hessian GPTQ and SparseGPT both invert ---------------------------------------------------------

def damped_hessian(h: torch.Tensor, w: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H + λI, W with dead columns zeroed, dead mask). Dead inputs (diag(H) = 0: never active) get H_jj = 1
    and a zero weight, as in the reference implementation; λ = damp · mean(diag(H))."""
    if not 0 <= damp < 1:
        raise UserError(f"damp={damp} must be in [0, 1) (a fraction of the mean Hessian diagonal; GPTQ and SparseGPT use 0.01)")
    h = h.detach().to(torch.float64).clone()
    if h.shape != (w.shape[1], w.shape[1]):
        raise UserError(f"Hessian shape {list(h.shape)} does not match the weight's {w.shape[1]} input features")
    if not torch.isfinite(h).all():
        raise UserError("the calibration Hessian holds NaN/inf: check the calibration data and the model's activations")
    w = w.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return h, w, dead


def inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), float64; a UserError if H is not positive definite."""
    try:
        lower = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(hinv, upper=True)
    except RuntimeError:
        raise UserError("the damped Hessian is not positive definite: raise damp (e.g. 0.05) or use more calibration tokens") from None
