"""Digits on a canvas: placement, crop coordinates and windows, checked against hand-worked values."""
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.data.canvas import PlacedDigits, crop_at, crop_origins, crop_windows, place_digits


def test_place_digits_pastes_at_the_drawn_position_and_reports_the_box_center():
    img = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).repeat(20, 1, 1, 1)
    canvases, centers = place_digits(img, 5, torch.Generator().manual_seed(0), background=-1.0)
    assert canvases.shape == (20, 1, 5, 5)
    for k in range(20):
        nz = torch.nonzero(canvases[k, 0] != -1.0)
        r, c = int(nz[:, 0].min()), int(nz[:, 1].min())
        assert canvases[k, 0, r:r + 2, c:c + 2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
        assert (canvases[k] != -1.0).sum() == 4  # nothing else written
        assert centers[k].tolist() == [r + 1.0, c + 1.0]  # top-left + h/2
    tops = centers - 1.0
    assert tops.min() == 0 and tops.max() == 3  # uniform over 0..S-h inclusive: both ends reachable


def test_place_digits_is_seeded():
    img = torch.rand(6, 1, 3, 3)
    a = place_digits(img, 9, torch.Generator().manual_seed(4))
    b = place_digits(img, 9, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_crop_origins_hand_worked():
    centers = torch.tensor([[14.0, 14.0], [28.0, 30.5], [50.0, 3.0], [20.49, 20.5]])
    # floor(c − 14 + 0.5): 0.5 → 0; 14.5 → 14, 17.0 → 17; 36.5 → 36 → clamped to 56 − 28 = 28, −10.5 → −11 → 0;
    # 6.99 → 6, 7.0 → 7
    assert crop_origins(centers, 28, 56).tolist() == [[0, 0], [14, 17], [28, 0], [6, 7]]


def test_crop_windows_on_a_4x4_example():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    x[1] += 100
    out = crop_windows(x, torch.tensor([[1, 2], [0, 0]]), 2)
    assert out.tolist() == [[[[6.0, 7.0], [10.0, 11.0]]], [[[100.0, 101.0], [104.0, 105.0]]]]


def test_crop_at_the_true_center_gives_back_the_digit():
    img = torch.rand(5, 1, 28, 28)
    canvases, centers = place_digits(img, 56, torch.Generator().manual_seed(1))
    windows, origins = crop_at(canvases, centers, 28)
    assert torch.equal(windows, img)
    assert torch.equal(origins.to(torch.float32) + 14, centers)


def test_placed_digits_items():
    digits = torch.rand(3, 1, 4, 4)
    labels = torch.tensor([0, 1, 2])
    items = PlacedDigits(digits, labels, 10, placements=2, seed=3, background=-2.0)
    assert len(items) == 6
    for i in range(6):
        canvas, label = items[i]
        assert int(label) == i % 3
        r, c = int(items.rows[i]), int(items.cols[i])
        assert torch.equal(canvas[:, r:r + 4, c:c + 4], digits[i % 3])
        assert (canvas == -2.0).sum() == 100 - 16
    crops = PlacedDigits(digits, labels, 10, placements=2, seed=3, crop_px=4, jitter_px=0.0)
    assert all(torch.equal(crops[i][0], digits[i % 3]) for i in range(6))  # zero jitter: the digit itself
    again = PlacedDigits(digits, labels, 10, placements=2, seed=3)
    assert torch.equal(items.rows, again.rows) and torch.equal(items.cols, again.cols)


def test_bad_geometry_is_a_user_error():
    with pytest.raises(UserError, match="smaller than"):
        place_digits(torch.rand(1, 1, 28, 28), 20, torch.Generator())
    with pytest.raises(UserError, match="does not fit"):
        crop_origins(torch.zeros(1, 2), 30, 28)
    with pytest.raises(UserError, match="leaves"):
        crop_windows(torch.rand(1, 1, 4, 4), torch.tensor([[3, 0]]), 2)
    with pytest.raises(UserError, match="placements"):
        PlacedDigits(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), 8, placements=0)


def test_make_canvas_dataset_background_is_the_standardized_black(tmp_path):
    import numpy as np

    from nncompress.data.canvas import make_canvas_dataset
    from nncompress.data.datasets import load_dataset

    rng = np.random.default_rng(0)
    x = np.zeros((40, 1, 28, 28), dtype=np.float32)
    x[:, 0, 8:20, 8:20] = rng.uniform(50, 255, (40, 12, 12))
    y = np.arange(40) % 4
    path = str(tmp_path / "d.npz")
    np.savez(path, x=x, y=y)
    ds = load_dataset(path, seed=2)
    cv = make_canvas_dataset(path, canvas_px=40, seed=2)
    black = float(ds.x_train[0, 0, 0, 0])  # a border pixel: raw 0 after standardization
    assert cv.background == black and cv.canvas_px == 40 and cv.digit_px == 28
    assert cv.x_train.shape == (len(ds.y_train), 1, 40, 40) and torch.equal(cv.y_test, ds.y_test)
    assert torch.equal(crop_at(cv.x_train, cv.c_train, 28)[0], ds.x_train)
    assert torch.equal(crop_at(cv.x_test, cv.c_test, 28)[0], ds.x_test)
    outside = cv.x_test.clone()
    for k, (r, c) in enumerate((cv.c_test - 14).to(torch.int64).tolist()):
        outside[k, :, r:r + 28, c:c + 28] = black
    assert (outside == black).all()  # nothing but background outside the pasted digit
