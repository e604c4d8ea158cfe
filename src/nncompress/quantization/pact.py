"""PACT: parameterized clipping activation for low-bit activations (Choi et al. 2018, arXiv:1805.06085).

Why: ReLU outputs are unbounded, so a k-bit activation grid must either cover rare large values (coarse steps
for everything) or clip them at a hand-picked bound (ReLU6). PACT learns the bound α per layer by SGD:

    y   = clip(x, 0, α) = 0.5·(|x| − |x − α| + α)                                      (paper eq. 1)
    y_q = round(y · (2^k − 1)/α) · α/(2^k − 1)                                          (paper eq. 2)

With the straight-through estimator for round() (∂y_q/∂y = 1) the paper's eq. 3 gives

    ∂y_q/∂α = ∂y_q/∂y · ∂y/∂α = 0 for x < α,  1 for x ≥ α,

so ∂L/∂α = Σ_{x ≥ α} ∂L/∂y_q; and ∂y_q/∂x = 1 for 0 ≤ x < α, else 0 (clipped values carry no gradient to x).
Note this is the paper's estimator, not the exact derivative of eq. 2 in α (which would add (y_q − y)/α below α);
the paper argues the clipping term dominates. α is L2-regularised with weight λ (paper §2: λ·α², the same
λ as the weights' decay) so it does not grow to cover outliers; `pact_l2` returns that term for the loss.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.core.errors import UserError

DEFAULT_ALPHA_INIT = 10.0  # the paper initialises α to 10 (§3) and lets training shrink it


class _PACTFunction(torch.autograd.Function):
    """Clip to [0, α] then (if levels > 0) quantize to `levels` + 1 uniform values; the paper's STE backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
        a = alpha.clamp(min=1e-8)
        ctx.save_for_backward(x, a)
        y = torch.minimum(x.clamp(min=0), a.to(x.dtype))
        if levels > 0:
            step = a.to(x.dtype) / levels
            y = torch.round(y / step) * step
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, a = ctx.saved_tensors
        above = x >= a
        grad_x = g * ((x >= 0) & ~above) if ctx.needs_input_grad[0] else None
        grad_a = (g * above).sum().reshape(a.shape).to(a.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_a, None


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int | None = 4) -> torch.Tensor:
    """Functional PACT: clip(x, 0, α), then k-bit uniform quantization on [0, α] unless `bits` is None."""
    return _PACTFunction.apply(x, alpha, 0 if bits is None else (1 << bits) - 1)


class PACT(nn.Module):
    """Clipped ReLU with a learnable per-layer bound α and k-bit activation quantization (Choi et al. 2018).

    `bits=None` keeps the clipped activation in float (the paper's PACT without quantization)."""

    def __init__(self, bits: int | None = 4, alpha_init: float = DEFAULT_ALPHA_INIT):
        super().__init__()
        if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 16):
            raise UserError(f"PACT bits must be an integer in 1..16 or None, got {bits!r}")
        if not alpha_init > 0:
            raise UserError(f"PACT alpha_init must be > 0 (the clipping bound), got {alpha_init!r}")
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    @property
    def levels(self) -> int:
        return 0 if self.bits is None else (1 << self.bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PACTFunction.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


def replace_relu_with_pact(model: nn.Module, bits: int | None = 4, alpha_init: float = DEFAULT_ALPHA_INIT,
                           modules: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)) -> list[str]:
    """Swap every activation *module* of a type in `modules` for a fresh `PACT(bits, alpha_init)`, in place.

    Returns the qualified names swapped. Works by module swap (no graph), so it covers nn.Sequential models and
    any model whose forward calls nn.ReLU / nn.ReLU6 modules; functional calls (`torch.relu`, `F.relu`,
    `x.relu()`) are not modules and cannot be swapped — rewrite them as modules first. A model in which nothing
    was swapped raises UserError, since a silent no-op would train a float-activation model by mistake.
    A module instance reused at several call sites becomes one shared PACT (one α), as it was one ReLU.
    """
    swapped: list[str] = []
    replaced: dict[int, PACT] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):  # not named_children(): it hides a reused module
            if isinstance(child, modules) and not isinstance(child, PACT):
                new = replaced.setdefault(id(child), PACT(bits, alpha_init))
                setattr(parent, name, new)
                swapped.append(f"{parent_name}.{name}" if parent_name else name)
    if not swapped:
        kinds = ", ".join(m.__name__ for m in modules)
        raise UserError(f"no {kinds} module in {type(model).__name__} to replace with PACT; functional relu calls "
                        f"cannot be swapped, use nn.ReLU modules")
    dev = next((p.device for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)), None)
    if dev is not None:
        for m in replaced.values():
            m.to(dev)
    return swapped


def pact_alphas(model: nn.Module) -> dict[str, float]:
    """The learned clipping bound α of every PACT module, by qualified name."""
    return {name: float(m.alpha.detach()) for name, m in model.named_modules() if isinstance(m, PACT)}


def pact_l2(model: nn.Module, weight: float = 2e-4) -> torch.Tensor:
    """λ·Σ α² over the model's PACT modules (the paper's L2 regulariser on α); add it to the training loss."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACT)]
    if not alphas:
        return torch.zeros(())
    return weight * torch.stack([a.pow(2) for a in alphas]).sum()
