"""Sparse blocks network (SBNet; Ren, Pokrovsky, Yang, Urtasun, CVPR 2018): run a convolution only on the blocks of
the output that a cheap mask marks active.

Three steps, as in the paper's `reduce_mask` / `sparse_gather` / `sparse_scatter` ops:
1. reduce_mask: pool a per-pixel mask over the output block grid (block b_h × b_w) and keep blocks whose pooled
   value exceeds a threshold → a list of active blocks (n, i, j).
2. gather: for each active block cut the *input* tile that block needs, including the overlap of the conv's
   receptive field: for stride s, dilation d, kernel k and an output block of b pixels the tile spans
       t = (b − 1)·s + d·(k − 1) + 1 input pixels, starting at i·b·s in the zero-padded input,
   and stack the tiles into a batch [B, C, t_h, t_w].
3. run the ordinary dense convolution (padding 0) on the stack → [B, C_out, b_h, b_w] and scatter each result
   into its block of the output (zeros elsewhere, or added onto a base tensor for residual blocks).
On active blocks the result equals the dense convolution up to float rounding (the same products; the
kernel chosen for the tile batch may sum them in another order); inactive blocks are skipped. Partial blocks at the bottom/right edge are computed on a zero-padded
tile and cropped. MACs = Σ_active (valid output pixels of the block) · C_out · (C_in/groups) · k_h · k_w,
which is active/total × the dense MACs when the block divides the output.

On a CPU the gain needs few active blocks: tiles carry a (t/b)² − 1 halo (56 % for 8×8 blocks of a 3×3 conv)
and a batch of small tiles runs less efficiently than one large map; the paper's fused GPU kernels and larger
blocks narrow that gap. `sbnet_experiment` measures where the crossover lies on the machine at hand.

The mask network here is `ForegroundMask`: a parameter-free cheap network (|x − background| summed over channels,
max-pooled over the conv's receptive field), the "known sparse input" case of the paper (LiDAR occupancy,
road maps); any module mapping x to a [N, 1, H_out, W_out] score can be used instead.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 2 or min(t) < 1:
        raise UserError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return t  # type: ignore[return-value]


def block_grid(out_hw: Sequence[int], block_px: int | Sequence[int]) -> tuple[int, int]:
    """Number of blocks (rows, cols) covering an output of out_hw: ⌈H/b_h⌉ × ⌈W/b_w⌉."""
    bh, bw = _pair(block_px, "block_px")
    return math.ceil(out_hw[0] / bh), math.ceil(out_hw[1] / bw)


def tile_px(block_px: int, kernel: int, stride: int = 1, dilation: int = 1) -> int:
    """Input pixels an output block of `block_px` needs along one axis: (b − 1)·s + d·(k − 1) + 1."""
    return (block_px - 1) * stride + dilation * (kernel - 1) + 1


def reduce_mask(mask: torch.Tensor, block_px: int | Sequence[int], threshold: float = 0.0, pool: str = "max") -> torch.Tensor:
    """Active blocks [B, 3] = (n, block row, block col), in row-major order, of a mask [N, 1, H, W] or [N, H, W] on
    the output grid: a block is active when max (pool="max") or mean (pool="avg") of its mask values > threshold.
    Partial edge blocks pool over their valid pixels only."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise UserError(f"mask must have shape [N, 1, H, W] or [N, H, W], got {list(mask.shape)}")
    bh, bw = _pair(block_px, "block_px")
    m = mask.to(torch.float32)
    if pool == "max":
        pooled = F.max_pool2d(m, (bh, bw), ceil_mode=True)
    elif pool == "avg":
        pooled = F.avg_pool2d(m, (bh, bw), ceil_mode=True, count_include_pad=False)
    else:
        raise UserError(f"pool must be 'max' or 'avg', got {pool!r}")
    return torch.nonzero(pooled[:, 0] > threshold)


