"""One call from a trained float model to a quantized, measured one: what `nncompress quantize` runs.

Quantizes (dynamic, static or QAT), runs the result on a real int8 engine where the bit widths allow — `torch`
(our eager modules on torch._int_mm), `onnxruntime` (QDQ with our scales) or `torchao` (its own dynamic int8) —
and reports bytes, top-1 and median CPU latency before and after, and the engine's max |error| against the simulation.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from nncompress.analysis.latency import measure_latency_ms
from nncompress.core.errors import UserError
from nncompress.core.guards import check_accuracy_kept
from nncompress.core.io import atomic_write_bytes, save_weights
from nncompress.data import Dataset, make_loaders
from nncompress.quantization.backends import BACKENDS, compare_with_simulation, cpu_has_vnni, to_int8_kernels, to_torchao
from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer, weight_codes
from nncompress.quantization.adaround import AdaRoundConfig
from nncompress.quantization.graph import QuantLayer
from nncompress.quantization.ladder import ptq_ladder
from nncompress.quantization.onnx_qdq import OnnxRuntimeModel, to_onnx_qdq
from nncompress.quantization.measure import float_weight_bytes, quantized_weight_bytes
from nncompress.quantization.ptq import first_batch, quantize_dynamic, quantize_static
from nncompress.quantization.qat import DEFAULT_QAT_LR, quantize_qat
from nncompress.quantization.sqnr import layer_sqnr, worst_layers_text
from nncompress.training import evaluate

CLI_MODES = ("dynamic", "static", "qat")
MAX_DROP_PP = 5.0  # a quantized top-1 further below fp32 is an error (issue 12) unless allow_drop


def quantize_and_measure(model: nn.Module, ds: Dataset, mode: str = "static", bits: int = 8, act_bits: int = 8,
                         granularity: str = "channel", calibration: str = "minmax", calib_batches: int = 8,
                         epochs: int = 2, lr: float = DEFAULT_QAT_LR, qat_method: str = "lsq", keep_first_last: bool = False,
                         backend: str = "torch", reduce_range: bool | None = None, batch_size: int = 32, threads: int = 2,
                         repeats: int = 20, seed: int = 0, onnx_path: str | os.PathLike | None = None,
                         allow_drop: bool = False, max_drop_pp: float = MAX_DROP_PP, cle: bool = False,
                         bias_correction: str | None = None, adaround: bool = False,
                         adaround_steps: int = 1000) -> tuple[nn.Module, dict]:
    """Quantize `model` on `ds` and measure it; returns (simulated quantized graph, report dict).
    With `onnx_path` (static/qat), also write the QDQ ONNX model and measure it in ONNX Runtime.

    A quantized top-1 more than `max_drop_pp` below fp32 (issue 12: entropy calibration once took a conv-BN net
    from 93 % to 12 %) raises DivergenceError naming the worst layers by SQNR on a calibration batch, before any
    file is written; `allow_drop=True` makes it a RuntimeWarning and records it in the report.

    cle / bias_correction ("empirical", "analytic", None) / adaround (`adaround_steps` per layer): static mode
    through `ptq_ladder` instead of plain `quantize_static`, so the DFQ/AdaRound rungs are one flag away (issue 14);
    `report["ptq_ladder"]` lists the rungs that ran, what each touched, and plain static top-1 beside the ladder's
    (the rungs' effect). The accuracy guard judges the ladder's result like any other."""
    if mode not in CLI_MODES:
        raise UserError(f"unknown mode '{mode}': use one of {', '.join(CLI_MODES)}")
    bias_correction = None if bias_correction in (None, "none") else bias_correction
    ladder = bool(cle or bias_correction or adaround)
    check_ladder_options(mode, bias_correction, adaround, adaround_steps, cle)
    check_backend(backend, mode)
    if reduce_range is None:  # x86 int8 GEMMs without VNNI sum u8·s8 pairs in int16 and saturate with 8-bit activations
        reduce_range = backend == "torch" and not cpu_has_vnni()
    train_loader, test_loader = make_loaders(ds, batch_size=64, seed=seed)
    model.eval()
    if ladder:
        gm = ptq_ladder(model, train_loader, bits, act_bits, granularity, calibration, calib_batches, cle=cle,
                        bias_correction=bias_correction, adaround=adaround, keep_first_last=keep_first_last,
                        adaround_config=AdaRoundConfig(iters=adaround_steps, seed=seed), reduce_range=reduce_range)
    elif mode == "static":
        gm = quantize_static(model, train_loader, bits, granularity, calibration, calib_batches, act_bits,
                             keep_first_last, reduce_range=reduce_range)
    elif mode == "dynamic":
        gm = quantize_dynamic(model, ds.x_train[:batch_size], bits, granularity, keep_first_last, reduce_range=reduce_range)
    else:
        gm = quantize_qat(model, train_loader, bits, act_bits, epochs, lr, granularity, qat_method, keep_first_last,
                          reduce_range, seed)
    x = ds.x_test[:batch_size]
    report = {
        "mode": mode, "bits": bits, "act_bits": act_bits, "granularity": granularity,
        "calibration": calibration if mode == "static" else None, "reduce_range": reduce_range,
        "quantized_layers": list(gm.quant_layers), "skipped_layers": dict(gm.quant_skipped),
        "fp32_bytes": float_weight_bytes(model), "quantized_bytes": quantized_weight_bytes(gm)["total"],
        "fp32_top1": evaluate(model, test_loader), "quantized_top1": evaluate(gm, test_loader),
        "threads": threads, "batch_size": batch_size, "backend": backend,
    }
    report["size_ratio"] = report["fp32_bytes"] / report["quantized_bytes"]
    if ladder:
        plain = quantize_static(model, train_loader, bits, granularity, calibration, calib_batches, act_bits, keep_first_last,
                                reduce_range=reduce_range)
        report["ptq_ladder"] = ladder_summary(gm.ptq_ladder_report, cle, bias_correction, adaround, evaluate(plain, test_loader),
                                              report["quantized_top1"])
    _check_drop(gm, report, report["fp32_top1"], report["quantized_top1"], ds, first_batch(train_loader), allow_drop, max_drop_pp)
    report["fp32_latency_ms"] = measure_latency_ms(model, x, warmup=5, repeats=repeats, threads=threads).median_ms
    kernels_ok = bits <= 8 and act_bits == 8
    if kernels_ok:
        real = _engine(model, gm, backend, mode, x, threads)
        report["int8_engine"] = backend
        report["int8_top1"] = evaluate(real, test_loader)
        report["int8_latency_ms"] = measure_latency_ms(real, x, warmup=5, repeats=repeats, threads=threads).median_ms
        report["speedup"] = report["fp32_latency_ms"] / report["int8_latency_ms"]
        report.update({f"kernel_{k}": v for k, v in compare_with_simulation(gm, real, ds.x_test[:256]).items()})
        if "accuracy_warning" not in report:  # the int8 kernels can lose what the simulation kept (overflow)
            _check_drop(gm, report, report["fp32_top1"], report["int8_top1"], ds, first_batch(train_loader), allow_drop,
                        max_drop_pp, what="int8 kernels")
    else:
        report["int8_note"] = f"no int8 kernels for {bits}-bit weights / {act_bits}-bit activations: simulated only"
    if onnx_path is not None:
        if mode == "dynamic" or not kernels_ok:
            raise UserError("--onnx needs --mode static or qat with at most 8-bit weights and 8-bit activations")
        data = to_onnx_qdq(gm, x)
        atomic_write_bytes(onnx_path, data)
        ort_model = OnnxRuntimeModel(data, threads)
        report["onnx_path"], report["onnx_bytes"] = str(onnx_path), len(data)
        report["onnx_top1"] = evaluate(ort_model, test_loader)
        report["onnx_latency_ms"] = measure_latency_ms(ort_model, x, warmup=5, repeats=repeats, threads=threads).median_ms
        report.update({f"onnx_{k}": v for k, v in compare_with_simulation(gm, ort_model, ds.x_test[:256]).items()})
    return gm, report


def check_backend(backend: str, mode: str) -> None:
    """Refuse an engine that cannot run the mode, before any data loads."""
    if backend not in BACKENDS:
        raise UserError(f"--backend: unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "torchao" and mode != "dynamic":
        raise UserError(f"--backend torchao runs torchao's dynamic int8 (Int8DynamicActivationInt8WeightConfig) only: use --mode "
                        f"dynamic, or --backend torch / onnxruntime for {mode}")


def _engine(model: nn.Module, gm: nn.Module, backend: str, mode: str, x: torch.Tensor, threads: int) -> nn.Module:
    """The quantized model on a real int8 engine."""
    if backend == "torch":
        return to_int8_kernels(gm)
    if backend == "torchao":
        return to_torchao(model, "dynamic")
    return OnnxRuntimeModel(to_onnx_qdq(gm, x), threads)


def check_ladder_options(mode: str, bias_correction: str | None, adaround: bool, adaround_steps: int,
                         cle: bool = False) -> None:
    """Refuse ladder combinations that cannot mean anything, before any data loads: every rung works on the static
    graph (weights and calibrated activation ranges), so dynamic and QAT modes have nothing for it to fix."""
    from nncompress.quantization.ladder import BIAS_CORRECTIONS

    if bias_correction not in BIAS_CORRECTIONS and bias_correction != "none":
        raise UserError(f"--bias-correction: unknown bias correction '{bias_correction}': use none, empirical or analytic")
    used = [name for name, on in (("--cle", cle), ("--bias-correction", bias_correction not in (None, "none")),
                                  ("--adaround", adaround)) if on]
    if used and mode != "static":
        raise UserError(f"{' and '.join(used)} need{'s' if len(used) == 1 else ''} --mode static: the PTQ ladder corrects a static graph "
                        f"({mode} {'has no calibrated activations' if mode == 'dynamic' else 'trains its own quantizers'})")
    if isinstance(adaround_steps, bool) or not isinstance(adaround_steps, int) or not 1 <= adaround_steps <= 100_000:
        raise UserError(f"--adaround-steps {adaround_steps!r} must be a whole number from 1 to 100000")


def ladder_summary(raw: dict, cle: bool, bias_correction: str | None, adaround: bool, static_top1: float,
                   ladder_top1: float) -> dict:
    """`ptq_ladder_report` as JSON-ready data: the rungs that ran in order, what each touched, and the ladder's top-1
    against plain static quantization with the same bits, granularity and calibration (the rungs' net effect)."""
    steps, idle = ["fold_bn"], {}  # idle: rungs asked for that changed nothing, and why (a report must not claim them)
    if cle and raw["equalized_pairs"]:
        steps += ["cross_layer_equalization"] + (["high_bias_absorption"] if raw["absorbed"] else [])
    elif cle:
        idle["cross_layer_equalization"] = "no equalizable layer pairs (conv/linear → ReLU → conv/linear)"
    steps.append("calibrate")
    if adaround:
        steps.append("adaround")
    if bias_correction and raw["bias_corrected"]:
        steps.append(f"bias_correction_{bias_correction}")
    elif bias_correction:
        idle[f"bias_correction_{bias_correction}"] = ("no BatchNorm statistics before any layer (the data-free correction needs them)"
                                                      if bias_correction == "analytic" else "no layer corrected")
    return {
        "steps": steps, "not_applied": idle,
        "equalized_pairs": [list(p) for p in raw["equalized_pairs"]],
        "absorbed": list(raw["absorbed"]),
        "adaround_error": {k: {"nearest": float(a), "adaround": float(b)} for k, (a, b) in raw["adaround"].items()},
        "bias_corrected": list(raw["bias_corrected"]),
        "static_top1": static_top1, "ladder_top1": ladder_top1, "gain_pp": ladder_top1 - static_top1,
    }


def _check_drop(gm: nn.Module, report: dict, fp32: float, quantized: float, ds: Dataset, calib: torch.Tensor,
                allow_drop: bool, max_drop_pp: float, what: str = "quantization") -> None:
    """Stop (or, with allow_drop, warn) when `quantized` top-1 is more than `max_drop_pp` below fp32, naming the worst layers."""
    if fp32 - quantized <= max_drop_pp:
        return
    sqnr = layer_sqnr(gm, calib)
    report["layer_sqnr_db"] = sqnr
    cfg = getattr(gm, "quant_config", None)
    how = f"{cfg.mode}, {cfg.calibration} calibration" if cfg is not None and cfg.mode == "static" else (cfg.mode if cfg else "")
    other = [c for c in ("minmax", "mse") if cfg is None or c != cfg.calibration]
    hint = (f"worst layers by SQNR on a calibration batch: {worst_layers_text(sqnr)}; try "
            + (f"--calibration {' or '.join(other)}, " if cfg is not None and cfg.mode == "static" else "")
            + "--keep-first-last, or more --bits / --act-bits")
    report["accuracy_warning"] = check_accuracy_kept(fp32, quantized, ds.num_classes, f"{what} ({how})", hint,
                                                     allow_drop=allow_drop, max_drop_pp=max_drop_pp)


def quantized_state_dict(gm: nn.Module) -> dict[str, torch.Tensor]:
    """Deployable tensors: integer weight codes, their scales, float biases, activation scales/zero points."""
    out: dict[str, torch.Tensor] = {}
    for name, m in gm.named_modules():
        if isinstance(m, QuantLayer) and m.weight_quant is not None:
            w, b = m.folded()
            w = w.detach()
            codes, s = weight_codes(m.weight_quant, w)
            dtype = torch.int8 if m.weight_quant.bits <= 8 else torch.int16
            out[f"{name}.weight_codes"] = codes.to(dtype)
            out[f"{name}.weight_scale"] = torch.as_tensor(s, dtype=torch.float32).reshape(-1)
            if b is not None:
                out[f"{name}.bias"] = b.detach().float()
        elif isinstance(m, (FakeQuantize, LSQQuantizer)) and not getattr(m, "dynamic", False) and "." not in name:
            s, z = m.qparams()
            out[f"{name}.scale"] = torch.as_tensor(s, dtype=torch.float32).reshape(-1)
            out[f"{name}.zero_point"] = torch.as_tensor(z, dtype=torch.int32).reshape(-1)
    return out


def save_quantized(gm: nn.Module, path: str | os.PathLike) -> None:
    """Write `quantized_state_dict` as safetensors (atomically), with the config in the metadata. A model quantized
    by module swap (`quantize_`) is written whole by `persist.save_quantized_model` (reload with `load_quantized`)."""
    cfg = getattr(gm, "quant_config", None)
    if cfg is None:
        from nncompress.quantization.persist import save_quantized_model

        save_quantized_model(gm, path)
        return
    save_weights(quantized_state_dict(gm), path, metadata={"mode": cfg.mode, "weight_bits": str(cfg.weight_bits),
                                                           "act_bits": str(cfg.act_bits), "granularity": cfg.granularity})
