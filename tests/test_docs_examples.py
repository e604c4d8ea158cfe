"""docs/compress_your_own_model.md stays runnable as written: its python blocks run, top to bottom, in one namespace."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "compress_your_own_model.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_block_extraction_on_a_hand_example():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x + 1\n"]


def test_compress_your_own_model_page_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import torch

    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 8, "the page lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_example"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"{PAGE.name}[block {i + 1}]", "exec"), namespace)  # noqa: S102 - our own page
            except Exception as e:  # name the block that broke, with its first line
                raise AssertionError(f"block {i + 1} ({code.splitlines()[0]!r}) failed: {type(e).__name__}: {e}") from e
    finally:
        torch.set_num_threads(threads)
    # what the page claims, checked here too: the thinned CNN is thinner, the .nnc file exists
    assert namespace["thin"].features[0].out_channels < namespace["cnn"].features[0].out_channels
    assert (namespace["work"] / "cnn.nnc").stat().st_size > 0
