"""int8 engines side by side on this CPU (issue 14): ONNX Runtime (QDQ in three integer formats, and its dynamic
int8), our eager int8 modules on torch._int_mm (static lowering and dynamic module swap), and torchao's dynamic
int8 — against fp32 in torch and in ONNX Runtime (static int8 both from the fx graph and by module swap), on LeNet-5, the conv-BN net and a 6-block 384→1536→384 FFN stack.

Every engine's output is checked against the fake-quant simulation (ours) or the float model (torchao, ORT's
own dynamic quantizer pick their own scales) before it is timed; latencies are medians over interleaved repeats
(`measure_interleaved_ms`), one model call after another, at the thread counts given.

    python benchmarks/quant_engines.py            # full run (~3–5 min, 1 thread), writes results/quant_engines.json
    python benchmarks/quant_engines.py --quick    # smoke run (small FFN, few repeats), writes nothing
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings

import torch
from torch import nn

from bench_common import environment, target, write_results
from nncompress.analysis import measure_interleaved_ms
from nncompress.architectures import LeNet5
from nncompress.core import seed_everything
from nncompress.quantization import (DynamicInt8Config, StaticInt8Config, compare_with_simulation, cpu_has_vnni, quantize_,
                                     quantize_static, to_int8_kernels, to_torchao)
from nncompress.quantization.onnx_qdq import QDQ_FORMATS, OnnxRuntimeModel, default_qdq_format, to_onnx_float, to_onnx_qdq

from quantization import SmallConvNet  # noqa: E402  the conv-BN net of benchmarks/quantization.py


class FFNStack(nn.Sequential):
    """Transformer-style feed-forward blocks without attention: Linear(d, 4d) → ReLU → Linear(4d, d) → ReLU, ×blocks."""

    def __init__(self, d: int = 384, blocks: int = 6):
        layers = []
        for _ in range(blocks):
            layers += [nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d), nn.ReLU()]
        super().__init__(*layers)


def ort_dynamic(model: nn.Module, x: torch.Tensor, threads: int) -> OnnxRuntimeModel:
    """ONNX Runtime's own dynamic int8 (DynamicQuantizeLinear + MatMulInteger, int8 weights) of the float export."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        src.write_bytes(to_onnx_float(model, x))
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return OnnxRuntimeModel(onnx.load(str(dst)).SerializeToString(), threads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def run_model(name: str, model: nn.Module, x: torch.Tensor, calib: list[torch.Tensor], threads: int, repeats: int) -> dict:
    model.eval()
    engines: dict[str, nn.Module] = {"torch_fp32": model, "ort_fp32": OnnxRuntimeModel(to_onnx_float(model, x), threads)}
    static = quantize_static(model, calib, num_batches=len(calib), reduce_range=not cpu_has_vnni())
    checks: dict[str, dict] = {}
    for fmt in QDQ_FORMATS:
        engines[f"ort_qdq_{fmt}"] = OnnxRuntimeModel(to_onnx_qdq(static, x, qdq_format=fmt), threads)
    engines["ours_torch_static"] = to_int8_kernels(static)
    swap_static = quantize_(copy.deepcopy(model), StaticInt8Config(reduce_range=not cpu_has_vnni()), calib_data=calib,
                            num_batches=len(calib))
    engines["ours_torch_static_swap"] = swap_static
    engines["ort_dynamic"] = ort_dynamic(model, x, threads)
    engines["ours_torch_dynamic_swap"] = quantize_(copy.deepcopy(model), DynamicInt8Config())
    try:
        engines["torchao_dynamic"] = to_torchao(model, "dynamic")
    except Exception as e:  # noqa: BLE001 - the benchmark states what failed instead of dropping the peer silently
        checks["torchao_dynamic"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    with torch.no_grad():
        ref = model(x)
        for k, m in engines.items():
            if k.startswith("ort_qdq") or k == "ours_torch_static":
                c = compare_with_simulation(static, m, x)
                checks[k] = {"error_in_steps": c["error_in_steps"], "top1_agreement": c["top1_agreement"]}
            else:
                checks[k] = {"rel_error_vs_fp32": rel_err(m(x), ref)}
    torch.set_num_threads(threads)
    with torch.no_grad():
        for m in engines.values():
            for _ in range(3):
                m(x)
        runs = measure_interleaved_ms([lambda m=m: m(x) for m in engines.values()], warmup=1, repeats=repeats, threads=threads)
    lat = {k: r.median_ms for k, r in zip(engines, runs)}
    print(f"{name} ({threads} thread, input {list(x.shape)}): " + ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()), file=sys.stderr)
    return {"model": name, "input_shape": list(x.shape), "threads": threads, "latency_ms": lat, "checks": checks,
            "fastest_qdq_format": min(QDQ_FORMATS, key=lambda f: lat[f"ort_qdq_{f}"])}


def targets(rows: list[dict]) -> list[dict]:
    out = []
    chosen = default_qdq_format()
    for r in rows:
        m, lat, t = r["model"], r["latency_ms"], r["threads"]
        best = min(lat[f"ort_qdq_{f}"] for f in QDQ_FORMATS)
        out.append(target(f"{m}: default QDQ format ({chosen}) within 10% of the fastest measured format, {t} thread",
                          "<= 1.10x the fastest", lat[f"ort_qdq_{chosen}"] / best, lat[f"ort_qdq_{chosen}"] <= 1.10 * best))
        sp = lat["ort_fp32"] / lat[f"ort_qdq_{chosen}"]
        out.append(target(f"{m}: ONNX Runtime int8 QDQ ({chosen}) vs ONNX Runtime fp32, {t} thread", ">= 1x", sp, sp >= 1.0))
        steps = max(c["error_in_steps"] for k, c in r["checks"].items() if "error_in_steps" in c)
        out.append(target(f"{m}: every static int8 engine vs the fake-quant simulation, {t} thread", "<= 1.001 output steps (one step; float rounding)", steps,
                          steps <= 1.001))
        if m.startswith("ffn"):
            sp = lat["ort_fp32"] / lat["ort_dynamic"]
            out.append(target(f"{m}: ONNX Runtime dynamic int8 vs ONNX Runtime fp32, {t} thread", ">= 2x (3.1x measured in issue 14)",
                              sp, sp >= 2.0))
            sp = lat["torch_fp32"] / lat["ours_torch_dynamic_swap"]
            out.append(target(f"{m}: our dynamic int8 (torch._int_mm) vs torch fp32, {t} thread", ">= 2x", sp, sp >= 2.0))
            if "torchao_dynamic" in lat:
                ratio = lat["torchao_dynamic"] / lat["ours_torch_dynamic_swap"]
                out.append(target(f"{m}: our dynamic int8 vs torchao dynamic int8 (peer), {t} thread", ">= 1x (peer time / ours)",
                                  ratio, ratio >= 1.0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small FFN (256 tokens), few repeats; writes nothing")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    tokens, repeats = (256, 5) if args.quick else (4096, args.repeats)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"nncompress\.quantization\..*")
    t0 = time.time()
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    img = [torch.randn(32, 1, 28, 28, generator=g) for _ in range(4)]
    tok = [torch.randn(tokens, 384, generator=g) for _ in range(2)]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        nets = (("lenet5", LeNet5, img), ("conv_bn_net", SmallConvNet, img), (f"ffn_6x384x1536_{tokens}tok", FFNStack, tok))
        for name, factory, calib in nets:
            seed_everything(0)
            model = factory()
            if name == "conv_bn_net":  # non-trivial BN statistics so folding matters
                model.train()
                with torch.no_grad():
                    for b in calib:
                        model(b)
            reps = max(repeats // 3, 5) if name.startswith("ffn") and not args.quick else repeats  # ~0.1–1 s a call
            rows.append(run_model(name, model.eval(), calib[0], calib, threads, reps))
    out = {"targets": targets(rows), "environment": environment(args.threads), "repeats": repeats,
           "default_qdq_format": default_qdq_format(), "cpu_vnni": cpu_has_vnni(),
           "note": "latencies: medians over interleaved repeats; untrained weights (latency and kernel agreement only; "
                   "accuracy is benchmarks/quantization.py's job)", "wall_s": round(time.time() - t0, 1), "models": rows}
    if args.quick:
        print("quick run: results not written", file=sys.stderr)
        for t in out["targets"]:
            print(f"  {'✓' if t['met'] else '✗'} {t['name']}: {t['measured']} ({t['target']})", file=sys.stderr)
    else:
        write_results("quant_engines", out)


if __name__ == "__main__":
    main()
