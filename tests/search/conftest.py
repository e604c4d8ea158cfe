import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test machine is shared: one thread keeps timings fair and runs predictable."""
    torch.set_num_threads(1)
