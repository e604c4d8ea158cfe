"""`train`, `evaluate`, `compress` (the Deep Compression main job) and `decompress`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def _parse_per_layer(text: str | None, cast, what: str):
    """'0.9' → 0.9; 'fc1=0.95,fc2=0.9' → {'fc1': 0.95, 'fc2': 0.9}."""
    if text is None:
        return None
    try:
        if "=" not in text:
            out = cast(text)
        else:
            out = {}
            for part in text.split(","):
                key, value = part.split("=")
                if not key.strip():
                    raise ValueError(part)
                out[key.strip()] = cast(value)
    except ValueError:
        raise UserError(f"--{what}: cannot parse {text!r}; use a number or layer=value pairs like fc1=0.95,fc2=0.9") from None
    for value in (out.values() if isinstance(out, dict) else [out]):  # ranges now, before any data loads
        if what == "sparsity" and not 0.0 <= value < 1.0:  # also refuses nan
            raise UserError(f"--sparsity values must be in [0, 1) (the fraction of weights removed), got {value} in {text!r}")
        if what == "bits" and not 1 <= value <= 16:
            raise UserError(f"--bits values must be integers in 1..16, got {value} in {text!r}")
    return out


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        model: str = typer.Option("lenet300", "--model", help="Model name (see `nncompress zoo list`)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz with x and y."),
        epochs: int = typer.Option(20, "--epochs", min=1),
        lr: float = typer.Option(0.05, "--lr"),
        seed: int = typer.Option(0, "--seed"),
        threads: int = typer.Option(2, "--threads", min=1),
        device: str = typer.Option("auto", "--device", help="auto (this rank's GPU when CUDA is present, else cpu), cpu, cuda or cuda:N."),
        out: Path = typer.Option(Path("model.safetensors"), "--out", help="Weights file to write (safetensors)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Train a model with a fixed seed and save its weights as safetensors.

        Example: nncompress train --model lenet5 --data mnist5k --epochs 20 --out lenet5.safetensors
        """
        import torch

        from nncompress.architectures import build_model
        from nncompress.core.io import save_weights
        from nncompress.core.seed import seed_everything
        from nncompress.data import load_dataset, make_loaders
        from nncompress.training import TrainConfig, evaluate, train
        from nncompress.training.device import resolve_device

        from nncompress.commands.common import (check_data, check_device, check_int, check_lr, check_model,
                                                check_out_file, check_seed)

        check_model(model), check_data(data), check_lr(lr), check_seed(seed), check_int(threads, "--threads", 1, 1024)
        check_int(epochs, "--epochs", 1, 100_000)
        check_out_file(out)  # an unwritable --out fails now, not after training
        check_device(device)  # a bad or unavailable device fails before the data loads
        torch.set_num_threads(threads)
        seed_everything(seed)
        ds = load_dataset(data, seed=seed)
        net = build_model(model, ds.input_shape, ds.num_classes)
        train_loader, test_loader = make_loaders(ds, seed=seed)
        train(net, train_loader, TrainConfig(epochs=epochs, lr=lr, seed=seed, device=device))
        top1 = evaluate(net, test_loader)
        save_weights(net.state_dict(), out, metadata={"model": model, "data": data, "seed": str(seed)})
        result = {"model": model, "data": data, "epochs": epochs, "top1": top1, "weights": str(out)}
        typer.echo(json.dumps(result) if as_json else f"{model} on {data}: top-1 {top1:.2f}% → {out}")

    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Option("lenet300", "--model", help="Zoo name, package.module:factory or path/to/file.py:factory."),
        data: str = typer.Option("mnist5k", "--data"),
        weights: Path | None = typer.Option(None, "--weights", help=".safetensors (or weights-only .pt) weights, or use --nnc."),
        nnc: Path | None = typer.Option(None, "--nnc", help="A .nnc file written by `nncompress compress`."),
        as_json: bool = typer.Option(False, "--json"),
        sparse: bool = typer.Option(False, "--sparse", help="Run pruned layers sparse where measured faster (nncompress.sparse.sparsify)."),
    ) -> None:
        """Top-1 accuracy of saved weights (or of a .nnc file) on the test split."""
        from nncompress.data import load_dataset, make_loaders
        from nncompress.training import evaluate

        from nncompress.commands.common import check_data, check_in_file, check_model

        if (weights is None) == (nnc is None):
            raise UserError("give exactly one of --weights or --nnc")
        check_in_file(weights, "--weights", "weights file"), check_in_file(nnc, "--nnc", ".nnc file"), check_data(data)
        if weights is not None:
            check_model(model)
        if nnc is not None:
            from nncompress.core.model_ref import is_factory_ref
            from nncompress.export import decompress_model

            if is_factory_ref(model):  # your own model: rebuilt from the reference you give, not the file's
                check_model(model)
            net, meta = decompress_model(nnc, model=model if is_factory_ref(model) else None)
            model = str(meta.get("model"))
            ds = load_dataset(data)
            if tuple(ds.input_shape) != tuple(meta.get("in_shape", ())):
                raise UserError(f"{nnc} was built for inputs {meta.get('in_shape')}, but {data} has {list(ds.input_shape)}")
        else:
            from nncompress.commands.common import model_and_data

            net, ds = model_and_data(model, data, weights)
        _, test_loader = make_loaders(ds)
        if sparse:
            from nncompress.sparse import sparsify

            sparsify(net, next(iter(test_loader))[0])
        top1 = evaluate(net, test_loader)
        typer.echo(json.dumps({"model": model, "data": data, "top1": top1}) if as_json else f"top-1 {top1:.2f}%")

    @app.command("compress")
    def compress_cmd(
        model: str = typer.Option("lenet300", "--model", help="lenet300 or lenet5 (any registered model works)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz with x and y."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights; default: train (or reuse a cached) baseline."),
        out: Path = typer.Option(Path("nncompress-out"), "--out", help="Output directory for the .nnc file, reports and plots."),
        sparsity: str | None = typer.Option(None, "--sparsity", help="One value for all layers or fc1=0.95,fc2=0.9; default: the model's preset."),
        bits: str | None = typer.Option(None, "--bits", help="Codebook bits: one value or conv=8,linear=5 / layer=bits; default conv 8, linear 5."),
        prune_steps: int = typer.Option(3, "--prune-steps", help="Iterative pruning rounds."),
        epochs: int = typer.Option(6, "--finetune-epochs", help="Fine-tuning epochs per pruning round."),
        train_epochs: int = typer.Option(20, "--train-epochs", help="Baseline training epochs when --weights is not given."),
        seed: int = typer.Option(0, "--seed"),
        threads: int = typer.Option(2, "--threads"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        recipe: Path | None = typer.Option(None, "--recipe", help="Run a YAML recipe instead (see recipes/); same as `nncompress run-recipe`."),
        resume: bool = typer.Option(False, "--resume", help="With --recipe: continue an interrupted run from its last checkpoint in --out."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep a result that fell to chance accuracy (a warning instead of an error)."),
        allocate: bool = typer.Option(True, "--allocate/--no-allocate", help="Choose unset per-layer sparsity/bits from sensitivity on a validation split (else the presets)."),
        budget_pp: float | None = typer.Option(None, "--budget-pp", help="Allocation budget: summed one-shot validation expected-top-1 drop in points; default: the model's preset."),
    ) -> None:
        """The Deep Compression pipeline: prune → fine-tune → k-means share → fine-tune → Huffman (.nnc).

        Examples: nncompress compress --model lenet5 --data mnist5k --out out/;
        nncompress compress --recipe recipes/agp_qat_kd.yaml --out runs/agp
        """
        from nncompress.commands.common import (check_data, check_in_file, check_int, check_model, check_out_dir,
                                                check_seed)

        check_out_dir(out)  # an unwritable or file --out fails now, not after an hour of training
        check_int(threads, "--threads", 1, 1024)
        if recipe is not None:
            from nncompress.recipes.runner import run_recipe

            check_in_file(recipe, "--recipe", "recipe file")

            result = run_recipe(recipe, out, threads=threads, resume=resume, allow_drop=allow_drop)
            summary = result.to_dict()
            typer.echo(json.dumps(summary) if as_json else
                       f"{result.name}: top-1 {result.top1_pretrained:.2f}% → {result.top1_final:.2f}%, sparsity "
                       f"{100 * result.sparsity:.1f}% ({result.nonzero_params}/{result.params} weights) → {out}")
            return
        from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression

        check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_seed(seed)
        check_int(prune_steps, "--prune-steps", 1, 1000), check_int(epochs, "--finetune-epochs", 0, 100_000)
        check_int(train_epochs, "--train-epochs", 1, 100_000)
        sparsity_value, bits_value = _parse_per_layer(sparsity, float, "sparsity"), _parse_per_layer(bits, int, "bits")
        cfg = DeepCompressionConfig(
            model=model, data=data, weights=str(weights) if weights else None, out_dir=str(out),
            sparsity=sparsity_value, bits=bits_value,
            prune_steps=prune_steps, prune_finetune_epochs=epochs, baseline_epochs=train_epochs, seed=seed, threads=threads,
            allow_drop=allow_drop, allocate=allocate, budget_pp=budget_pp,
        )
        log = (lambda *a: None) if as_json else (lambda msg: typer.echo(msg, err=True))
        result = run_deep_compression(cfg, log=log)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Deep Compression: {model} on {data}")
        for col in ("stage", "bytes", "ratio vs fp32", "top-1 %"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for s in result.stages:
            table.add_row(s.stage, f"{s.bytes:,}", f"{s.ratio:.1f}×", f"{s.top1:.2f}")
        console = Console() if Console().is_terminal else Console(width=120)
        console.print(table)
        console.print(f"wrote {', '.join(result.files)}")

    @app.command("decompress")
    def decompress_cmd(
        nnc: Path = typer.Argument(..., help="A .nnc file written by `nncompress compress`."),
        out: Path = typer.Option(Path("decompressed.safetensors"), "--out", help="Weights file to write (safetensors)."),
        model: str | None = typer.Option(None, "--model", help="Rebuild this model (zoo name, package.module:factory or "
                                         "path/to/file.py:factory); needed when the file was written for your own model."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Rebuild the model from a .nnc file (bit-exact weights) and save them as safetensors."""
        from nncompress.core.io import save_weights
        from nncompress.export import decompress_model

        from nncompress.commands.common import check_in_file, check_model, check_out_file

        check_in_file(nnc, "NNC", ".nnc file"), check_out_file(out)
        if model is not None:
            check_model(model)
        net, meta = decompress_model(nnc, model=model)
        save_weights(net.state_dict(), out, metadata={"model": str(meta.get("model"))})
        info = {"model": meta.get("model"), "in_shape": meta.get("in_shape"), "num_classes": meta.get("num_classes"), "weights": str(out)}
        typer.echo(json.dumps(info) if as_json else f"{meta.get('model')} rebuilt from {nnc} → {out}")
