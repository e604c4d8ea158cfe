import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: keep torch on one thread in these tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
