"""Recipe validation: every bad recipe gives one error naming the field and its YAML line."""
import math
from pathlib import Path

import pytest

from nncompress.core.errors import UserError
from nncompress.recipes.runner import lr_at
from nncompress.recipes.schema import LRSchedule, load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))

BASE = (Path(__file__).parent / "base_recipe.yaml").read_text()  # the valid recipe the cases start from


def error(text: str) -> str:
    with pytest.raises(UserError) as e:
        load_recipe(text)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_examples_are_valid_and_cover_every_pipeline():
    names = {p.stem for p in RECIPES}
    assert {"deep_compression", "agp_qat_kd", "structured_finetune", "agp", "level", "qat", "distill"} <= names
    methods = {p.method for path in RECIPES for p in load_recipe(path).policies}
    assert methods == {"agp", "level", "regularizer", "qat", "distill", "share", "channels", "ptq"}


def test_unknown_method_names_line_and_choices():
    msg = error(BASE.replace("method: agp", "method: prune_harder"))
    assert msg.startswith("recipe:7: policies[0]: unknown method 'prune_harder'; choose from level, agp,")


def test_wrong_type_names_field_and_line():
    assert error(BASE.replace("lr: 0.02", "lr: fast")).startswith("recipe:5: training.lr: Input should be a valid number")
    assert error(BASE.replace("0.9", "1.5")) == "recipe:8: policies[0].final_sparsity: Input should be less than 1 (got 1.5)"


def test_misspelled_field_and_missing_section():
    assert error(BASE.replace("    start: 0", "    strat: 0")).startswith("recipe:9: policies[0].strat: unknown field")
    assert error("model: lenet300\n") == "recipe:1: training: required field is missing"


def test_overlapping_pruners_are_rejected():
    msg = error(BASE + "  - method: level\n    sparsity: 0.5\n    start: 2\n")
    assert msg.startswith("recipe:13: policies[1].start: pruning schedules overlap: policies[0] (agp) and policies[1] (level)")
    # the same schedule on disjoint layers is fine
    ok = BASE.replace("    end: 4\n", "    end: 4\n    layers: [fc1]\n") + "  - method: level\n    sparsity: 0.5\n    start: 2\n    layers: [fc2]\n"
    assert [p.method for p in load_recipe(ok).policies] == ["agp", "level"]


def test_incompatible_orders_are_rejected():
    assert "pruning must finish before QAT starts" in error(BASE + "  - method: qat\n    start: 3\n")
    assert "'share' and 'qat' both quantize" in error(BASE + "  - method: qat\n    start: 4\n  - method: share\n    start: 5\n")
    assert error(BASE.replace("end: 4", "end: 9")).startswith("recipe:10: policies[0].end: agp runs past the end of training (6 epochs")
    assert "end (2) must be greater than start (3)" in error(BASE.replace("start: 0", "start: 3").replace("end: 4", "end: 2"))


def test_step_ranges_are_checked_against_the_real_run_length():
    text = BASE.replace("    end: 4\n", "    end: 400\n    unit: step\n")
    assert load_recipe(text).policies[0].unit == "step"  # unknown steps/epoch: nothing to compare yet
    assert "runs past the end of training (6 epochs = 300 steps" in str(pytest.raises(UserError, load_recipe, text, steps_per_epoch=50).value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("lr: 0.02", "lr: [1, 2]"))
    assert str(pytest.raises(UserError, load_recipe, str(bad)).value).startswith(f"{bad}:5: training.lr:")
    assert "recipe file not found" in str(pytest.raises(UserError, load_recipe, str(tmp_path / "nope.yaml")).value)
    assert "recipe:3: not valid YAML" in str(pytest.raises(UserError, load_recipe, "model: x\ntraining: [1\n").value)


def test_lr_schedules_by_hand():
    cos = LRSchedule(kind="cosine", min_lr=0.01)
    assert lr_at(cos, 0.1, 0, 10, 4) == pytest.approx(0.1)
    assert lr_at(cos, 0.1, 20, 10, 4) == pytest.approx(0.055)  # halfway: (0.1 + 0.01) / 2
    assert lr_at(cos, 0.1, 30, 10, 4) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    step = LRSchedule(kind="step", milestones=[2, 3], gamma=0.5)
    assert [lr_at(step, 0.1, t, 10, 4) for t in (19, 20, 30)] == pytest.approx([0.1, 0.05, 0.025])
    assert lr_at(LRSchedule(kind="exponential", gamma=0.9), 1.0, 25, 10, 4) == pytest.approx(0.81)
    warm = LRSchedule(kind="constant", warmup_epochs=1)
    assert [lr_at(warm, 0.1, t, 4, 3) for t in (0, 3, 4)] == pytest.approx([0.025, 0.1, 0.1])
