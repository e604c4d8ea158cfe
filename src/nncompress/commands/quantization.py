"""Quantization commands, thin over the API:
`nncompress quantize` → `quantize_and_measure`; `nncompress mixed-precision` → `mixed_precision`;
`nncompress accumulators` → `accumulator_report` (+ `simulate_accumulator` for the narrow-accumulator error)."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from nncompress.core.errors import UserError


def _check_common(model: str, data: str, weights: Path | None, seed: int, train_epochs: int, subset: int | None) -> None:
    """Checks the quantization commands share, run before any data loads or any baseline trains."""
    from nncompress.commands.common import check_data, check_in_file, check_int, check_model, check_seed

    check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_seed(seed)
    check_int(subset, "--subset", 2)
    if weights is None:
        check_int(train_epochs, "--train-epochs", 1, 100_000)


def _model_and_data(model_name: str, data: str, weights: Path | None, seed: int, train_epochs: int, subset: int | None, quiet: bool):
    """Build the model for the dataset; load weights, or train a quick float baseline when none are given."""
    from nncompress.architectures import build_model
    from nncompress.core.seed import seed_everything
    from nncompress.data import load_dataset, make_loaders
    from nncompress.training import TrainConfig, evaluate, train

    seed_everything(seed)
    ds = load_dataset(data, seed=seed)
    if subset is not None:
        if subset < 1:
            raise UserError(f"--subset {subset} must be a positive number of training samples")
        ds = ds.subset(subset, max(subset // 4, 1))
    net = build_model(model_name, ds.input_shape, ds.num_classes)
    if weights is not None:
        from nncompress.core.io import load_weights_into

        load_weights_into(net, weights, f"model '{model_name}'")
    else:
        if train_epochs < 1:
            raise UserError("no --weights given and --train-epochs < 1: pass --weights or a positive --train-epochs")
        train_loader, test_loader = make_loaders(ds, seed=seed)
        train(net, train_loader, TrainConfig(epochs=train_epochs, lr=0.05, seed=seed))
        if not quiet:
            Console(stderr=True).print(f"no --weights given: trained {model_name} on {data} for {train_epochs} epochs "
                                       f"(top-1 {evaluate(net, test_loader):.2f}%)")
    return net.eval(), ds


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Option("lenet5", "--model", help="Model name (see build_model)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or a path to an .npz."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained float weights (.safetensors); trained quickly if missing."),
        mode: str = typer.Option("static", "--mode", help="dynamic | static | qat."),
        bits: int = typer.Option(8, "--bits", help="Weight bits, 1..16 (int8 kernels run up to 8)."),
        act_bits: int = typer.Option(8, "--act-bits", help="Activation bits (static and qat)."),
        granularity: str = typer.Option("channel", "--granularity", help="tensor | channel (weight scales)."),
        calibration: str = typer.Option("minmax", "--calibration", help="minmax | moving_average | percentile | mse | entropy (static)."),
        calib_batches: int = typer.Option(8, "--calib-batches", help="Unlabeled batches of 64 used for calibration."),
        epochs: int = typer.Option(2, "--epochs", help="QAT fine-tuning epochs."),
        lr: float = typer.Option(0.005, "--lr", help="QAT learning rate (a tenth of a training rate)."),
        qat_method: str = typer.Option("lsq", "--qat-method", help="lsq (learned step size) | ste."),
        keep_first_last: bool = typer.Option(False, "--keep-first-last", help="Leave the first and last layers in float."),
        backend: str = typer.Option("torch", "--backend", help="int8 engine: torch (our modules on torch._int_mm) | onnxruntime (QDQ, our scales) | torchao (its dynamic int8)."),
        threads: int = typer.Option(2, "--threads", help="Intra-op threads for the latency measurement."),
        batch_size: int = typer.Option(32, "--batch-size", help="Batch size for the latency measurement."),
        repeats: int = typer.Option(20, "--repeats", help="Timed calls per model; the median is reported."),
        train_epochs: int = typer.Option(3, "--train-epochs", help="Epochs for the quick float baseline when --weights is missing."),
        subset: int | None = typer.Option(None, "--subset", help="Use only this many training samples (and a quarter as many test)."),
        output: Path | None = typer.Option(None, "--output", help="Write integer codes and scales (.safetensors)."),
        onnx: Path | None = typer.Option(None, "--onnx", help="Also write a QDQ .onnx with our scales and measure it in ONNX Runtime."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep a result more than 5 pp below fp32 top-1 (a warning naming the worst layers instead of an error)."),
        cle: bool = typer.Option(False, "--cle/--no-cle", help="PTQ ladder: cross-layer equalization + high-bias absorption (static)."),
        bias_correction: str = typer.Option("none", "--bias-correction", help="PTQ ladder: none | empirical | analytic (static)."),
        adaround: bool = typer.Option(False, "--adaround/--no-adaround", help="PTQ ladder: learn the weight rounding (AdaRound; static)."),
        adaround_steps: int = typer.Option(1000, "--adaround-steps", help="AdaRound optimization steps per layer."),
    ) -> None:
        """Quantize a model; report bytes, top-1 and measured latency before/after, and kernel vs simulation error.
        --cle, --bias-correction and --adaround run the static PTQ ladder (`ptq_ladder`) and report its rungs."""
        from nncompress.quantization import check_bits
        from nncompress.quantization.pipeline import CLI_MODES, check_backend, check_ladder_options, quantize_and_measure, save_quantized

        if mode not in CLI_MODES:
            raise UserError(f"--mode {mode!r} is not supported: use one of {', '.join(CLI_MODES)}")
        check_ladder_options(mode, bias_correction, adaround, adaround_steps, cle)
        check_bits(bits, "--bits")
        check_bits(act_bits, "--act-bits")
        if onnx is not None and (mode == "dynamic" or bits > 8 or act_bits != 8):
            raise UserError("--onnx needs --mode static or qat with at most 8-bit weights and 8-bit activations")
        if threads < 1 or batch_size < 1 or repeats < 1:
            raise UserError("--threads, --batch-size and --repeats must be positive")
        from nncompress.commands.common import check_int, check_lr, check_out_file
        from nncompress.quantization.observers import OBSERVERS

        _check_common(model, data, weights, seed, train_epochs, subset)
        if granularity not in ("tensor", "channel"):
            raise UserError(f"--granularity: unknown granularity '{granularity}': use tensor or channel")
        if calibration not in OBSERVERS:
            raise UserError(f"--calibration: unknown calibration '{calibration}': choose one of {', '.join(OBSERVERS)}")
        if qat_method not in ("lsq", "ste"):
            raise UserError(f"--qat-method: unknown QAT method '{qat_method}': use lsq or ste")
        check_backend(backend, mode)
        check_int(calib_batches, "--calib-batches", 1, 100_000), check_int(epochs, "--epochs", 0, 100_000), check_lr(lr)
        check_out_file(output, "--output"), check_out_file(onnx, "--onnx")  # unwritable outputs fail before training
        net, ds = _model_and_data(model, data, weights, seed, train_epochs, subset, as_json)
        gm, report = quantize_and_measure(net, ds, mode, bits, act_bits, granularity, calibration, calib_batches, epochs, lr,
                                          qat_method, keep_first_last, backend, None, batch_size, threads, repeats, seed, onnx,
                                          allow_drop=allow_drop, cle=cle, bias_correction=bias_correction, adaround=adaround,
                                          adaround_steps=adaround_steps)
        if output is not None:
            save_quantized(gm, output)
            report["output"] = str(output)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        console = Console()
        table = Table(title=f"{model} on {data}: {mode}, {bits}-bit weights ({granularity}), {threads} threads, batch {batch_size}")
        for col in ("", "fp32", "quantized", "ratio"):
            table.add_column(col, justify="right")
        table.add_row("weight bytes", f"{report['fp32_bytes']:,}", f"{report['quantized_bytes']:,}", f"{report['size_ratio']:.2f}×")
        q_top1 = report.get("int8_top1", report["quantized_top1"])
        table.add_row("top-1 %", f"{report['fp32_top1']:.2f}", f"{q_top1:.2f}", f"{q_top1 - report['fp32_top1']:+.2f} pp")
        if "int8_latency_ms" in report:
            table.add_row("latency ms (median)", f"{report['fp32_latency_ms']:.2f}", f"{report['int8_latency_ms']:.2f}",
                          f"{report['speedup']:.2f}×")
        if "onnx_latency_ms" in report:
            table.add_row("ONNX Runtime QDQ ms", f"{report['fp32_latency_ms']:.2f}", f"{report['onnx_latency_ms']:.2f}",
                          f"{report['fp32_latency_ms'] / report['onnx_latency_ms']:.2f}×")
        console.print(table)
        if "onnx_max_abs_error" in report:
            console.print(f"ONNX Runtime vs simulation: max |error| {report['onnx_max_abs_error']:.4g} "
                          f"= {report['onnx_error_in_steps']:.2f} output steps (top-1 {report['onnx_top1']:.2f}%)")
        if "kernel_max_abs_error" in report:
            console.print(f"int8 kernels ({backend}) vs simulation: max |error| {report['kernel_max_abs_error']:.4g} "
                          f"= {report['kernel_error_in_steps']:.2f} output steps")
        else:
            console.print(report["int8_note"])
        if "ptq_ladder" in report:
            lad = report["ptq_ladder"]
            console.print(f"PTQ ladder: {' → '.join(lad['steps'])}; top-1 {lad['ladder_top1']:.2f}% vs plain static "
                          f"{lad['static_top1']:.2f}% ({lad['gain_pp']:+.2f} pp)")
        for name, why in report["skipped_layers"].items():
            console.print(f"skipped {name}: {why}")
        if report.get("accuracy_warning"):
            Console(stderr=True).print(f"[bold red]warning:[/] {report['accuracy_warning']}", highlight=False)

    @app.command("mixed-precision")
    def mixed_precision_cmd(
        budget_bytes: int = typer.Option(..., "--budget-bytes", help="Size budget for the quantized weights (codes + scales)."),
        model: str = typer.Option("lenet5", "--model", help="Model name (see build_model)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or a path to an .npz."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained float weights (.safetensors); trained quickly if missing."),
        bits_options: str = typer.Option("2,3,4,6,8", "--bits-options", help="Comma-separated candidate weight bit widths."),
        calib_batches: int = typer.Option(2, "--calib-batches", help="Unlabeled batches of 64 for the sensitivity sweep."),
        train_epochs: int = typer.Option(3, "--train-epochs", help="Epochs for the quick float baseline when --weights is missing."),
        subset: int | None = typer.Option(None, "--subset", help="Use only this many training samples."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Per-layer weight bits from measured sensitivity under a size budget; report bits per layer."""
        from nncompress.commands.common import check_int
        from nncompress.data import make_loaders
        from nncompress.quantization.mixed_precision import mixed_precision

        _check_common(model, data, weights, seed, train_epochs, subset)
        check_int(budget_bytes, "--budget-bytes", 1), check_int(calib_batches, "--calib-batches", 1, 100_000)
        try:
            options = tuple(int(b) for b in bits_options.split(",") if b.strip())
        except ValueError:
            raise UserError(f"--bits-options must be comma-separated integers like 2,4,8; got {bits_options!r}") from None
        if not options:
            raise UserError("--bits-options is empty: give comma-separated bit widths like 2,4,8")
        for b in options:
            check_int(b, "--bits-options value", 1, 16)
        net, ds = _model_and_data(model, data, weights, seed, train_epochs, subset, as_json)
        res = mixed_precision(net, make_loaders(ds, seed=seed)[0], budget_bytes, options, calib_batches)
        if as_json:
            typer.echo(json.dumps({"bits": res.bits, "weight_bytes": res.weight_bytes, "budget_bytes": res.budget_bytes,
                                   "fp32_weight_bytes": res.float_weight_bytes, "compression_ratio": res.compression_ratio,
                                   "layers": res.layers, "sensitivity": res.sensitivity}, indent=2))
            return
        table = Table(title=f"{model}: {res.weight_bytes:,} of {budget_bytes:,} bytes ({res.compression_ratio:.1f}× smaller than fp32)")
        for col in ("layer", "bits", "params", "bytes", "KL at chosen bits"):
            table.add_column(col, justify="right")
        for r in res.layers:
            table.add_row(r["layer"], str(r["bits"]), f"{r['params']:,}", f"{r['weight_bytes']:,}", f"{r['sensitivity']:.2e}")
        Console().print(table)

    @app.command("accumulators")
    def accumulators_cmd(
        model: str = typer.Option("lenet5", "--model", help="Model name (see build_model)."),
        bits: int = typer.Option(8, "--bits", help="Weight bits."),
        act_bits: int = typer.Option(8, "--act-bits", help="Activation bits."),
        acc_bits: int = typer.Option(32, "--acc-bits", help="Accumulator width to check."),
        in_shape: str = typer.Option("1,28,28", "--in-shape", help="Input shape C,H,W."),
        num_classes: int = typer.Option(10, "--num-classes"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Accumulator width each layer needs, n_w + n_a + ⌈log2(c·k²)⌉, against a chosen width (warns if too narrow)."""
        import warnings

        from nncompress.architectures import build_model
        from nncompress.quantization import check_bits
        from nncompress.quantization.overflow import accumulator_report

        from nncompress.commands.common import check_int, check_model

        check_model(model), check_int(num_classes, "--num-classes", 1, 1_000_000)
        check_bits(bits, "--bits")
        check_bits(act_bits, "--act-bits")
        if not 2 <= acc_bits <= 64:
            raise UserError(f"--acc-bits {acc_bits} must be between 2 and 64")
        try:
            shape = tuple(int(v) for v in in_shape.split(","))
        except ValueError:
            raise UserError(f"--in-shape must look like 1,28,28; got {in_shape!r}") from None
        if len(shape) not in (1, 3) or min(shape) < 1:
            raise UserError(f"--in-shape must be positive sizes C,H,W (or F for an MLP), like 1,28,28; got {in_shape!r}")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            rows = accumulator_report(build_model(model, shape, num_classes), bits, act_bits, acc_bits)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title=f"{model}: {bits}-bit weights × {act_bits}-bit activations into a {acc_bits}-bit accumulator")
        for col in ("layer", "fan-in c·k²", "needed bits", "fits"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(r["layer"], f"{r['fan_in']:,}", str(r["needed_bits"]), "yes" if r["fits"] else "[red]NO[/red]")
        Console().print(table)
