"""A few hundred natural 224×224 photos without a download: the sample photos that installed packages ship.

Why: a pretrained ImageNet model (EfficientNet-Lite0) cannot be scored on ImageNet here (no labels, no network),
but what post-training quantization must preserve is the *function* of the float model, so its fidelity can be
measured label-free on any natural images: top-1 / top-5 agreement and KL(p_fp32 ‖ p_quantized)
(`analysis.fidelity`). Natural photos matter: random noise does not exercise the activation ranges a real image
does, so a quantizer tuned or checked on noise can pass and still fail on photos.

Sources (found by path through `importlib.util.find_spec`, no network): scikit-learn's `load_sample_images`
photos (china.jpg, flower.jpg) and matplotlib's sample_data (grace_hopper.jpg, Minduka_Present_Blue_Pack.png)
are always installed; scikit-image's data directory adds astronaut, chelsea, coffee, rocket, motorcycle_left,
hubble_deep_field, retina and camera (grayscale, replicated to RGB) when scikit-image is installed
(`pip install 'nncompress[pretrained]'`).

Each of the n images is a seeded random-resized crop (Szegedy et al. 2015's Inception augmentation, as
torchvision's RandomResizedCrop: area fraction U(0.25, 1), log-uniform aspect ratio in [3/4, 4/3]) of source
i mod S, flipped left-right with probability ½, resized (bilinear) to size×size: a few hundred distinct inputs
from a dozen photos, identical for the same seed.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from nncompress.core.errors import UserError

# (package, path inside the package): photos of natural scenes (textures, test patterns, binary masks left out)
ALWAYS = (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
          ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
          ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"))
SKIMAGE = tuple(("skimage", f"data/{f}") for f in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                                                    "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg",
                                                    "camera.png"))
MIN_AREA, MAX_AREA = 0.25, 1.0
MIN_RATIO, MAX_RATIO = 3 / 4, 4 / 3


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def natural_image_sources() -> list[Path]:
    """Paths of the packaged photos found on this install (scikit-image's only when it is installed)."""
    paths = []
    for package, rel in ALWAYS:
        root = _package_dir(package)
        if root is None or not (root / rel).is_file():
            raise UserError(f"natural images: {package}'s sample photo {rel} is missing; reinstall {package}")
        paths.append(root / rel)
    try:
        import skimage  # noqa: F401  only to know it is installed; its photos are read by path
    except ImportError:
        warnings.warn("natural images: scikit-image is not installed, using 4 photos instead of 12 "
                      "(pip install 'nncompress[pretrained]' for astronaut, chelsea, coffee, ...)", stacklevel=2)
        return paths
    root = _package_dir("skimage")
    paths += [root / rel for _, rel in SKIMAGE if (root / rel).is_file()]
    return paths


def _load_rgb(path: Path) -> "np.ndarray":
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: area fraction U(0.25, 1), log-uniform aspect ratio in [3/4, 4/3];
    falls back to the largest centred square-ish crop after 10 draws that do not fit (as torchvision does)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(MIN_AREA, MAX_AREA)
        ratio = math.exp(rng.uniform(math.log(MIN_RATIO), math.log(MAX_RATIO)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def natural_image_set(n: int = 256, size: int = 224, seed: int = 0) -> torch.Tensor:
    """n seeded crops (uint8 RGB, shape [n, 3, size, size]) of the packaged photos; see the module docstring.

    Convert with `to_model_input(images, mean, std)` for a model's own normalization."""
    from PIL import Image

    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UserError(f"natural_image_set: n={n!r} must be a positive number of images (e.g. n=256)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise UserError(f"natural_image_set: size={size!r} must be an integer of at least 8 pixels (e.g. size=224)")
    photos = [_load_rgb(p) for p in natural_image_sources()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        top, left, h, w = _crop_box(rng, img.shape[0], img.shape[1])
        crop = Image.fromarray(img[top:top + h, left:left + w]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_model_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [N, 3, H, W] → float32 (x/255 − mean) / std per channel (mean, std on the 0..1 scale, e.g.
    EfficientNet-Lite's (127/255, 128/255), i.e. (x − 127) / 128 on 0..255)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"to_model_input: expected uint8 images [N, C, H, W], got {images.dtype} of shape {tuple(images.shape)}")
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise UserError(f"to_model_input: mean/std have {len(mean)}/{len(std)} entries for {images.shape[1]} channels")
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s
