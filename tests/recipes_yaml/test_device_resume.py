"""Resume replays exactly on the training device: the checkpoint carries the CPU generator and, when training ran
on a GPU, that GPU's generator (dropout there draws from it), both as plain uint8 tensors in safetensors."""
import pytest
import torch
from torch import nn

from nncompress.data import load_dataset
from nncompress.recipes.runner import run_recipe
from nncompress.training.checkpoint import load_checkpoint

RECIPE = {"name": "device-resume", "pretrain": {"epochs": 0}, "training": {"epochs": 5, "lr": 0.05, "batch_size": 32},
          "policies": []}
STEPS_PER_EPOCH = 256 // 32


class Interrupted(Exception):
    pass


class Tripwire(nn.Module):
    """Identity that raises after `after` training forwards: the run dies mid-epoch, like a killed process."""

    def __init__(self, after: int | None):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training and self.after is not None:
            self.calls += 1
            if self.calls > self.after:
                raise Interrupted
        return x


def _model(after: int | None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), Tripwire(after), nn.Linear(64, 10))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                          reason="needs a CUDA GPU"))])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, device):
    ds = load_dataset("digits").subset(256, 100)
    with pytest.raises(Interrupted):  # dies in epoch 3, after the checkpoint of epoch 2
        run_recipe(RECIPE, tmp_path / "cut", model=_model(3 * STEPS_PER_EPOCH + 2), dataset=ds, progress=False, device=device)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoints")
    assert ckpt.state["epoch"] == 2
    expected = {"rng_state"} if device == "cpu" else {"rng_state", "cuda_rng_state"}
    assert set(ckpt.tensors) == expected and all(t.dtype == torch.uint8 for t in ckpt.tensors.values())

    resumed = run_recipe(RECIPE, tmp_path / "cut", model=_model(None), dataset=ds, progress=False, device=device, resume=True)
    full = run_recipe(RECIPE, tmp_path / "full", model=_model(None), dataset=ds, progress=False, device=device)
    assert resumed.history == full.history and resumed.top1_final == full.top1_final
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
