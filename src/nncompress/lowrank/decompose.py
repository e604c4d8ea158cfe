"""Factorized replacements for Linear and Conv2d layers.

- SVD (Denton et al. 2014; Xue et al. 2013): W ≈ (U_r·√S_r)(√S_r·V_rᵀ) → Linear(in, r) then Linear(r, out).
- Tucker-2 (Kim et al. 2016, "Compression of Deep CNNs for Fast and Low Power Mobile Applications"):
  W ≈ G ×₀ U_out ×₁ U_in → 1×1 conv (in → R_in), k×k conv core (R_in → R_out), 1×1 conv (R_out → out).
- CP (Lebedev et al. 2015, "Speeding-up CNNs Using Fine-tuned CP-Decomposition"):
  W ≈ Σ_r λ_r a_r ∘ b_r ∘ c_r ∘ d_r → 1×1 (in → R), k_h×1 depthwise, 1×k_w depthwise, 1×1 (R → out).
- Spatially separable (Jaderberg, Vedaldi, Zisserman 2014, "Speeding up Convolutional Neural Networks with Low
  Rank Expansions", scheme 2): W[n,c,y,x] ≈ Σ_k H[n,k,x]·V[k,c,y] → k_h×1 conv (C → K), 1×k_w conv (K → N).

Each builder returns a `LowRank` module (an nn.Sequential that remembers its method and ranks, so a saved
factorized model can be rebuilt before loading its weights).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from tensorly.decomposition import parafac, partial_tucker
from torch import nn

from nncompress.core.errors import UserError


class LowRank(nn.Sequential):
    """A factorized layer: the sequence of small layers that replaces one Linear/Conv2d."""

    def __init__(self, method: str, ranks: tuple[int, ...], *layers: nn.Module):
        super().__init__(*layers)
        self.method, self.ranks = method, tuple(int(r) for r in ranks)

    def extra_repr(self) -> str:
        return f"method={self.method}, ranks={self.ranks}"


def _check_conv(layer: nn.Module) -> None:
    if not isinstance(layer, nn.Conv2d):
        raise UserError(f"Tucker/CP/separable factorize Conv2d layers, got {type(layer).__name__}")
    if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise UserError("Tucker/CP/separable need a Conv2d with groups=1, numeric padding and padding_mode='zeros'")


# --- empty structures (shapes only), filled by the decompositions below or by a checkpoint -----------------

def svd_structure(layer: nn.Linear, rank: int) -> LowRank:
    return LowRank("svd", (rank,), nn.Linear(layer.in_features, rank, bias=False),
                   nn.Linear(rank, layer.out_features, bias=layer.bias is not None))


def tucker_structure(layer: nn.Conv2d, rank_out: int, rank_in: int) -> LowRank:
    _check_conv(layer)
    return LowRank("tucker", (rank_out, rank_in),
                   nn.Conv2d(layer.in_channels, rank_in, 1, bias=False),
                   nn.Conv2d(rank_in, rank_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                             dilation=layer.dilation, bias=False),
                   nn.Conv2d(rank_out, layer.out_channels, 1, bias=layer.bias is not None))


def cp_structure(layer: nn.Conv2d, rank: int) -> LowRank:
    _check_conv(layer)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    return LowRank("cp", (rank,),
                   nn.Conv2d(layer.in_channels, rank, 1, bias=False),
                   nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank, bias=False),
                   nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank, bias=False),
                   nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None))


def separable_structure(layer: nn.Conv2d, rank: int) -> LowRank:
    """k_h×1 conv (C → K) then 1×k_w conv (K → N). The vertical conv takes the height stride, padding and
    dilation and keeps every input column; the horizontal one takes the width's. Zero-padding rows then columns
    is the same as padding both at once, so the pair computes exactly the conv of the separable kernel."""
    _check_conv(layer)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    return LowRank("separable", (rank,),
                   nn.Conv2d(layer.in_channels, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False),
                   nn.Conv2d(rank, layer.out_channels, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                             bias=layer.bias is not None))


def separable_matrix(weight: torch.Tensor) -> torch.Tensor:
    """M[(c,y),(x,n)] = W[n,c,y,x]: the (C·k_h) × (k_w·N) matrix whose rank-K factorization M = A·B is exactly a
    separable pair V[k,c,y] = A[(c,y),k], H[n,k,x] = B[k,(x,n)] (Jaderberg et al. 2014, scheme 2)."""
    n, c, kh, kw = weight.shape
    return weight.permute(1, 2, 3, 0).reshape(c * kh, kw * n)


def _copy_bias(layer: nn.Module, last: nn.Module) -> None:
    if layer.bias is not None:
        last.bias.data.copy_(layer.bias.detach())


# --- decompositions --------------------------------------------------------------------------------------

@torch.no_grad()
def svd_linear(layer: nn.Linear, rank: int) -> LowRank:
    """Truncated SVD of a Linear layer: two Linear layers of rank `rank` (exact when rank = min(in, out))."""
    w = layer.weight.detach().double()
    rank = max(1, min(rank, min(w.shape)))
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    mod = svd_structure(layer, rank).to(layer.weight.dtype)
    mod[0].weight.copy_(root[:, None] * vh[:rank])
    mod[1].weight.copy_(u[:, :rank] * root[None, :])
    _copy_bias(layer, mod[1])
    return mod


@torch.no_grad()
def tucker2_conv(layer: nn.Conv2d, rank_out: int, rank_in: int, n_iter_max: int = 100, seed: int = 0) -> LowRank:
    """Tucker-2 of a Conv2d over its output and input channel modes (HOOI via TensorLy's partial_tucker)."""
    w = layer.weight.detach().double().numpy()
    rank_out, rank_in = max(1, min(rank_out, w.shape[0])), max(1, min(rank_in, w.shape[1]))
    (core, (u_out, u_in)), _ = partial_tucker(w, rank=[rank_out, rank_in], modes=[0, 1], init="svd",
                                              n_iter_max=n_iter_max, random_state=seed)
    mod = tucker_structure(layer, rank_out, rank_in).to(layer.weight.dtype)
    mod[0].weight.copy_(torch.from_numpy(np.ascontiguousarray(u_in.T))[:, :, None, None])
    mod[1].weight.copy_(torch.from_numpy(np.ascontiguousarray(core)))
    mod[2].weight.copy_(torch.from_numpy(np.ascontiguousarray(u_out))[:, :, None, None])
    _copy_bias(layer, mod[2])
    return mod


def cp_factors(weight: torch.Tensor, rank: int, n_iter_max: int = 300, seed: int = 0, tol: float = 1e-9) -> tuple[np.ndarray, list[np.ndarray]]:
    """CP-ALS of a 4-D weight (TensorLy's parafac): (λ, [A_out, B_in, C_kh, D_kw])."""
    w = weight.detach().double().numpy()
    init = "svd" if rank <= min(w.shape) else "random"  # SVD init cannot supply more components than a mode has
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = parafac(w, rank=rank, init=init, n_iter_max=n_iter_max, tol=tol, random_state=seed)
    return cp.weights, list(cp.factors)


def balance_cp(lam: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Spread each component's scale evenly over the N factors: column r of every factor gets the norm
    s_r^(1/N), s_r = |λ_r|·Π_k ‖F_k[:, r]‖ (the sign of λ_r goes to the first factor). Same tensor, Σ_r λ_r ∘_k F_k[:, r].

    Why: ALS hands back unit-norm columns with all the scale in λ; folded into the last 1×1 conv, that layer's
    weights (and gradients) are orders of magnitude larger than the depthwise ones, so SGD at an ordinary
    lr (0.01) blew the factors up to NaN and the model to chance (issue 12). Equal norms give every factor
    gradients of the same size (the scale-balanced point of a product parametrization).
    """
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    scale = np.abs(lam) * np.prod(norms, axis=0)
    root = scale ** (1.0 / len(factors))
    out = []
    for k, (f, nrm) in enumerate(zip(factors, norms)):
        g = f / np.where(nrm > 0, nrm, 1.0)[None, :] * root[None, :]
        if k == 0:
            g = g * np.where(lam < 0, -1.0, 1.0)[None, :]
        out.append(g)
    return out


@torch.no_grad()
def cp_conv(layer: nn.Conv2d, rank: int, n_iter_max: int = 300, seed: int = 0) -> LowRank:
    """CP decomposition of a Conv2d into 1×1, k_h×1 depthwise, 1×k_w depthwise, 1×1 convolutions."""
    _check_conv(layer)
    lam, (a, b, c, d) = cp_factors(layer.weight, max(1, rank), n_iter_max, seed)
    a, b, c, d = balance_cp(lam, [a, b, c, d])
    lam = np.ones(a.shape[1])
    mod = cp_structure(layer, a.shape[1]).to(layer.weight.dtype)
    t = lambda arr: torch.from_numpy(np.ascontiguousarray(arr))  # noqa: E731
    mod[0].weight.copy_(t(b.T)[:, :, None, None])
    mod[1].weight.copy_(t(c.T)[:, None, :, None])
    mod[2].weight.copy_(t(d.T)[:, None, None, :])
    mod[3].weight.copy_(t(a * lam[None, :])[:, :, None, None])
    _copy_bias(layer, mod[3])
    return mod


@torch.no_grad()
def separable_conv(layer: nn.Conv2d, rank: int) -> LowRank:
    """Spatially separable pair from the weight alone (Jaderberg et al. 2014's data-free initialization): the
    truncated SVD M ≈ U_K·S_K·V_Kᵀ of M = separable_matrix(W) gives V = U_K·√S_K, H = √S_K·V_Kᵀ. By
    Eckart–Young this is the separable kernel closest to W in Frobenius norm; exact at K = min(C·k_h, k_w·N)."""
    _check_conv(layer)
    m = separable_matrix(layer.weight.detach().double())
    rank = max(1, min(rank, min(m.shape)))
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    n, c, kh, kw = layer.weight.shape
    mod = separable_structure(layer, rank).to(layer.weight.dtype)
    # V[k, c, y, 0] = (U√S)[(c,y), k];  H[n, k, 0, x] = (√S Vᵀ)[k, (x,n)]
    mod[0].weight.copy_((u[:, :rank] * root[None, :]).t().reshape(rank, c, kh, 1))
    mod[1].weight.copy_((root[:, None] * vh[:rank]).reshape(rank, kw, n).permute(2, 0, 1).unsqueeze(2))
    _copy_bias(layer, mod[1])
    return mod


@torch.no_grad()
def reconstruct_weight(mod: LowRank) -> torch.Tensor:
    """The dense weight a factorized module computes (for reconstruction errors)."""
    if mod.method == "svd":
        return mod[1].weight @ mod[0].weight
    if mod.method == "tucker":
        u_in, core, u_out = mod[0].weight[:, :, 0, 0], mod[1].weight, mod[2].weight[:, :, 0, 0]
        return torch.einsum("oa,abhw,bi->oihw", u_out, core, u_in)
    if mod.method == "separable":
        return torch.einsum("nkx,kcy->ncyx", mod[1].weight[:, :, 0, :], mod[0].weight[:, :, :, 0])
    b, c, d, a = mod[0].weight[:, :, 0, 0], mod[1].weight[:, 0, :, 0], mod[2].weight[:, 0, 0, :], mod[3].weight[:, :, 0, 0]
    return torch.einsum("or,ri,rh,rw->oihw", a, b, c, d)


def relative_error(weight: torch.Tensor, mod: LowRank) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F."""
    w = weight.detach().double()
    return float((w - reconstruct_weight(mod).double()).norm() / w.norm().clamp_min(1e-30))

