"""Shared test helpers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture
def torchrun_job(tmp_path):
    """Run `script` (argv: recipe JSON, output folder) on 2 local ranks under torchrun; returns rank 0's JSON line."""

    def run(script: str, recipe: dict, out: str = "two") -> dict:
        (tmp_path / "job.py").write_text(script)
        proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(tmp_path / "job.py"),
                               json.dumps(recipe), str(tmp_path / out)], capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1  # only rank 0 prints
        return json.loads(lines[0])

    return run


@pytest.fixture
def run_main(monkeypatch, capsys):
    """Run the real CLI entry point in-process from `cwd`; returns (exit code, stderr)."""

    def run(args: list[str], cwd: Path) -> tuple[int, str]:
        from nncompress.cli import main

        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["nncompress", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    return run


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr); success returns without SystemExit."""

    def run(args: list[str]) -> tuple[int, str, str]:
        from nncompress.cli import main

        monkeypatch.setattr(sys, "argv", ["nncompress", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def tiny_gpt2():
    """(model, calibration batches, test ids, reference logits): a 2-layer, 64-wide GPT-2 with a tied LM head, built
    from a config (no download), seeded; the LLM-method tests compress copies of it and compare logits."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 128, (4, 32))} for _ in range(2)]
    test = torch.randint(0, 128, (4, 32))
    with torch.no_grad():
        ref = model(input_ids=test).logits
    return model, calib, test, ref
