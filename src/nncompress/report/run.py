"""`nncompress report RUN_DIR`: the report of a recipe run, rebuilt from the files the run wrote."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights, load_weights_into, state_dict_mismatch
from nncompress.data import Dataset, load_dataset
from nncompress.report.document import Report, build_report
from nncompress.training.distributed import (
    gather_json,
    init_distributed,
    is_main_process,
    shard,
)


def value_bits(recipe: dict) -> int:
    """Bits per stored weight after the run: QAT's or post-training quantization's weight bits, the widest sharing codebook index, or 32."""
    for p in recipe.get("policies", []):
        if p["method"] in ("qat", "ptq"):  # both store integer weight codes of weight_bits
            return int(p["weight_bits"])
        if p["method"] == "share":
            bits = p.get("bits")
            return int(bits) if isinstance(bits, int) else max((bits or {"conv": 8, "linear": 5}).values())
    return 32


def report_run(run_dir: str | os.PathLike, html_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None,
               sensitivity: bool = False) -> Report:
    """Rebuild a run's report (optionally with a per-layer pruning sensitivity sweep of the pretrained model)
    and write it (default: RUN_DIR/report.html and report.md)."""
    init_distributed()  # under torchrun the sensitivity sweep is shared across processes
    run = Path(run_dir)
    result_file, pre_file, post_file = run / "result.json", run / "pretrained.safetensors", run / "model.safetensors"
    if not result_file.is_file() or not pre_file.is_file():
        raise UserError(f"{run} is not a recipe run directory (no result.json / pretrained.safetensors): run `nncompress run-recipe` first")
    if not post_file.is_file():
        raise UserError(f"{run} holds a quantized model only; `run-recipe` already wrote {run / 'report.html'} for it")
    result = json.loads(result_file.read_text())
    recipe = result["recipe"]
    if recipe.get("model") is None:
        raise UserError(f"{run} is a run on your own model, which cannot be rebuilt from a name: run_recipe already wrote "
                        f"{run / 'report.html'}; call nncompress.report.build_report(before, after, ...) for a custom one")
    d = recipe["data"]
    ds = load_dataset(d["name"], test_fraction=d["test_fraction"], seed=recipe["seed"]).subset(d["train_samples"], d["test_samples"])
    before = build_model(recipe["model"], ds.input_shape, ds.num_classes)
    load_weights_into(before, pre_file, f"the run's model '{recipe['model']}'")
    after = build_model(recipe["model"], ds.input_shape, ds.num_classes)
    state = load_weights(post_file)
    if any(state[k].shape != v.shape for k, v in after.state_dict().items() if k in state):  # thinned by channel removal
        from nncompress.pruning.structured import resize_to_state_dict

        resize_to_state_dict(after, state)
    problem = state_dict_mismatch(after.state_dict(), state)
    if problem:
        raise UserError(f"{post_file} does not fit the run's model '{recipe['model']}': {problem}; was the run folder changed?")
    after.load_state_dict(state)
    sens = sensitivity_sweep(before, ds) if sensitivity else None
    report = build_report(before, after, ds.input_shape, result["top1_pretrained"], result["top1_final"],
                          title=f"nncompress report: {result['name']}", value_bits=value_bits(recipe), history=result["history"],
                          sensitivity=sens, extra={"model": recipe["model"], "data": d["name"]})
    if is_main_process():
        report.write(html_path or run / "report.html", markdown_path or run / "report.md")
    return report


def sensitivity_sweep(model: nn.Module, ds: Dataset) -> dict:
    """Per-layer pruning sensitivity (top-1 on the test split) as SensitivityResult.to_dict(); under torchrun
    the layers are shared round-robin across the processes and the curves gathered on every rank."""
    from torch.utils.data import DataLoader, TensorDataset

    from nncompress.core.layers import compressible_layers
    from nncompress.pruning import DEFAULT_LEVELS, sensitivity_analysis
    from nncompress.training import evaluate

    loader = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=512)
    names = list(compressible_layers(model))
    mine = shard(names)
    part = sensitivity_analysis(model, lambda m: evaluate(m, loader), layers=mine, progress=False).to_dict() if mine else {}
    metrics = gather_json(part.get("metrics", {}))
    return {"levels": list(DEFAULT_LEVELS), "metrics": {n: metrics[n] for n in names}, "baseline": evaluate(model, loader)}
