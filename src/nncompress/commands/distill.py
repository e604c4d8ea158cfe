"""`nncompress distill` and `nncompress factorize`: thin commands over `nncompress.distillation.distill`
and `nncompress.lowrank.factorize` (+ `nncompress.training.train` for fine-tuning)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def _pairs(specs: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        student, sep, teacher = spec.partition(":")
        if not sep or not student or not teacher:
            raise UserError(f"{flag} expects STUDENT_LAYER:TEACHER_LAYER (e.g. conv2:conv2), got '{spec}'")
        pairs.append((student, teacher))
    return pairs


def _model(name: str, ds, weights: Path | None, pretrain_epochs: int, lr: float, seed: int):
    """Build `name`, load `weights` (plain or factorized safetensors) or, without them, train it briefly."""
    from nncompress.architectures import build_model
    from nncompress.core import seed_everything
    from nncompress.data import make_loaders
    from nncompress.lowrank import load_factorized
    from nncompress.training import TrainConfig, train

    seed_everything(seed)
    net = build_model(name, ds.input_shape, ds.num_classes)
    if weights is not None:
        return load_factorized(net, weights), False
    if pretrain_epochs > 0:
        train(net, make_loaders(ds, seed=seed)[0], TrainConfig(epochs=pretrain_epochs, lr=lr, seed=seed))
    return net, True


def _emit(result: dict, as_json: bool, out_json: Path | None, lines: list[str]) -> None:
    from nncompress.core.io import atomic_write_text

    text = json.dumps(result, indent=2)
    if out_json is not None:
        atomic_write_text(out_json, text + "\n")
    typer.echo(text if as_json else "\n".join(lines))


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_cmd(
        teacher: list[str] = typer.Option(..., "--teacher", help="Teacher model name; repeat for several teachers."),
        student: str = typer.Option(..., "--student", help="Student model name (e.g. mlp, lenet300)."),
        teacher_weights: list[Path] = typer.Option([], "--teacher-weights", help="Teacher .safetensors, one per --teacher, in order; without them each teacher is first trained for --teacher-epochs."),
        mix: list[float] = typer.Option([], "--mix", help="Weight of each teacher's soft targets (default: equal)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        epochs: int = typer.Option(10, "--epochs", help="Distillation epochs."),
        teacher_epochs: int = typer.Option(5, "--teacher-epochs", help="Epochs to train a teacher given without weights."),
        lr: float = typer.Option(0.01, "--lr", help="Learning rate (SGD, cosine schedule)."),
        temperature: float = typer.Option(4.0, "--temperature", "-T", help="Softmax temperature T (soft loss scaled by T²)."),
        alpha: float = typer.Option(0.9, "--alpha", help="Weight of the soft-target loss; the hard-label loss gets 1 − α."),
        at: list[str] = typer.Option([], "--at", help="Attention transfer between STUDENT_LAYER:TEACHER_LAYER feature maps."),
        hint: list[str] = typer.Option([], "--hint", help="FitNets hint STUDENT_LAYER:TEACHER_LAYER (a regressor is learned)."),
        rkd: list[str] = typer.Option([], "--rkd", help="Relational KD (distance + angle) on STUDENT_LAYER:TEACHER_LAYER outputs."),
        baseline: bool = typer.Option(False, "--baseline", help="Also train the student alone (same seed and epochs) and report the gain."),
        seed: int = typer.Option(0, "--seed"),
        out: Path | None = typer.Option(None, "--out", help="Write the distilled student's weights (.safetensors, atomically)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        out_json: Path | None = typer.Option(None, "--out-json", help="Also write the result JSON to this file."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep a student that ended at chance accuracy (a warning instead of an error)."),
    ) -> None:
        """Distil one or more teachers into a student (Hinton KD, optionally with AT, hints and RKD)."""
        from nncompress.core.guards import check_accuracy_kept
        from nncompress.data import load_dataset, make_loaders
        from nncompress.distillation import distill
        from nncompress.lowrank import save_factorized
        from nncompress.training import TrainConfig, evaluate, train

        if teacher_weights and len(teacher_weights) != len(teacher):
            raise UserError(f"give one --teacher-weights per --teacher ({len(teacher)}), got {len(teacher_weights)}")
        if mix and len(mix) != len(teacher):
            raise UserError(f"give one --mix weight per --teacher ({len(teacher)}), got {len(mix)}")
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        from nncompress.commands.common import (check_data, check_float, check_in_file, check_int, check_lr, check_model,
                                                check_out_file, check_seed)

        for name in teacher:
            check_model(name, "--teacher")
        check_model(student, "--student"), check_data(data), check_seed(seed), check_lr(lr)
        for path in teacher_weights:
            check_in_file(path, "--teacher-weights", "weights file")
        for w in mix:
            check_float(w, "--mix", 0.0)
        if mix and not sum(mix) > 0:
            raise UserError(f"--mix weights must not all be 0, got {mix}")
        check_int(epochs, "--epochs", 1, 100_000), check_int(teacher_epochs, "--teacher-epochs", 0, 100_000)
        if not teacher_weights:
            check_int(teacher_epochs, "--teacher-epochs (no --teacher-weights given)", 1, 100_000)
        check_float(temperature, "--temperature", 0.0, 1000.0, lo_open=True), check_float(alpha, "--alpha", 0.0, 1.0)
        check_out_file(out), check_out_file(out_json, "--out-json")  # before any teacher trains
        pairs = {"attention": _pairs(at, "--at"), "hints": _pairs(hint, "--hint"), "rkd": _pairs(rkd, "--rkd")}
        ds = load_dataset(data)
        train_loader, test_loader = make_loaders(ds, seed=seed)
        teachers, result = [], {"data": data, "student": student, "teachers": []}
        for i, name in enumerate(teacher):
            net, trained_here = _model(name, ds, teacher_weights[i] if teacher_weights else None, teacher_epochs, lr, seed + i)
            teachers.append(net)
            result["teachers"].append({"name": name, "top1": evaluate(net, test_loader), "trained_here": trained_here})
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
        net, _ = _model(student, ds, None, 0, lr, seed)
        history = distill(net, teachers, train_loader, cfg, temperature=temperature, alpha=alpha,
                          teacher_weights=mix or None, val_loader=test_loader, **pairs)
        result.update(temperature=temperature, alpha=alpha, epochs=epochs, student_top1=evaluate(net, test_loader),
                      history=history)
        check_accuracy_kept(max(t["top1"] for t in result["teachers"]), result["student_top1"], ds.num_classes,
                            f"distillation into {student} ({epochs} epochs at --lr {lr:g}, T={temperature:g})",
                            "lower --lr or --temperature, or check the teachers", allow_drop=allow_drop)
        lines = [f"teacher {t['name']}: top-1 {t['top1']:.2f}%" for t in result["teachers"]]
        lines.append(f"distilled {student}: top-1 {result['student_top1']:.2f}% (T={temperature}, α={alpha}, {epochs} epochs)")
        if baseline:
            alone, _ = _model(student, ds, None, 0, lr, seed)
            train(alone, train_loader, TrainConfig(epochs=epochs, lr=lr, seed=seed))
            result["baseline_top1"] = evaluate(alone, test_loader)
            result["gain_pp"] = result["student_top1"] - result["baseline_top1"]
            lines.append(f"{student} trained alone: top-1 {result['baseline_top1']:.2f}% (gain {result['gain_pp']:+.2f} pp)")
        if out is not None:
            save_factorized(net, out)
            result["out"] = str(out)
            lines.append(f"wrote {out}")
        _emit(result, as_json, out_json, lines)

    @app.command("factorize")
    def factorize_cmd(
        model: str = typer.Option(..., "--model", help="Model name (lenet300, lenet5, ...)."),
        method: str = typer.Option("svd", "--method", help="svd (Linear layers), tucker, cp or separable (k×k Conv2d layers)."),
        energy: float | None = typer.Option(None, "--energy", help="Keep this fraction of Σs² per layer (e.g. 0.9)."),
        ratio: float | None = typer.Option(None, "--ratio", help="Shrink each layer's parameters (or MACs with --macs) by this factor."),
        macs: bool = typer.Option(False, "--macs", help="--ratio counts MACs instead of parameters."),
        vbmf: bool = typer.Option(False, "--vbmf", help="Ranks by empirical variational Bayes (EVBMF)."),
        layers: str | None = typer.Option(None, "--layers", help="Comma-separated layer names (default: all candidates)."),
        weights: Path | None = typer.Option(None, "--weights", help="Trained weights (.safetensors); without them the model is first trained for --pretrain-epochs."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        pretrain_epochs: int = typer.Option(5, "--pretrain-epochs"),
        finetune_epochs: int = typer.Option(3, "--finetune-epochs", help="Fine-tuning epochs after factorizing (0: none)."),
        lr: float = typer.Option(0.01, "--lr"),
        seed: int = typer.Option(0, "--seed"),
        out: Path | None = typer.Option(None, "--out", help="Write the factorized weights (.safetensors with the structure in its metadata)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        out_json: Path | None = typer.Option(None, "--out-json", help="Also write the result JSON to this file."),
        allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep a result that fell to chance accuracy (a warning instead of an error)."),
    ) -> None:
        """Factorize layers (SVD, Tucker-2, CP, spatially separable), report per-layer ranks, sizes and reconstruction error, fine-tune."""
        from nncompress.data import load_dataset, make_loaders
        from nncompress.core.guards import check_accuracy_kept
        from nncompress.lowrank import METHODS, factorize, save_factorized
        from nncompress.training import TrainConfig, evaluate, train

        if method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
        if sum(x is not None for x in (energy, ratio)) + vbmf != 1:
            raise UserError("choose exactly one rank rule: --energy, --ratio or --vbmf")
        from nncompress.commands.common import (check_data, check_float, check_in_file, check_int, check_lr, check_model,
                                                check_out_file, check_seed)

        check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_seed(seed)
        check_float(energy, "--energy", 0.0, 1.0, lo_open=True), check_float(ratio, "--ratio", 1.0, lo_open=True)
        check_int(pretrain_epochs, "--pretrain-epochs", 0, 100_000), check_int(finetune_epochs, "--finetune-epochs", 0, 100_000)
        check_lr(lr), check_out_file(out), check_out_file(out_json, "--out-json")
        ds = load_dataset(data)
        train_loader, test_loader = make_loaders(ds, seed=seed)
        net, trained_here = _model(model, ds, weights, pretrain_epochs, lr, seed)
        top1_dense = evaluate(net, test_loader)
        report = factorize(net, method, energy=energy, ratio=ratio, vbmf=vbmf,
                           layers=[s.strip() for s in layers.split(",") if s.strip()] if layers else None,
                           example_input=ds.x_train[:1], ratio_of="macs" if macs else "params", seed=seed)
        result = {"model": model, "data": data, "trained_here": trained_here, "top1_dense": top1_dense,
                  "top1_factorized": evaluate(net, test_loader), **report.to_dict()}
        if finetune_epochs > 0:
            train(net, train_loader, TrainConfig(epochs=finetune_epochs, lr=lr, seed=seed))
            result["top1_finetuned"] = evaluate(net, test_loader)
        check_accuracy_kept(top1_dense, result.get("top1_finetuned", result["top1_factorized"]), ds.num_classes,
                            f"{method} factorization" + (f" + {finetune_epochs} fine-tuning epochs at --lr {lr:g}" if finetune_epochs > 0 else ""),
                            "lower --lr or keep more rank (--energy closer to 1, a smaller --ratio)", allow_drop=allow_drop)
        lines = [f"{lf.name}: {'x'.join(map(str, lf.shape))} → ranks {lf.ranks}, params {lf.params_before} → {lf.params_after}"
                 + (f", MACs {lf.macs_before} → {lf.macs_after}" if lf.macs_before is not None else "")
                 + (f", rel. error {lf.rel_error:.3f}" if lf.rel_error is not None else "")
                 + (f" (skipped: {lf.skipped})" if lf.skipped else "") for lf in report.layers]
        mac = f", MACs {report.mac_ratio:.2f}× fewer" if report.mac_ratio else ""
        lines.append(f"{method}: parameters {report.param_ratio:.2f}× fewer in these layers{mac}; "
                     f"top-1 {top1_dense:.2f}% → {result['top1_factorized']:.2f}%"
                     + (f" → {result['top1_finetuned']:.2f}% after {finetune_epochs} fine-tuning epochs" if finetune_epochs > 0 else ""))
        if out is not None:
            save_factorized(net, out)
            result["out"] = str(out)
            lines.append(f"wrote {out}")
        _emit(result, as_json, out_json, lines)
