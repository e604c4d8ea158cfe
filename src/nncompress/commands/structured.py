"""`nncompress prune-channels` and `nncompress netadapt`: thin commands over
`nncompress.pruning.structured.api.run_prune_channels` / `run_netadapt`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.commands.common import (check_data, check_float, check_in_file, check_int, check_lr, check_model,
                                        check_out_file, check_seed)
from nncompress.core.errors import UserError


def _parse_layer_ratios(items: list[str]) -> dict[str, float]:
    return _parse_pairs(items, "--layer-ratio", "NAME=RATIO (e.g. layer1.0.conv1=0.3)")


def _parse_pairs(items: list[str], flag: str, form: str) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise UserError(f"{flag} expects {form}, got '{item}'")
    return out


def _print(report: dict, title: str, as_json: bool, out_json: Path | None) -> None:
    from nncompress.core.io import atomic_write_text

    text = json.dumps(report, indent=2)
    if out_json is not None:
        atomic_write_text(out_json, text + "\n")
    if as_json:
        typer.echo(text)
        return
    from rich.console import Console
    from rich.table import Table

    b, a = report["before"], report["after"]
    table = Table(title=title)
    for col in ("", "before", "after", "ratio / change"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("parameters", f"{b['params']:,}", f"{a['params']:,}", f"{report['params_ratio']:.2f}×")
    table.add_row("MACs / sample", f"{b['macs']:,}", f"{a['macs']:,}", f"{report['macs_ratio']:.2f}×")
    table.add_row(f"latency ms (batch {report['latency_batch']}, {report['threads']} thr)", f"{b['latency_ms']:.2f}",
                  f"{a['latency_ms']:.2f}", f"{report['speedup']:.2f}× faster")
    table.add_row("top-1 %", f"{b['top1']:.2f}", f"{a['top1']:.2f}", f"{-report['top1_drop_pp']:+.2f} pp")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    if report.get("out"):
        console.print(f"weights written to {report['out']}")


def _check_common(model: str, data: str, weights: Path | None, seed: int, lr: float, finetune_epochs: int,
                  pretrain_epochs: int, out: Path | None, report: Path | None) -> None:
    """Checks both commands share, run before any data loads or pre-training starts."""
    check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_seed(seed)
    check_lr(lr), check_int(finetune_epochs, "fine-tuning epochs", 0, 100_000)
    if weights is None:
        check_int(pretrain_epochs, "--pretrain-epochs (no --weights given)", 1, 100_000)
    check_out_file(out), check_out_file(report, "--report")


def register(app: typer.Typer) -> None:
    @app.command("prune-channels")
    def prune_channels_cmd(
        model: str = typer.Option("resnet20", "--model", help="Model name (resnet20, resnet56, lenet5, lenet300, ...)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights (.safetensors); default: train --pretrain-epochs first."),
        criterion: str = typer.Option("l1", "--criterion", help="l1, l2, bn_scale, taylor, random or largest."),
        ratio: float = typer.Option(0.5, "--ratio", help="Fraction of each channel group's channels to remove."),
        layer_ratio: list[str] = typer.Option([], "--layer-ratio", help="NAME=RATIO override for one group/layer (repeatable)."),
        remove_macs: float | None = typer.Option(None, "--remove-macs", help="Instead of --ratio: fraction of MACs to remove."),
        sensitivity_drop: float | None = typer.Option(None, "--sensitivity-drop", help="Per-group ratios from a sensitivity scan allowing this many points of top-1 drop."),
        round_to: int = typer.Option(1, "--round-to", help="Keep channel counts in multiples of this (8 suits AVX2)."),
        finetune_epochs: int = typer.Option(1, "--finetune-epochs", help="Epochs of fine-tuning after pruning."),
        pretrain_epochs: int = typer.Option(3, "--pretrain-epochs", help="Training epochs when no --weights are given."),
        lr: float = typer.Option(0.01, "--lr", help="Fine-tuning learning rate."),
        latency_batch: int = typer.Option(32, "--latency-batch", help="Batch size for the latency measurement."),
        threads: int = typer.Option(1, "--threads", help="CPU threads for the latency measurement."),
        seed: int = typer.Option(0, "--seed"),
        out: Path | None = typer.Option(None, "--out", help="Write the thinned weights (.safetensors) here."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        report: Path | None = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    ) -> None:
        """Remove whole channels (structured pruning), fine-tune, and compare params, MACs, latency and top-1."""
        from nncompress.pruning.structured.api import run_prune_channels
        from nncompress.pruning.structured.criteria import CRITERIA

        if criterion not in CRITERIA:
            raise UserError(f"unknown --criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
        if threads < 1 or latency_batch < 1 or round_to < 1:
            raise UserError("--threads, --latency-batch and --round-to must be at least 1")
        if not 0.0 <= ratio < 1.0 or (remove_macs is not None and not 0.0 < remove_macs < 1.0):
            raise UserError(f"--ratio must be in [0, 1) and --remove-macs in (0, 1); got {ratio} and {remove_macs}")
        layer_ratios = _parse_layer_ratios(layer_ratio)
        for name, value in layer_ratios.items():
            check_float(value, f"--layer-ratio {name}", 0.0, 1.0, hi_open=True)
        check_float(sensitivity_drop, "--sensitivity-drop", 0.0, 100.0)
        _check_common(model, data, weights, seed, lr, finetune_epochs, pretrain_epochs, out, report)
        result = run_prune_channels(
            model, data, weights, criterion=criterion, ratio=ratio, layer_ratios=layer_ratios,
            remove_macs=remove_macs, sensitivity_drop=sensitivity_drop, round_to=round_to, finetune_epochs=finetune_epochs,
            pretrain_epochs=pretrain_epochs, lr=lr, latency_batch=latency_batch, threads=threads, seed=seed, out=out)
        _print(result, f"{model} on {data}: {criterion} channel pruning", as_json, report)

    @app.command("netadapt")
    def netadapt_cmd(
        latency_budget: float | None = typer.Option(None, "--latency-budget", help="Target latency as a fraction of the measured original (e.g. 0.5)."),
        resource: list[str] = typer.Option([], "--resource", help="NAME=BUDGET, repeatable: budgets (fractions of the original) that must all hold; "
                                           "NAME: latency, macs, params, energy. Replaces --latency-budget."),
        weight: list[str] = typer.Option([], "--weight", help="NAME=W, repeatable: weights of the combined resource the step and --rule ratio use "
                                         "(default: the first --resource alone)."),
        rule: str = typer.Option("accuracy", "--rule", help="accuracy (NetAdapt: most accurate proposal) or ratio (MobileNetV3: largest ΔAcc/|ΔR|)."),
        model: str = typer.Option("lenet5", "--model", help="Model name."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights (.safetensors); default: train --pretrain-epochs first."),
        step: float = typer.Option(0.1, "--step", help="Latency cut per iteration, as a fraction of the original (ΔR)."),
        short_steps: int = typer.Option(20, "--short-steps", help="Batches of short-term fine-tuning per proposal."),
        long_epochs: int = typer.Option(1, "--long-epochs", help="Epochs of long-term fine-tuning at the end."),
        pretrain_epochs: int = typer.Option(3, "--pretrain-epochs", help="Training epochs when no --weights are given."),
        lr: float = typer.Option(0.01, "--lr"),
        latency_batch: int = typer.Option(32, "--latency-batch", help="Batch size latency is measured at."),
        threads: int = typer.Option(1, "--threads", help="CPU threads latency is measured with."),
        seed: int = typer.Option(0, "--seed"),
        out: Path | None = typer.Option(None, "--out", help="Write the adapted weights (.safetensors) here."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        report: Path | None = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    ) -> None:
        """NetAdapt: remove filters layer by layer until the measured latency meets the budget, then fine-tune."""
        from nncompress.pruning.structured.api import run_netadapt

        from nncompress.pruning.structured.netadapt import RULES, check_resources

        if threads < 1 or latency_batch < 1:
            raise UserError("--threads and --latency-batch must be at least 1")
        if latency_budget is None and not resource:
            raise UserError("give --latency-budget (e.g. 0.5) or one or more --resource NAME=BUDGET (e.g. macs=0.6)")
        if latency_budget is not None and resource:
            raise UserError("give either --latency-budget or --resource, not both (use --resource latency=BUDGET)")
        if latency_budget is not None and not 0.0 < latency_budget < 1.0:
            raise UserError(f"--latency-budget is a fraction of the measured latency, in (0, 1); got {latency_budget}")
        if rule not in RULES:
            raise UserError(f"unknown --rule '{rule}': choose one of {', '.join(RULES)}")
        budgets = _parse_pairs(resource, "--resource", "NAME=BUDGET (e.g. macs=0.6)") if resource else None
        weights_ = _parse_pairs(weight, "--weight", "NAME=W (e.g. latency=1)") if weight else None
        if weights_ and not budgets:
            raise UserError("--weight needs --resource budgets for the resources it weighs")
        if budgets is not None:
            check_resources(budgets, weights_)
        check_float(step, "--step", 0.0, 1.0, lo_open=True, hi_open=True), check_int(short_steps, "--short-steps", 0, 1_000_000)
        _check_common(model, data, weights, seed, lr, long_epochs, pretrain_epochs, out, report)
        result = run_netadapt(model, data, weights, latency_budget=latency_budget, resources=budgets, resource_weights=weights_,
                              rule=rule, step=step, short_steps=short_steps, long_epochs=long_epochs, pretrain_epochs=pretrain_epochs,
                              lr=lr, latency_batch=latency_batch, threads=threads, seed=seed, out=out)
        goal = f"{latency_budget:.0%} latency" if budgets is None else ", ".join(f"{n} {b:.0%}" for n, b in budgets.items())
        _print(result, f"{model} on {data}: NetAdapt ({rule}) to {goal}", as_json, report)
