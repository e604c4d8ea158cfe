"""Issue 12 for recipes: `lr: .inf` ran, and a run whose loss went NaN (or whose result fell to chance) was written
out like any other. The runner must refuse non-finite hyper-parameters up front, stop on a NaN loss mid-run with
the epoch and step, leave no result files behind, and turn a collapse to chance into an error unless allow_drop."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError
from nncompress.data import load_dataset
from nncompress.recipes.runner import run_recipe

SLICE = {"name": "digits", "train_samples": 320, "test_samples": 160}  # 5 steps per epoch at batch 64


def _recipe(**changes) -> dict:
    d = {"name": "guard", "model": "lenet300", "data": SLICE, "pretrain": {"epochs": 2, "lr": 0.05},
         "training": {"epochs": 2, "lr": 0.02}, "lr_schedule": {"kind": "constant"},
         "policies": [{"method": "level", "sparsity": 0.5, "start": 1}]}
    d.update(changes)
    return d


def test_recipe_with_infinite_lr_is_refused_before_any_work(tmp_path):
    """YAML `.inf` is a float that passes `gt=0`; either the schema or the runner must refuse it, and nothing is written."""
    text = """
name: inf-lr
model: lenet300
data: {name: digits, train_samples: 320, test_samples: 160}
pretrain: {epochs: 1, lr: 0.05}
training: {epochs: 2, lr: .inf}
policies:
  - {method: level, sparsity: 0.5, start: 1}
"""
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"training\.lr.*(finite|inf)"):
        run_recipe(text, out)
    assert not out.exists() or not any(out.iterdir())


class NanAfter(nn.Module):
    """A digits classifier whose training forwards return NaN from the `after`-th on (evaluation stays finite)."""

    def __init__(self, after: int):
        super().__init__()
        self.fc, self.after, self.calls = nn.Linear(64, 10), after, 0

    def forward(self, x):
        out = self.fc(torch.flatten(x, 1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_nan_loss_mid_recipe_names_epoch_and_step_and_leaves_no_files(tmp_path):
    """5 steps per epoch; NaN from the 8th training step → epoch 2 step 3. The epoch-1 checkpoint and the pretrained
    weights this run wrote are removed; no model, result or report is written."""
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(320, 160)
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"recipe 'guard': training diverged at epoch 2 step 3: loss is nan; lower the learning rate"):
        run_recipe(_recipe(pretrain={"epochs": 0}), out, model=NanAfter(after=7), dataset=ds)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_collapse_to_chance_is_an_error_unless_allowed(tmp_path):
    """Pruning 99.9 % of a trained LeNet-300-100 at the last epoch leaves it at chance with a finite loss: an error
    naming the fall and --allow-drop; with allow_drop the result is written and a warning says why."""
    collapse = _recipe(policies=[{"method": "level", "sparsity": 0.999, "scope": "global", "start": 1}],
                       training={"epochs": 2, "lr": 0.0001})
    with pytest.raises(DivergenceError, match=r"top-1 fell from .* to .*chance level.*--allow-drop"):
        run_recipe(collapse, tmp_path / "a")
    assert not (tmp_path / "a" / "model.safetensors").exists() and not (tmp_path / "a" / "result.json").exists()
    with pytest.warns(RuntimeWarning, match="chance level"):
        result = run_recipe(collapse, tmp_path / "b", allow_drop=True)
    assert result.top1_final < 28.0 and (tmp_path / "b" / "result.json").is_file()


def test_deep_compression_stops_when_a_stage_falls_to_chance(tmp_path):
    """`nncompress compress` without a recipe: pruning 99.9 % of LeNet-300-100 on digits cannot keep its accuracy; the
    pipeline stops at that stage, naming it and the fix, and writes no .nnc (allow_drop is the recipe test's warning path)."""
    from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression

    def cfg(out, allow_drop):
        return DeepCompressionConfig(model="lenet300", data="digits", out_dir=str(out), cache_dir=str(tmp_path / "cache"),
                                     threads=1, baseline_epochs=4, prune_steps=1, prune_finetune_epochs=1,
                                     share_finetune_epochs=1, sparsity=0.999, bits=2, progress=False, allow_drop=allow_drop)

    with pytest.raises(DivergenceError, match=r"pruning \+ fine-tuning: top-1 fell from .* chance level.*--sparsity.*--allow-drop"):
        run_deep_compression(cfg(tmp_path / "a", False), log=lambda *a: None)
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*.nnc"))
