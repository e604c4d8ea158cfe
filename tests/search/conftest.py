import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test machine is shared: one thread keeps timings fair and runs predictable."""
    torch.set_num_threads(1)


@pytest.fixture
def template_digits():
    """A writer of a synthetic 10-class set of 28×28 "digits" (a seeded random 16×16 binary template per class,
    centered, plus noise) saved as an .npz: learnable in an epoch, and no mnist5k CSV to parse in a unit test."""
    def write(path, n_per_class=80, seed=0):
        rng = np.random.default_rng(seed)
        templates = (rng.random((10, 16, 16)) > 0.5).astype(np.float32)
        y = np.repeat(np.arange(10), n_per_class)
        x = np.zeros((len(y), 1, 28, 28), dtype=np.float32)
        x[:, 0, 6:22, 6:22] = templates[y] * 255 * rng.uniform(0.7, 1.0, (len(y), 1, 1))
        np.savez(path, x=x, y=y)
        return str(path)
    return write
