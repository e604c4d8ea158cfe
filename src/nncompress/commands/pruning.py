"""`nncompress sensitivity` and `nncompress prune`: thin commands over `nncompress.pruning`.

API twins: `sensitivity_analysis(model, evaluate_fn, levels)` and `<Pruner>(...).prune(model)` + `finalize(model)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from nncompress.core.errors import UserError

DEFAULT_LEVELS_TEXT = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95"


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated numbers like 0,0.5,0.9; got {text!r}") from None
    if not values:
        raise UserError(f"{option} is empty: give comma-separated numbers like 0,0.5,0.9")
    return values


def _parse_layers(text: str | None) -> list[str] | None:
    return None if not text else [x.strip() for x in text.split(",") if x.strip()]


def _model_and_data(model_name: str, data: str, weights: Path | None, seed: int, train_epochs: int, quiet: bool,
                    layers: list[str] | None = None):
    """Build the model for the dataset; load weights, or train a quick baseline when none are given.

    `layers` (the --layers option) are checked against the built model before the baseline trains, so a typo
    fails in a second rather than after training.
    """
    from nncompress.core.layers import compressible_layers
    from nncompress.architectures import build_model
    from nncompress.core.io import load_weights
    from nncompress.core.seed import seed_everything
    from nncompress.data import load_dataset, make_loaders
    from nncompress.pruning import load_masked_state_dict
    from nncompress.training import TrainConfig, evaluate, train

    seed_everything(seed)
    ds = load_dataset(data, seed=seed)
    net = build_model(model_name, ds.input_shape, ds.num_classes)
    known = compressible_layers(net)
    unknown = [name for name in layers or [] if name not in known]
    if unknown:
        raise UserError(f"--layers: model '{model_name}' has no Linear/Conv layer {', '.join(unknown)}; "
                        f"its layers are {', '.join(known)}")
    train_loader, test_loader = make_loaders(ds, seed=seed)
    if weights is not None:
        load_masked_state_dict(net, load_weights(weights))
    else:
        train(net, train_loader, TrainConfig(epochs=train_epochs, lr=0.05, seed=seed))
        if not quiet:
            Console(stderr=True).print(f"no --weights given: trained {model_name} on {data} for {train_epochs} epochs "
                                       f"(top-1 {evaluate(net, test_loader):.2f}%)")
    return net, train_loader, test_loader


def _check_common(out: Path | None, out_kind: str, model: str, data: str, weights: Path | None, seed: int,
                  train_epochs: int) -> None:
    """Checks both commands share, run before any data loads or training starts."""
    from nncompress.commands.common import (check_data, check_in_file, check_int, check_model, check_out_dir,
                                            check_out_file, check_seed)

    (check_out_dir if out_kind == "dir" else check_out_file)(out)
    check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_seed(seed)
    if weights is None:
        check_int(train_epochs, "--train-epochs", 1, 100_000)


def _zero_counts(net) -> dict[str, tuple[int, int]]:
    """(exact zeros, numel) of each Linear/Conv weight, masks applied."""
    from nncompress.core.layers import compressible_layers

    return {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in compressible_layers(net).items()}


def register(app: typer.Typer) -> None:
    @app.command("sensitivity")
    def sensitivity_cmd(
        out: Path = typer.Option(..., "--out", help="Directory for sensitivity.json and sensitivity.png."),
        model: str = typer.Option("lenet300", "--model", help="Model name (see build_model)."),
        data: str = typer.Option("digits", "--data", help="digits, mnist5k or a path to an .npz."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights (.safetensors); trained quickly if missing."),
        levels: str = typer.Option(DEFAULT_LEVELS_TEXT, "--levels", help="Comma-separated sparsity levels in [0, 1)."),
        layers: str | None = typer.Option(None, "--layers", help="Comma-separated layer names (default: all Linear/Conv)."),
        max_drop: float = typer.Option(1.0, "--max-drop", help="Top-1 points a layer may lose; sets the suggested per-layer targets."),
        train_epochs: int = typer.Option(10, "--train-epochs", help="Epochs for the quick baseline when --weights is missing."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Prune each layer alone at each level and record top-1 (Han et al. 2015); write JSON + PNG."""
        from nncompress.pruning import SensitivityResult, sensitivity_analysis
        from nncompress.pruning.criteria import check_sparsity
        from nncompress.training import evaluate

        from nncompress.commands.common import check_float

        _check_common(out, "dir", model, data, weights, seed, train_epochs)
        level_values = [check_sparsity(x, "--levels value") for x in _parse_floats(levels, "--levels")]
        check_float(max_drop, "--max-drop", 0.0, 100.0)
        net, _, test_loader = _model_and_data(model, data, weights, seed, train_epochs, as_json, _parse_layers(layers))
        result: SensitivityResult = sensitivity_analysis(net, lambda m: evaluate(m, test_loader), level_values,
                                                         layers=_parse_layers(layers))
        result.meta.update(model=model, data=data, weights=str(weights) if weights else "trained-quick")
        payload = {**result.to_dict(), "max_drop": max_drop, "targets": result.targets(max_drop)}
        from nncompress.core.io import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "sensitivity.json", json.dumps(payload, indent=2))
        result.plot(out / "sensitivity.png")
        if as_json:
            typer.echo(json.dumps(payload, indent=2))
            return
        table = Table(title=f"top-1 (%) with one layer pruned; baseline {result.baseline:.2f}")
        table.add_column("layer")
        for level in result.levels:
            table.add_column(f"{level:g}", justify="right")
        table.add_column(f"target (drop ≤ {max_drop:g})", justify="right")
        for layer, values in result.metrics.items():
            table.add_row(layer, *[f"{v:.1f}" for v in values], f"{payload['targets'][layer]:g}")
        console = Console()
        console.print(table)
        console.print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")

    @app.command("prune")
    def prune_cmd(
        out: Path = typer.Option(..., "--out", help="Output .safetensors with masks baked in."),
        model: str = typer.Option("lenet300", "--model", help="Model name (see build_model)."),
        data: str = typer.Option("digits", "--data", help="digits, mnist5k or a path to an .npz."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights (.safetensors); trained quickly if missing."),
        criterion: str = typer.Option("level", "--criterion", help="level (--sparsity), magnitude (--threshold), sensitivity (--s), or by --sparsity: taylor, obd, snip, apoz, synflow."),
        sparsity: float = typer.Option(0.9, "--sparsity", help="Fraction of weights to remove, in [0, 1) (criterion level)."),
        scope: str = typer.Option("layer", "--scope", help="layer: each layer to --sparsity; global: one threshold for all."),
        threshold: float | None = typer.Option(None, "--threshold", help="Keep |w| > threshold (criterion magnitude)."),
        s: float | None = typer.Option(None, "--s", help="Keep |w| > s·std(w) per layer (criterion sensitivity)."),
        layers: str | None = typer.Option(None, "--layers", help="Comma-separated layer names (default: all Linear/Conv)."),
        fine_tune_epochs: int = typer.Option(0, "--fine-tune-epochs", help="Retrain with the masks on after pruning."),
        train_epochs: int = typer.Option(10, "--train-epochs", help="Epochs for the quick baseline when --weights is missing."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        structured: bool = typer.Option(False, "--structured", help="Remove whole channels for real (criterion l1, l2, bn, taylor, random, largest)."),
        ratio: float = typer.Option(0.5, "--ratio", help="With --structured: fraction of each channel group to remove."),
        granularity: str = typer.Option("element", "--granularity", help="element | kernel | vector | block: remove whole groups (level and score criteria)."),
        block: int = typer.Option(4, "--block", help="With --granularity block: b for b×b blocks of the 2-D weight."),
    ) -> None:
        """Prune weights (masks finalized in the saved file); print per-layer sparsity and top-1 before/after.

        Examples: nncompress prune --model lenet300 --sparsity 0.9 --out p.safetensors;
        nncompress prune --structured --criterion l1 --ratio 0.5 --model resnet20 --data mnist5k --out r.safetensors
        """
        from nncompress.commands.common import check_float, check_int

        _check_common(out, "file", model, data, weights, seed, 1)
        check_int(fine_tune_epochs, "--fine-tune-epochs", 0, 100_000)
        if structured:  # channel removal: the same command as `nncompress prune-channels`
            from nncompress.commands.structured import _print
            from nncompress.pruning.structured.api import run_prune_channels
            from nncompress.pruning.structured.criteria import CRITERIA

            crit = "l1" if criterion == "level" else criterion
            if crit not in CRITERIA:
                raise UserError(f"unknown --criterion '{criterion}' with --structured: choose one of {', '.join(CRITERIA)}")
            check_float(ratio, "--ratio", 0.0, 1.0, hi_open=True)
            report = run_prune_channels(model, data, weights, criterion=crit, ratio=ratio,
                                        finetune_epochs=max(fine_tune_epochs, 0), seed=seed, out=out)
            _print(report, f"structured pruning: {model}, {crit}, ratio {ratio}", as_json, None)
            return
        from nncompress.core.io import save_weights
        from nncompress.pruning import LevelPruner, MagnitudePruner, SensitivityPruner, finalize
        from nncompress.pruning.criteria import check_sparsity
        from nncompress.training import TrainConfig, evaluate, train

        if weights is None:
            check_int(train_epochs, "--train-epochs", 1, 100_000)
        names = _parse_layers(layers)
        if scope not in ("layer", "global"):
            raise UserError(f"unknown --scope '{scope}': use layer or global")
        from nncompress.pruning.granularity import GRANULARITIES
        from nncompress.pruning.saliency import SALIENCY_CRITERIA

        if granularity not in GRANULARITIES:
            raise UserError(f"unknown --granularity '{granularity}': use {', '.join(GRANULARITIES)}")
        scored = criterion in SALIENCY_CRITERIA or granularity != "element"  # ScorePruner, built once data is loaded
        if scored and criterion not in ("level", *SALIENCY_CRITERIA):
            raise UserError(f"--granularity {granularity} works with --criterion level or {', '.join(SALIENCY_CRITERIA)}, not {criterion}")
        if scored:
            check_sparsity(sparsity, "--sparsity"), check_int(block, "--block", 1, 1_000_000)
        if criterion != "level" and not scored and scope != "layer":
            raise UserError(f"--scope {scope} applies to --criterion level only; drop it for --criterion {criterion}")
        if scored:
            pruner = None
        elif criterion == "level":
            pruner = LevelPruner(check_sparsity(sparsity, "--sparsity"), scope=scope, layers=names)
        elif criterion == "magnitude":
            if threshold is None:
                raise UserError("--criterion magnitude needs --threshold T (weights with |w| <= T are removed)")
            pruner = MagnitudePruner(check_float(threshold, "--threshold", 0.0), layers=names)
        elif criterion == "sensitivity":
            if s is None:
                raise UserError("--criterion sensitivity needs --s S (weights with |w| <= S·std(w) are removed)")
            pruner = SensitivityPruner(check_float(s, "--s", 0.0), layers=names)
        else:
            raise UserError(f"unknown --criterion {criterion!r}: use level, magnitude, sensitivity, {', '.join(SALIENCY_CRITERIA)}")

        net, train_loader, test_loader = _model_and_data(model, data, weights, seed, train_epochs, as_json, names)
        top1_before = evaluate(net, test_loader)
        if pruner is None:
            from nncompress.pruning import ScorePruner

            pruner = ScorePruner(sparsity, criterion="magnitude" if criterion == "level" else criterion, granularity=granularity,
                                 scope=scope, layers=names, data=train_loader, block=block,
                                 example_input=next(iter(train_loader))[0] if criterion == "synflow" else None)
        pruner.prune(net)
        top1_pruned = evaluate(net, test_loader)
        if fine_tune_epochs:
            train(net, train_loader, TrainConfig(epochs=fine_tune_epochs, lr=0.01, seed=seed))
        top1_after = evaluate(net, test_loader)
        finalize(net)
        counts = _zero_counts(net)
        per_layer = {n: zeros / numel for n, (zeros, numel) in counts.items()}
        total = sum(z for z, _ in counts.values()) / max(sum(n for _, n in counts.values()), 1)
        save_weights(net.state_dict(), out, metadata={"model": model, "data": data, "criterion": criterion})
        report = {"model": model, "data": data, "criterion": criterion, "top1_before": top1_before,
                  "top1_pruned": top1_pruned, "top1_after": top1_after, "fine_tune_epochs": fine_tune_epochs,
                  "sparsity": per_layer, "total_sparsity": total, "out": str(out)}
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        table = Table(title=f"{model} pruned ({criterion})")
        table.add_column("layer")
        table.add_column("sparsity", justify="right")
        for name, value in per_layer.items():
            table.add_row(name, f"{100 * value:.1f}%")
        table.add_row("total", f"{100 * total:.1f}%")
        console = Console()
        console.print(table)
        tuned = f", after {fine_tune_epochs} fine-tune epochs {top1_after:.2f}%" if fine_tune_epochs else ""
        console.print(f"top-1 before {top1_before:.2f}%, after pruning {top1_pruned:.2f}%{tuned}")
        console.print(f"wrote {out}")