def _check_active(active: torch.Tensor, n: int, grid: tuple[int, int]) -> torch.Tensor:
    if active.ndim != 2 or active.shape[1] != 3:
        raise UserError(f"active blocks must have shape [B, 3] (n, row, col), got {list(active.shape)}")
    active = active.to(torch.int64)
    if len(active) and (bool((active < 0).any()) or int(active[:, 0].max()) >= n or int(active[:, 1].max()) >= grid[0]
                        or int(active[:, 2].max()) >= grid[1]):
        raise UserError(f"an active block lies outside the {n}×{grid[0]}×{grid[1]} block grid; build it with reduce_mask")
    return active


def sparse_gather(x: torch.Tensor, active: torch.Tensor, block_px: int | Sequence[int], kernel: int | Sequence[int],
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1) -> torch.Tensor:
    """Input tiles [B, C, t_h, t_w] for the active output blocks (see the module docstring for t and the origin)."""
    (bh, bw), (kh, kw) = _pair(block_px, "block_px"), _pair(kernel, "kernel")
    (sh, sw), (dh, dw) = _pair(stride, "stride"), _pair(dilation, "dilation")
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    n, _, h, w = x.shape
    out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if out_h < 1 or out_w < 1:
        raise UserError(f"a {kh}×{kw} kernel does not fit the {h}×{w} input with padding {(ph, pw)}")
    gh, gw = block_grid((out_h, out_w), (bh, bw))
    active = _check_active(active, n, (gh, gw))
    th, tw = tile_px(bh, kh, sh, dh), tile_px(bw, kw, sw, dw)
    need_h, need_w = (gh - 1) * bh * sh + th, (gw - 1) * bw * sw + tw  # padded input extent the last block reads
    xp = F.pad(x, (pw, pw + max(0, need_w - (w + 2 * pw)), ph, ph + max(0, need_h - (h + 2 * ph))))
    tiles = xp.unfold(2, th, bh * sh).unfold(3, tw, bw * sw)  # a strided view [N, C, g_h', g_w', t_h, t_w], no copy
    a = active.to(x.device)
    n_tiles = tiles.shape[0] * tiles.shape[2] * tiles.shape[3]
    if 2 * len(a) > n_tiles:  # most tiles needed: one contiguous copy of all, then a row gather, is faster
        g_h, g_w = tiles.shape[2], tiles.shape[3]
        flat = tiles.permute(0, 2, 3, 1, 4, 5).reshape(n_tiles, x.shape[1], th, tw)
        return flat.index_select(0, (a[:, 0] * g_h + a[:, 1]) * g_w + a[:, 2])
    return tiles[a[:, 0], :, a[:, 1], a[:, 2]].contiguous()  # copies only the active tiles: [B, C, t_h, t_w]


def sparse_scatter(tiles: torch.Tensor, active: torch.Tensor, out_shape: Sequence[int], base: torch.Tensor | None = None,
                   add: bool = False) -> torch.Tensor:
    """Write output tiles [B, C, b_h, b_w] into their blocks of a [N, C, H, W] output: zeros elsewhere (or `base`
    elsewhere; with add=True the tiles are added onto `base`, SBNet's residual scatter). Edge tiles are cropped."""
    n, c, h, w = (int(v) for v in out_shape)
    bh, bw = int(tiles.shape[-2]), int(tiles.shape[-1])
    gh, gw = block_grid((h, w), (bh, bw))
    active = _check_active(active, n, (gh, gw))
    if tiles.ndim != 4 or tiles.shape[0] != len(active) or tiles.shape[1] != c:
        raise UserError(f"tiles of shape {list(tiles.shape)} do not match {len(active)} active blocks of {c} channels")
    a = active.to(tiles.device)
    if base is None:  # block-major buffer: one contiguous row copy per tile, one permute at the end
        flat = torch.zeros((n * gh * gw, c, bh, bw), dtype=tiles.dtype, device=tiles.device)
        flat = flat.index_copy(0, (a[:, 0] * gh + a[:, 1]) * gw + a[:, 2], tiles)
        out = flat.view(n, gh, gw, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * bh, gw * bw)
        return out[:, :, :h, :w].contiguous()
    out = torch.zeros((n, c, gh * bh, gw * bw), dtype=tiles.dtype, device=tiles.device)
    if base is not None:
        if tuple(base.shape) != (n, c, h, w):
            raise UserError(f"base of shape {list(base.shape)} does not match the output shape {[n, c, h, w]}")
        out[:, :, :h, :w] = base
    blocks = out.view(n, c, gh, bh, gw, bw)  # block (i, j) of sample n is blocks[n, :, i, :, j, :]
    if add:
        blocks[a[:, 0], :, a[:, 1], :, a[:, 2], :] += tiles
    else:
        blocks[a[:, 0], :, a[:, 1], :, a[:, 2], :] = tiles
    return out[:, :, :h, :w].contiguous()


