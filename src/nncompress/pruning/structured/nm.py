"""N:M fine-grained structured sparsity: in every run of M consecutive weights along the input (reduction)
dimension keep the N of largest magnitude (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021;
NVIDIA Ampere sparse tensor cores run 2:4 at up to 2× dense throughput).

Convolution weights [out, in, kh, kw] are grouped along `in` at each kernel position (the layout sparse
tensor cores read, [out, kh, kw, in]). Masks are attached as parametrizations (`nncompress.pruning.mask`),
so fine-tuning keeps the pattern; `finalize` bakes it in. On a CUDA GPU `to_semi_structured` converts 2:4
linear layers to PyTorch's compressed semi-structured format; on CPU the masks simply zero weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.mask import apply_shared_mask, dense_tensor
from nncompress.pruning.pruners import weight_holders


def _rows(weight: torch.Tensor) -> torch.Tensor:
    """[out, ..., in] view with the reduction channel last (conv: [out, kh, kw, in])."""
    return weight.movedim(1, -1) if weight.dim() > 2 else weight


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean keep-mask with exactly `n` True in every `m` consecutive input weights (ties: lower index)."""
    if not 0 < n <= m:
        raise UserError(f"N:M sparsity needs 0 < N <= M, got {n}:{m}")
    rows = _rows(weight.detach())
    if rows.shape[-1] % m:
        raise UserError(f"N:M sparsity needs the input dimension ({rows.shape[-1]}) to be a multiple of M={m}")
    groups = rows.reshape(-1, m).abs()
    # stable sort descending: ties keep the earlier weight, so the mask is deterministic
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    keep = keep.reshape(rows.shape)
    return keep.movedim(-1, 1) if weight.dim() > 2 else keep


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every run of `m` input weights has at most `n` non-zeros."""
    rows = _rows(weight.detach())
    if rows.shape[-1] % m:
        return False
    return bool(((rows.reshape(-1, m) != 0).sum(1) <= n).all())


def apply_nm_sparsity(model: nn.Module, n: int = 2, m: int = 4, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Attach N:M masks to the named Linear/Conv layers (default: every one whose input dimension divides by M,
    grouped convolutions excluded); returns the masks by layer name."""
    mods = {k: v for k, v in model.named_modules() if isinstance(v, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}
    if layers is None:
        names = [k for k, v in mods.items() if _rows(v.weight).shape[-1] % m == 0 and getattr(v, "groups", 1) == 1]
    else:
        # a module registered under two names (`self.b = self.a`) is found under either, and masked once
        every = {k: v for k, v in model.named_modules(remove_duplicate=False)
                 if isinstance(v, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}
        missing = [k for k in layers if k not in every]
        if missing:
            raise UserError(f"no Linear/Conv layer named {', '.join(missing)}: choose from {', '.join(mods)}")
        first = {}
        for k in layers:
            first.setdefault(id(every[k]), k)
        names = list(first.values())
        mods = {k: every[k] for k in names}
    masks = {}
    holders = weight_holders(model)  # a tied weight gets one mask in every module that holds it
    for name in names:
        masks[name] = nm_mask(mods[name].weight, n, m)
        others = [h for h in holders.get(id(dense_tensor(mods[name])), []) if h is not mods[name]]
        apply_shared_mask([mods[name], *others], masks[name])
    return masks


def to_semi_structured(linear: nn.Linear) -> nn.Linear:
    """Store a 2:4-sparse CUDA linear layer's weight in PyTorch's compressed semi-structured format (in place).

    Needs a CUDA GPU with sparse tensor cores, fp16/bf16 weights and dimensions that are multiples of 64.
    """
    if not torch.cuda.is_available() or linear.weight.device.type != "cuda":
        raise UserError("semi-structured sparse kernels need the layer on a CUDA GPU (sm80+); on CPU keep the 2:4 mask")
    if not is_nm_sparse(linear.weight, 2, 4):
        raise UserError("the layer's weight is not 2:4 sparse: apply nm_mask(weight, 2, 4) (and finalize) first")
    from torch.sparse import to_sparse_semi_structured

    linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return linear
