"""`run-recipe` (a YAML schedule of compression methods) and `export` (ONNX, checked in ONNX Runtime)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("run-recipe")
    def run_recipe_cmd(
        recipe: Path = typer.Argument(..., help="A recipe YAML file (see recipes/ for one per method)."),
        out: Path = typer.Option(Path("nncompress-run"), "--out", help="Directory for weights, result.json (and model.onnx)."),
        threads: int = typer.Option(1, "--threads", min=1),
        device: str | None = typer.Option(None, "--device", help="auto (this rank's GPU when CUDA is present, else cpu), cpu, cuda or cuda:N; default: the recipe's `device:`, else auto."),
        check: bool = typer.Option(False, "--check", help="Only validate the recipe; run nothing."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint in --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep a result that fell to chance accuracy (a warning instead of an error)."),
        model: str | None = typer.Option(None, "--model", help="Override the recipe's model: a zoo name, package.module:factory "
                                         "or path/to/file.py:factory."),
        weights: Path | None = typer.Option(None, "--weights", help="Override the recipe's weights: .safetensors or a weights-only .pt."),
    ) -> None:
        """Run a recipe: pruning, regularizers, QAT, distillation and sharing scheduled over one training run.

        Examples:
          nncompress run-recipe recipes/agp.yaml --out runs/agp
          nncompress run-recipe recipes/agp_qat_kd.yaml --check
          nncompress run-recipe recipes/agp.yaml --out runs/agp --resume   # after a crash or kill -9
        """
        from nncompress.commands.common import check_device, check_in_file, check_model, check_out_dir
        from nncompress.recipes.runner import run_recipe
        from nncompress.recipes.schema import load_recipe

        check_in_file(recipe, "RECIPE", "recipe file")
        if model is not None:
            check_model(model)
        check_in_file(weights, "--weights", "weights file")
        source = recipe
        if model is not None or weights is not None:
            import yaml

            load_recipe(recipe)  # the file's own checks (hostile YAML, fields with line numbers) before it is read again
            raw = yaml.safe_load(recipe.read_text())
            raw.update({k: str(v) for k, v in (("model", model), ("weights", weights)) if v is not None})
            source = raw
        if check:
            r = load_recipe(source)
            msg = {"recipe": str(recipe), "valid": True, "policies": [p.method for p in r.policies]}
            typer.echo(json.dumps(msg) if as_json else f"{recipe}: valid ({', '.join(msg['policies']) or 'no policies'})")
            return
        check_out_dir(out), check_device(device)  # a CLI default never overrides the recipe's own `device:`
        r = load_recipe(source)  # a bad field fails here, with its line number
        check_device(device or r.device, "--device" if device else f"{recipe}: device")
        result = run_recipe(source, out, threads=threads, resume=resume, device=device, allow_drop=allow_drop)
        from nncompress.training.distributed import is_main_process

        if not is_main_process():  # under torchrun only rank 0 reports
            return
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
            return
        typer.echo(f"{result.name}: top-1 {result.top1_pretrained:.2f}% → {result.top1_final:.2f}%, "
                   f"sparsity {100 * result.sparsity:.1f}% ({result.nonzero_params}/{result.params} weights), "
                   f"{result.seconds:.1f} s → {out}")

    @app.command("export")
    def export_cmd(
        model: str = typer.Option("lenet5", "--model", help="Zoo name (see `nncompress zoo list`), package.module:factory or path/to/file.py:factory."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz (shapes the input; calibrates --int8)."),
        weights: Path | None = typer.Option(None, "--weights", help="Float weights (masked or plain): .safetensors or a weights-only .pt."),
        out: Path = typer.Option(Path("model.onnx"), "--out"),
        int8: bool = typer.Option(False, "--int8", help="Static int8 quantization (calibrated on the train split), QDQ ONNX."),
        threads: int = typer.Option(1, "--threads", min=1),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Export to ONNX, validate with onnx.checker, run it in ONNX Runtime, compare with PyTorch, time it.

        Example: nncompress export --model lenet5 --data mnist5k --weights lenet5.safetensors --int8 --out lenet5.int8.onnx
        """
        from nncompress.export.onnx import export_report

        from nncompress.commands.common import check_data, check_in_file, check_model, check_out_file

        check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_out_file(out)
        report = export_report(model, data, weights, out, int8=int8, threads=threads)
        if as_json:
            typer.echo(json.dumps(report))
            return
        typer.echo(f"{out}: {report['onnx_bytes']} bytes, ORT vs PyTorch max |Δ| {report['max_abs_error']:.2e}, "
                   f"top-1 agreement {report['top1_agreement']:.1f}%, ORT top-1 {report['ort_top1']:.2f}%, "
                   f"ORT latency {report['ort_latency_ms']:.3f} ms (batch 1, {threads} thread{'s' if threads > 1 else ''})")

    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="A directory written by `nncompress run-recipe --out`."),
        html: Path | None = typer.Option(None, "--html", help="HTML file to write (default RUN_DIR/report.html)."),
        markdown: Path | None = typer.Option(None, "--markdown", help="Markdown file (default RUN_DIR/report.md)."),
        sensitivity: bool = typer.Option(False, "--sensitivity", help="Add per-layer pruning sensitivity curves (slower)."),
        threads: int = typer.Option(1, "--threads", min=1),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Write a self-contained HTML + Markdown report of a recipe run: stages and ratios, per-layer table,
        accuracy-vs-size plot, weight histograms before/after, history, sensitivity, environment.

        Example: nncompress report runs/agp --sensitivity
        """
        import torch

        from nncompress.report import report_run

        from nncompress.commands.common import check_out_file

        if not run_dir.is_dir():
            raise UserError(f"RUN_DIR {run_dir} is not a folder: pass the --out folder of a `nncompress run-recipe` run")
        check_out_file(html or run_dir / "report.html", "--html"), check_out_file(markdown or run_dir / "report.md", "--markdown")
        torch.set_num_threads(threads)
        report = report_run(run_dir, html, markdown, sensitivity=sensitivity)
        from nncompress.training.distributed import is_main_process

        if not is_main_process():
            return
        paths = [str(html or run_dir / "report.html"), str(markdown or run_dir / "report.md")]
        if as_json:
            typer.echo(json.dumps({"files": paths, "stages": report.stages, "summary": report.summary,
                                   "sensitivity": report.sensitivity}))
            return
        typer.echo(f"{report.title}: {report.summary['compression']} → {paths[0]}, {paths[1]}")