class SparseBlockConv2d(nn.Module):
    """An nn.Conv2d (zero padding, any stride/dilation/groups) evaluated only on active output blocks:
    forward(x, active) = scatter(conv(gather(x, active)), active). The wrapped conv's weights are shared."""

    def __init__(self, conv: nn.Conv2d, block_px: int | Sequence[int] = 8):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise UserError(f"SparseBlockConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError("SparseBlockConv2d needs a conv with numeric zero padding (padding=(p_h, p_w), padding_mode='zeros')")
        self.conv = conv
        self.block_px = _pair(block_px, "block_px")

    def out_hw(self, in_hw: Sequence[int]) -> tuple[int, int]:
        c = self.conv
        return tuple((in_hw[a] + 2 * c.padding[a] - c.dilation[a] * (c.kernel_size[a] - 1) - 1) // c.stride[a] + 1
                     for a in range(2))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        c = self.conv
        tiles = sparse_gather(x, active, self.block_px, c.kernel_size, c.stride, c.padding, c.dilation)
        y = F.conv2d(tiles, c.weight, c.bias, stride=c.stride, padding=0, dilation=c.dilation, groups=c.groups)
        return sparse_scatter(y, active, (x.shape[0], c.out_channels, *self.out_hw(x.shape[-2:])))

    def macs(self, active: torch.Tensor, in_hw: Sequence[int]) -> int:
        """MACs of the active blocks: Σ valid output pixels · C_out · (C_in/groups) · k_h · k_w."""
        return block_macs(active, self.out_hw(in_hw), self.block_px, self.conv)

    def dense_macs(self, in_hw: Sequence[int], batch: int = 1) -> int:
        oh, ow = self.out_hw(in_hw)
        return batch * oh * ow * _macs_per_output_pixel(self.conv)


def _macs_per_output_pixel(conv: nn.Conv2d) -> int:
    return conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]


def block_macs(active: torch.Tensor, out_hw: Sequence[int], block_px: int | Sequence[int], conv: nn.Conv2d) -> int:
    """MACs that the active blocks of `conv` cost, edge blocks counted by their valid pixels only."""
    bh, bw = _pair(block_px, "block_px")
    h, w = int(out_hw[0]), int(out_hw[1])
    if len(active) == 0:
        return 0
    rows = (h - active[:, 1].to(torch.int64) * bh).clamp(max=bh)
    cols = (w - active[:, 2].to(torch.int64) * bw).clamp(max=bw)
    return int((rows * cols).sum()) * _macs_per_output_pixel(conv)


class ForegroundMask(nn.Module):
    """A parameter-free cheap mask network: score = max over the conv's k×k receptive field of Σ_c |x_c − background|
    (stride and padding as the conv), so an output pixel is marked when any input it reads is foreground."""

    def __init__(self, conv: nn.Conv2d, background: float = 0.0):
        super().__init__()
        self.background = float(background)
        self.kernel, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x - self.background).abs().sum(1, keepdim=True)
        return F.max_pool2d(fg, self.kernel, self.stride, self.padding, self.dilation)


class SBNetConv2d(nn.Module):
    """mask network → reduce_mask → SparseBlockConv2d, in one module. `last_active` keeps the blocks of the last call."""

    def __init__(self, conv: nn.Conv2d, mask_net: nn.Module, block_px: int | Sequence[int] = 8, threshold: float = 0.0,
                 pool: str = "max"):
        super().__init__()
        self.sparse = SparseBlockConv2d(conv, block_px)
        self.mask_net = mask_net
        self.threshold, self.pool = float(threshold), pool
        self.last_active: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = reduce_mask(self.mask_net(x), self.sparse.block_px, self.threshold, self.pool)
        self.last_active = active
        return self.sparse(x, active)


