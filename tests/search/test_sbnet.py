"""SBNet sparse blocks: tile geometry, reduce_mask, gather/scatter on tiny hand-worked examples, dense equivalence."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.search.sbnet import (
    ForegroundMask, SBNetConv2d, SparseBlockConv2d, block_grid, block_macs, random_active_blocks, reduce_mask,
    sbnet_experiment, sparse_gather, sparse_scatter, tile_px,
)


def test_tile_and_grid_hand_worked():
    assert tile_px(8, 3) == 10  # (8 − 1)·1 + 1·2 + 1
    assert tile_px(4, 3, stride=2) == 9  # 3·2 + 2 + 1
    assert tile_px(4, 3, dilation=2) == 8  # 3 + 4 + 1
    assert block_grid((10, 16), 4) == (3, 4)
    assert block_grid((8, 8), (2, 4)) == (4, 2)


def test_reduce_mask_4x4():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 3] = 1.0
    m[0, 0, 3, 0] = 0.3
    assert reduce_mask(m, 2, 0.5).tolist() == [[0, 0, 1]]
    assert reduce_mask(m, 2, 0.2).tolist() == [[0, 0, 1], [0, 1, 0]]
    assert reduce_mask(m, 2, 0.1, pool="avg").tolist() == [[0, 0, 1]]  # means 0.25 and 0.075
    assert reduce_mask(m[:, 0], 2, 0.05, pool="avg").tolist() == [[0, 0, 1], [0, 1, 0]]


def test_gather_4x4_with_padding_overlap():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    tiles = sparse_gather(x, torch.tensor([[0, 0, 1]]), block_px=2, kernel=3, padding=1)
    # block (0, 1) of the output = output rows 0–1, cols 2–3: input rows −1..2, cols 1..4 (zero outside)
    assert tiles.tolist() == [[[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0], [9.0, 10.0, 11.0, 0.0]]]]


def test_scatter_4x4():
    tiles = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = sparse_scatter(tiles, torch.tensor([[0, 1, 0]]), (1, 1, 4, 4))
    assert out.tolist() == [[[[0, 0, 0, 0], [0, 0, 0, 0], [1, 2, 0, 0], [3, 4, 0, 0]]]]
    base = torch.ones(1, 1, 4, 4)
    added = sparse_scatter(tiles, torch.tensor([[0, 1, 0]]), (1, 1, 4, 4), base=base, add=True)
    assert added.tolist() == [[[[1, 1, 1, 1], [1, 1, 1, 1], [2, 3, 1, 1], [4, 5, 1, 1]]]]
    # an edge block of a 3×3 output keeps only its valid pixel
    edge = sparse_scatter(tiles, torch.tensor([[0, 1, 1]]), (1, 1, 3, 3))
    assert edge.tolist() == [[[[0, 0, 0], [0, 0, 0], [0, 0, 1]]]]


@pytest.mark.parametrize("kw,hw,block", [
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (16, 16), 4),
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, stride=2), (13, 11), 3),
    (dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2), (12, 10), (4, 2)),
    (dict(in_channels=2, out_channels=3, kernel_size=(5, 3), padding=(2, 0)), (9, 14), 4),
])
def test_equals_dense_conv_on_active_blocks_and_zero_elsewhere(kw, hw, block):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw)
    x = torch.randn(2, kw["in_channels"], *hw)
    dense = conv(x)
    sb = SparseBlockConv2d(conv, block)
    bh, bw = (block, block) if isinstance(block, int) else block
    grid = block_grid(dense.shape[-2:], block)
    active = random_active_blocks(2, grid, 0.4, torch.Generator().manual_seed(1))
    y = sb(x, active)
    assert y.shape == dense.shape
    on = torch.zeros_like(dense, dtype=torch.bool)
    for n, i, j in active.tolist():
        on[n, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = True
    assert torch.allclose(y[on], dense[on], atol=1e-5)
    assert (y[~on] == 0).all()
    everything = reduce_mask(torch.ones(2, 1, *dense.shape[-2:]), block)
    assert torch.allclose(sb(x, everything), dense, atol=1e-5)


def test_macs_hand_worked():
    conv = nn.Conv2d(2, 3, 3, padding=1)  # 3·2·9 = 54 MACs per output pixel
    sb = SparseBlockConv2d(conv, 2)
    assert sb.macs(torch.tensor([[0, 1, 1]]), (4, 4)) == 4 * 54 == 216
    assert sb.dense_macs((4, 4)) == 16 * 54 == 864  # one block of four: a quarter
    # 5×5 output, 3×3 grid of 2×2 blocks: corner block has 1 valid pixel, right-edge block 2
    assert block_macs(torch.tensor([[0, 2, 2], [0, 0, 2]]), (5, 5), 2, conv) == (1 + 2) * 54
    assert block_macs(torch.zeros(0, 3, dtype=torch.int64), (5, 5), 2, conv) == 0


def test_foreground_mask_drives_the_blocks():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 5, 5] = 1.0
    layer = SBNetConv2d(conv, ForegroundMask(conv), block_px=4, threshold=0.0)
    y = layer(x)
    assert layer.last_active.tolist() == [[0, 1, 1]]  # output pixels 4..6 read input pixel 5: block 1 (pixels 4..7)
    assert torch.allclose(y[..., 4:8, 4:8], conv(x)[..., 4:8, 4:8], atol=1e-6)
    assert y[..., :4, :].abs().sum() == 0 and y[..., 8:, :].abs().sum() == 0


def test_bad_inputs_are_user_errors():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(UserError, match="outside"):
        SparseBlockConv2d(conv, 4)(torch.zeros(1, 1, 8, 8), torch.tensor([[0, 2, 0]]))
    with pytest.raises(UserError, match="numeric zero padding"):
        SparseBlockConv2d(nn.Conv2d(1, 1, 3, padding="same"), 4)
    with pytest.raises(UserError, match="pool"):
        reduce_mask(torch.zeros(1, 1, 4, 4), 2, pool="median")


def test_experiment_quick():
    r = sbnet_experiment(size_px=16, channels=4, batch=2, block_px=4, fractions=(0.5,), repeats=1, canvas=False)
    row = r["rows"][0]
    assert row["total_blocks"] == 2 * 4 * 4 and row["active_blocks"] == 16
    assert row["macs_ratio"] == 0.5 and row["dense_macs"] == 2 * 16 * 16 * 4 * 4 * 9
    assert row["max_abs_err"] <= 1e-5 and row["dense_ms"] > 0 and row["sparse_ms"] > 0


def test_edge_blocks_pool_over_valid_pixels_and_no_active_block_gives_zeros():
    m = torch.zeros(1, 1, 3, 3)
    m[0, 0, 2, 2] = 0.8  # the corner block of a 2×2 grid holds one valid pixel: its mean is 0.8, not 0.2
    assert reduce_mask(m, 2, 0.5, pool="avg").tolist() == [[0, 1, 1]]
    sb = SparseBlockConv2d(nn.Conv2d(2, 3, 3, padding=1), 4)
    y = sb(torch.randn(1, 2, 8, 8), torch.zeros(0, 3, dtype=torch.int64))
    assert y.shape == (1, 3, 8, 8) and not y.any()
