"""Hostile recipe YAML: alias bombs, deep nesting, huge files and numbers, non-finite floats — one clear error each."""
import time
from pathlib import Path

import numpy as np
import pytest

from nncompress.core.errors import UserError
from nncompress.recipes.schema import MAX_RECIPE_BYTES, load_recipe

BASE = (Path(__file__).parent / "base_recipe.yaml").read_text()  # the valid recipe the cases start from


def error(text) -> str:
    t0 = time.process_time()
    with pytest.raises(UserError) as e:
        load_recipe(text)
    assert time.process_time() - t0 < 1.0
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("lr: 0.02", "lr: .inf", r"recipe:5: training.lr: must be a finite number \(got inf\)"),
        ("lr: 0.02", "lr: -.inf", r"recipe:5: training.lr: must be a finite number"),
        ("lr: 0.02", "lr: .nan", r"recipe:5: training.lr: must be a finite number \(got nan\)"),
        ("lr: 0.02", "lr: '1e400'", r"recipe:5: training.lr: must be a finite number"),
        ("lr: 0.02", "lr: nan", r"recipe:5: training.lr: must be a finite number"),
        ("final_sparsity: 0.9", "final_sparsity: .nan", r"recipe:8: policies\[0\].final_sparsity: must be a finite number"),
        ("epochs: 6", "epochs: 1" + "0" * 30, r"recipe:4: training.epochs: number out of range"),
        ("start: 0", "start: -1" + "0" * 30, r"recipe:9: policies\[0\].start: number out of range"),
    ],
)
def test_non_finite_and_huge_numbers_name_field_and_line(old, new, match):
    assert old in BASE
    import re

    assert re.search(match, error(BASE.replace(old, new)))


def test_billion_laughs_is_refused_quickly():
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = BASE + "\n".join(lines) + "\n"
    assert "expands to more than 100000 values" in error(bomb)


def test_modest_aliases_still_work():
    text = BASE.replace("  lr: 0.02", "  lr: &lr 0.02").replace("pretrain", "") + "pretrain: {epochs: 1, lr: *lr}\n"
    assert load_recipe(text).pretrain.lr == 0.02


@pytest.mark.parametrize("opener, closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused_without_recursion_errors(opener, closer):
    for depth in (40, 100_000):
        msg = error(BASE + "x: " + opener * depth + "1" + closer * depth + "\n")
        assert "nested deeper than 32 levels" in msg


def test_huge_files_and_binary_files(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(BASE + "# " + "x" * MAX_RECIPE_BYTES + "\n")
    assert "too large for a recipe" in error(str(big))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"model: \xff\xfe\x00lenet\n")
    assert "not a UTF-8 text file" in error(str(binary))
    assert "too large" in error(BASE + "#" + "x" * MAX_RECIPE_BYTES + "\n")


def test_mutated_recipes_raise_only_user_errors():
    """Seeded byte-level damage to a valid recipe: parse, or one UserError; never another exception."""
    rng = np.random.default_rng(3)
    data = BASE.encode()
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(b)))
            op = int(rng.integers(3))
            if op == 0:
                b[i] = int(rng.choice(list(b"[]{}&*!:-,.'\"#|>?%@` \n\t0123456789einfa\x00\xff")))
            elif op == 1:
                del b[i]
            else:
                b[i:i] = bytes(rng.integers(0, 256, size=2, dtype=np.uint8))
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        try:
            load_recipe(text)
            outcomes["ok"] += 1
        except UserError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50 and outcomes["ok"] > 5
