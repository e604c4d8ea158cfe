import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.data.natural_images import natural_image_set, natural_image_sources, to_model_input


def test_sources_are_the_packaged_photos():
    names = {p.name for p in natural_image_sources()}
    assert {"china.jpg", "flower.jpg", "grace_hopper.jpg"} <= names
    assert {"astronaut.png", "chelsea.png", "coffee.png"} <= names  # scikit-image is in the dev environment


def test_set_is_deterministic_shaped_and_varied():
    a, b = natural_image_set(n=30, size=64, seed=0), natural_image_set(n=30, size=64, seed=0)
    assert a.shape == (30, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    c = natural_image_set(n=30, size=64, seed=1)
    assert not torch.equal(a, c)
    flat = a.reshape(30, -1).float()
    assert len({tuple(r[:50].tolist()) for r in flat}) == 30  # every crop differs
    assert 40 < float(flat.mean()) < 215 and float(flat.std()) > 20  # photos, not blank or saturated frames


def test_model_input_normalization_is_lite_formula():
    imgs = torch.tensor([0, 127, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    x = to_model_input(imgs, (127 / 255,) * 3, (128 / 255,) * 3)
    assert torch.allclose(x[0, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)  # (x − 127) / 128


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_refuses_non_positive_n(n):
    with pytest.raises(UserError, match="positive"):
        natural_image_set(n=n)


def test_refuses_bad_size_and_bad_input():
    with pytest.raises(UserError, match="size"):
        natural_image_set(n=2, size=4)
    with pytest.raises(UserError, match="uint8"):
        to_model_input(torch.zeros(1, 3, 4, 4), (0.5,) * 3, (0.5,) * 3)
