"""Divergence guards: a NaN/inf loss, non-finite weights or a result at chance level is an error, never a result.

Why: a run whose loss went to NaN still "finishes" — the model predicts one class, evaluates at chance
(10 % on ten classes) and would be written and tabulated like any other result. Every stage that trains or
changes weights (training, fine-tuning, calibration, factorization, sharing, distillation, recipes) calls
these checks before it writes anything, so the user gets one line that names the stage and what to change.

Cost: the checks read tensors the caller already has (a loss summed on the device, a model's parameters
once per stage), so they add no GPU synchronisation per step.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from nncompress.core.errors import UserError


class DivergenceError(UserError):
    """A stage produced a non-finite loss or weights, or fell to chance accuracy: the CLI prints it and exits 2."""


def check_hyperparameter(name: str, value: float, *, positive: bool = True, flag: str | None = None) -> float:
    """`value` as a float, or a UserError when it is NaN/inf (or ≤ 0 when `positive`): checked before any work."""
    shown = flag or name
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{shown} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"{shown} must be a finite number, got {value}")
    if positive and v <= 0:
        raise UserError(f"{shown} must be > 0, got {value}")
    return v


def check_finite_loss(loss: torch.Tensor | float, where: str, hint: str) -> None:
    """Raise DivergenceError when `loss` (a tensor or a number) is NaN or ±inf. Reading a device tensor syncs:
    call it where the value is read anyway (per epoch) or on the first steps only."""
    value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise DivergenceError(f"{where}: loss is {_word(value)}; {hint}")


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and BatchNorm statistics holding a NaN or ±inf. Other buffers are left alone:
    observers start at min = +inf, max = −inf on purpose."""
    tensors = list(model.named_parameters())
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            tensors += [(f"{mname}.{b}" if mname else b, getattr(m, b)) for b in ("running_mean", "running_var")
                        if isinstance(getattr(m, b, None), torch.Tensor)]
    return [name for name, t in tensors if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach()).all())]


def check_finite_weights(model: nn.Module, where: str, hint: str) -> None:
    """Raise DivergenceError naming the first tensors that hold NaN/inf. Always an error (no --allow-drop)."""
    bad = nonfinite_parameters(model)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DivergenceError(f"{where}: non-finite weights in {shown}; {hint}")


def chance_top1(num_classes: int) -> float:
    """Top-1 (percent) of a model that always predicts one class of `num_classes` balanced ones."""
    return 100.0 / max(int(num_classes), 1)


def near_chance(top1: float, num_classes: int, margin_pp: float | None = None) -> bool:
    """True when `top1` is no better than chance plus a margin (default: a fifth of the way to 100 %, at least 5 pp).

    Ten classes: anything ≤ 28 % counts as collapsed. The margin is wide because a diverged net often predicts
    two or three classes (12–20 %), and narrow enough that no working model on these datasets falls under it.
    """
    chance = chance_top1(num_classes)
    margin = max(5.0, (100.0 - chance) / 5.0) if margin_pp is None else margin_pp
    return not math.isfinite(top1) or top1 <= chance + margin


def check_accuracy_kept(before: float, after: float, num_classes: int, stage: str, hint: str, *,
                        allow_drop: bool = False, max_drop_pp: float | None = None, flag: str = "--allow-drop") -> str | None:
    """Stop a stage that should keep accuracy (fine-tuning, quantization, factorization, sharing) when it falls to
    chance while the model before it was well above chance, or (with `max_drop_pp`) drops by more than that.

    Returns None when fine, else the message; raises DivergenceError unless `allow_drop`, in which case the
    message is issued as a warning (the user asked for the result anyway). A model that was at chance before
    the stage (an untrained one) is not judged: there was nothing to keep.
    """
    msg = None
    if not math.isfinite(after):
        msg = f"{stage}: top-1 is {_word(after)} (before: {before:.2f}%)"
    elif near_chance(after, num_classes) and not near_chance(before, num_classes):
        msg = (f"{stage}: top-1 fell from {before:.2f}% to {after:.2f}%, chance level for {num_classes} classes "
               f"({chance_top1(num_classes):.1f}%)")
    elif max_drop_pp is not None and before - after > max_drop_pp:
        msg = f"{stage}: top-1 fell from {before:.2f}% to {after:.2f}% ({before - after:.2f} pp, more than {max_drop_pp:g} pp)"
    if msg is None:
        return None
    msg = f"{msg}; {hint}"
    if not allow_drop:
        raise DivergenceError(f"{msg} (or pass {flag} to keep the result anyway)")
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return msg


def _word(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