def random_active_blocks(n: int, grid: tuple[int, int], fraction: float, generator: torch.Generator) -> torch.Tensor:
    """round(fraction · n·g_h·g_w) distinct blocks drawn uniformly (seeded), sorted row-major: [B, 3]."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"active fraction must be in [0, 1], got {fraction}")
    total = n * grid[0] * grid[1]
    k = int(round(fraction * total))
    flat = torch.randperm(total, generator=generator)[:k].sort().values
    return torch.stack([flat // (grid[0] * grid[1]), (flat // grid[1]) % grid[0], flat % grid[1]], dim=1)


def sbnet_experiment(seed: int = 0, size_px: int = 64, channels: int = 32, batch: int = 8, block_px: int = 8,
                     fractions: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0), repeats: int = 15, threads: int = 1,
                     canvas: bool = True) -> dict:
    """Wall time of a 3×3 conv (channels → channels, padding 1) dense vs SBNet at several active-block fractions,
    timed interleaved (medians), with MACs and the max |sparse − dense| on the active blocks; with `canvas`, the
    same conv on a 56×56 feature map that is zero off an mnist5k digit (the canvas minus its background, scaled
    per channel), its blocks chosen by `ForegroundMask` (the fraction the digit needs)."""
    from nncompress.analysis.latency import measure_interleaved_ms, num_threads

    rows = []
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval()
    sparse = SparseBlockConv2d(conv, block_px)
    x = torch.randn(batch, channels, size_px, size_px, generator=g)
    grid = block_grid((size_px, size_px), block_px)
    with num_threads(threads), torch.no_grad():
        dense_y = conv(x)
        for frac in fractions:
            active = random_active_blocks(batch, grid, frac, g)
            rows.append(_row(f"random {frac:.0%}", conv, sparse, x, active, dense_y, repeats, threads, measure_interleaved_ms))
        if canvas:
            from nncompress.data.canvas import make_canvas_dataset

            ds = make_canvas_dataset("mnist5k", 56, seed, n_train=batch, n_test=batch)
            # a feature map that is zero off the digit, as after a first layer on a canvas: C scaled copies of it
            feats = (ds.x_test - ds.background) * torch.randn(1, channels, 1, 1, generator=g)
            mask_net = ForegroundMask(conv, 0.0)
            active = reduce_mask(mask_net(feats), block_px, 0.0)
            rows.append(_row("mnist5k 56×56 canvas features, ForegroundMask", conv, sparse, feats, active, conv(feats),
                             repeats, threads, measure_interleaved_ms))
    return {"size_px": size_px, "channels": channels, "batch": batch, "block_px": block_px, "threads": threads,
            "repeats": repeats, "rows": rows}


def _row(name, conv, sparse, x, active, dense_y, repeats, threads, timer) -> dict:
    y = sparse(x, active)
    keep = reduce_mask(torch.ones(x.shape[0], 1, *dense_y.shape[-2:]), sparse.block_px)  # all blocks, row-major
    on = torch.zeros(x.shape[0], 1, *dense_y.shape[-2:], dtype=torch.bool)
    bh, bw = sparse.block_px
    for n, i, j in active.tolist():
        on[n, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = True
    err = float((y - dense_y).abs().masked_select(on.expand_as(y)).max()) if len(active) else 0.0
    dense_ms, sparse_ms = timer([lambda: conv(x), lambda: sparse(x, active)], warmup=2, repeats=repeats, threads=threads)
    macs, dense_macs = sparse.macs(active, x.shape[-2:]), sparse.dense_macs(x.shape[-2:], x.shape[0])
    return {"mask": name, "active_blocks": len(active), "total_blocks": len(keep),
            "active_fraction": len(active) / max(len(keep), 1), "macs": macs, "dense_macs": dense_macs,
            "macs_ratio": macs / dense_macs, "max_abs_err": err, "dense_ms": dense_ms.median_ms,
            "sparse_ms": sparse_ms.median_ms, "speedup": dense_ms.median_ms / max(sparse_ms.median_ms, 1e-9)}
