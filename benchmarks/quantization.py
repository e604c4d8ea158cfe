"""Quantization side by side on mnist5k: fp32 vs our int8 dynamic, int8 static, 4-bit QAT (LSQ), fp16/bf16,
and torch.ao's own FX flow (static PTQ and 4-bit QAT) as the peer, on LeNet-5 and a small conv-BN-ReLU net.

All variants are timed in one run, interleaved call by call (the CPU is shared and noisy), at batch 32 with
2 intra-op threads (and 1 for reference); medians over repeats. Our static graph also runs as a QDQ ONNX model
(our scales) in ONNX Runtime. Writes benchmarks/results/quantization.json.
Targets (issue 3): int8 static ≤ 0.5 pp top-1 drop, 4× smaller weights, ≥ 2× lower latency than fp32;
4-bit QAT/LSQ ≤ 1 pp drop and at least as accurate as the peer.

    .venv/bin/python benchmarks/quantization.py [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import sys
import time
import warnings

import torch
from torch import nn

from bench_common import environment, target, write_results
from nncompress.analysis import measure_interleaved_ms
from nncompress.architectures import LeNet5
from nncompress.core import seed_everything
from nncompress.data import load_dataset, make_loaders
from nncompress.quantization import (
    compare_with_simulation,
    convert_qat,
    cpu_has_vnni,
    float_weight_bytes,
    prepare_qat,
    quantize_dynamic,
    quantize_static,
    quantized_weight_bytes,
    to_int8_kernels,
    to_reduced_precision,
    train_qat,
)
from nncompress.quantization.onnx_qdq import (
    OnnxRuntimeModel,
    to_onnx_float,
    to_onnx_qdq,
)
from nncompress.quantization.overflow import accumulator_report, simulate_accumulator
from nncompress.training import TrainConfig, evaluate, train


@contextlib.contextmanager
def quiet_torch_ao():
    """The peer (torch.ao's FX flow) prints deprecation notices; silence them around the peer's own calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*(deprecated|torch\.ao|quantiz).*")
        yield


THREADS, BATCH = 2, 32
THREAD_COUNTS = (2, 1)


class SmallConvNet(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64 channels) → global average pool → linear: BN folding matters."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(in_shape[0], 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64),
                                      nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def peer_static(model, calib_batches, example):
    """torch.ao FX post-training static quantization with its default x86 qconfig (HistogramObserver)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with quiet_torch_ao():
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for x in calib_batches:
                prepared(x)
        return convert_fx(prepared)


def peer_qat(model, loader, example, weight_bits, epochs, lr):
    """torch.ao FX QAT: default x86 QAT qconfig with weights restricted to `weight_bits` (per channel)."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
        get_default_qat_qconfig,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    qmax = 2 ** (weight_bits - 1) - 1
    base = get_default_qat_qconfig("x86")
    wfq = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-qmax - 1, quant_max=qmax,
                                 dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    mapping = QConfigMapping().set_global(QConfig(activation=base.activation, weight=wfq))
    with quiet_torch_ao():
        prepared = prepare_qat_fx(copy.deepcopy(model).train(), mapping, (example,))
        train(prepared, loader, TrainConfig(epochs=epochs, lr=lr, seed=0, progress=False))
        return convert_fx(prepared.eval())


def interleaved_latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, threads: int, warmup: int = 5) -> dict[str, float]:
    """Median ms per model, timing one call of each model in turn (analysis.measure_interleaved_ms) so load
    spikes hit all of them alike; ONNX bytes run in an ONNX Runtime session with the same thread count."""
    torch.set_num_threads(threads)  # warm up at the measured thread count too
    models = {k: (OnnxRuntimeModel(m, threads) if isinstance(m, bytes) else m) for k, m in models.items()}
    for m in models.values():
        m.eval()
    with torch.no_grad(), quiet_torch_ao():
        for m in models.values():
            for _ in range(warmup):
                m(x)
        runs = measure_interleaved_ms([lambda m=m: m(x) for m in models.values()], warmup=0, repeats=repeats, threads=threads)
    torch.set_num_threads(1)
    return {k: r.median_ms for k, r in zip(models, runs)}


def run_model(name, factory, ds, epochs, qat_epochs, repeats, qat_lr):
    seed_everything(0)
    model = factory(ds.input_shape, ds.num_classes)
    train_loader, test_loader = make_loaders(ds, batch_size=64, seed=0)
    t0 = time.time()
    train(model, train_loader, TrainConfig(epochs=epochs, lr=0.05, seed=0, progress=False))
    model.eval()
    calib = [x for x, _ in list(train_loader)[:8]]
    example = ds.x_test[:BATCH]
    reduce_range = not cpu_has_vnni()  # fbgemm/x86 int16 pair sums saturate on AVX2 otherwise (torch.ao does the same)
    row = {"model": name, "train_s": round(time.time() - t0, 1), "fp32_top1": evaluate(model, test_loader),
           "fp32_bytes": float_weight_bytes(model), "reduce_range": reduce_range, "variants": {}}
    runnable = {"fp32": model}

    def add(key, sim, real, extra=None):
        v = {"top1": evaluate(real, test_loader)}
        if sim is not None:
            v["sim_top1"] = evaluate(sim, test_loader)
            v["bytes"] = quantized_weight_bytes(sim)["total"]
            v["size_ratio"] = row["fp32_bytes"] / v["bytes"]
            cmp = compare_with_simulation(sim, real, ds.x_test[:512])
            v["kernel_vs_sim_max_abs_error"], v["kernel_vs_sim_steps"] = cmp["max_abs_error"], cmp["error_in_steps"]
        v["top1_drop_pp"] = row["fp32_top1"] - v["top1"]
        v.update(extra or {})
        row["variants"][key] = v
        runnable[key] = real

    t = time.time()
    dyn = quantize_dynamic(model, example, reduce_range=reduce_range)
    add("ours_int8_dynamic", dyn, to_int8_kernels(dyn), {"time_s": round(time.time() - t, 1)})
    for cal in ("minmax", "percentile", "mse", "entropy"):
        t = time.time()
        st = quantize_static(model, calib, calibration=cal, num_batches=8, reduce_range=reduce_range)
        key = "ours_int8_static" if cal == "minmax" else f"ours_int8_static_{cal}"
        add(key, st, to_int8_kernels(st), {"calibration": cal, "time_s": round(time.time() - t, 1)})
        if key != "ours_int8_static":
            runnable.pop(key)  # same kernels as minmax: time only one static variant
    t = time.time()  # ONNX Runtime: full 8-bit activations; u8 weights avoid its AVX2 u8·s8 int16 saturation
    st8 = quantize_static(model, calib, calibration="minmax", num_batches=8)
    onnx_bytes = to_onnx_qdq(st8, example)
    add("ours_int8_static_onnxruntime", st8, OnnxRuntimeModel(onnx_bytes, THREADS), {"time_s": round(time.time() - t, 1),
                                                                                     "onnx_bytes": len(onnx_bytes)})
    runnable["ours_int8_static_onnxruntime"] = onnx_bytes
    fp32_onnx = to_onnx_float(model, example)  # the same runtime in fp32: the fair baseline for the ONNX path
    add("fp32_onnxruntime", None, OnnxRuntimeModel(fp32_onnx, THREADS), {"size_ratio": 1.0})
    runnable["fp32_onnxruntime"] = fp32_onnx
    t = time.time()
    peer = peer_static(model, calib, example)
    add("peer_torch_ao_int8_static", None, peer, {"time_s": round(time.time() - t, 1)})
    for dtype in ("fp16", "bf16"):
        red = to_reduced_precision(model, dtype)
        add(dtype, None, red, {"bytes": float_weight_bytes(model) // 2, "size_ratio": 2.0})
    t = time.time()
    qat = prepare_qat(model, calib[0], weight_bits=4, method="lsq", reduce_range=reduce_range)
    train_qat(qat, train_loader, epochs=qat_epochs, lr=qat_lr, progress=False)
    qat = convert_qat(qat)
    add("ours_w4a8_qat_lsq", qat, to_int8_kernels(qat), {"epochs": qat_epochs, "lr": qat_lr, "time_s": round(time.time() - t, 1)})
    t = time.time()
    pq = peer_qat(model, train_loader, example, 4, qat_epochs, qat_lr)
    add("peer_torch_ao_w4a8_qat", None, pq, {"epochs": qat_epochs, "lr": qat_lr, "time_s": round(time.time() - t, 1)})

    for threads in THREAD_COUNTS:
        lat = interleaved_latency(runnable, example, repeats, threads)
        suffix = "" if threads == THREADS else f"_{threads}t"
        for k, ms in lat.items():
            target = row if k == "fp32" else row["variants"][k]
            target[f"latency_ms{suffix}"] = ms
            if k != "fp32":
                target[f"speedup{suffix}"] = lat["fp32"] / ms
        v = row["variants"]["ours_int8_static_onnxruntime"]
        v[f"speedup_vs_onnxruntime_fp32{suffix}"] = lat["fp32_onnxruntime"] / lat["ours_int8_static_onnxruntime"]
        fastest = min(("fp32", "fp32_onnxruntime"), key=lat.get)  # the best fp32 runtime a user already has
        row[f"fastest_fp32{suffix}"] = "pytorch" if fastest == "fp32" else "onnxruntime"
        for k, ms in lat.items():
            if k != "fp32":
                row["variants"][k][f"speedup_vs_fastest_fp32{suffix}"] = lat[fastest] / ms
    row["accumulators"] = accumulator_report(model, acc_bits=32)
    if name == "lenet5":  # what a 16-bit accumulator would do to conv2 (needs 25 bits) on real activations
        with torch.no_grad():
            h = torch.max_pool2d(model.conv1(ds.x_test[:8]), 2)
        row["int16_accumulator_conv2"] = [simulate_accumulator(model.conv2, a, acc_bits=16, mode=mode)
                                          for a, mode in ((h, "wrap"), (h, "saturate"), (torch.relu(h), "pairs16"))]
    return row


def print_table(rows):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for row in rows:
        t = Table(title=f"{row['model']} on mnist5k — fp32 top-1 {row['fp32_top1']:.2f}%, {row['latency_ms']:.2f} ms "
                        f"(batch {BATCH}, {THREADS} threads, median)")
        for col in ("variant", "top-1 %", "Δ pp", "size ×", "ms 2t", "× best fp32 2t", "ms 1t", "× best fp32 1t", "kernel−sim err (steps)"):
            t.add_column(col, justify="right", overflow="fold")
        fmt = lambda v, k, f: format(v[k], f) if k in v else "–"
        for k, v in row["variants"].items():
            t.add_row(k, f"{v['top1']:.2f}", f"{-v['top1_drop_pp']:+.2f}", fmt(v, "size_ratio", ".2f"), fmt(v, "latency_ms", ".2f"),
                      fmt(v, "speedup_vs_fastest_fp32", ".2f"), fmt(v, "latency_ms_1t", ".2f"),
                      fmt(v, "speedup_vs_fastest_fp32_1t", ".2f"),
                      f"{v['kernel_vs_sim_max_abs_error']:.2g} ({v['kernel_vs_sim_steps']:.2f})" if "kernel_vs_sim_steps" in v else "–")
        console.print(t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 epoch each and fewer repeats (smoke run)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=0.005)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.qat_epochs, args.repeats = 1, 1, 10
    warnings.filterwarnings("ignore", category=UserWarning, module=r"nncompress\.quantization\..*")
    torch.set_num_threads(1)
    t0 = time.time()
    ds = load_dataset("mnist5k")
    rows = [run_model(name, factory, ds, args.epochs, args.qat_epochs, args.repeats, args.qat_lr)
            for name, factory in (("lenet5", LeNet5), ("small_convnet", SmallConvNet))]
    print_table(rows)
    out = {"targets": targets(rows), "environment": environment(list(THREAD_COUNTS)),
           "dataset": "mnist5k", "batch": BATCH, "threads": THREADS, "thread_counts": THREAD_COUNTS,
           "repeats": args.repeats, "epochs": args.epochs, "qat_epochs": args.qat_epochs,
           "engine": "x86", "cpu_vnni": cpu_has_vnni(), "torch": torch.__version__, "python": platform.python_version(),
           "note": "shared, noisy 2-core machine: latencies interleaved, medians", "wall_s": round(time.time() - t0, 1),
           "models": rows}
    if args.quick:  # a smoke run never replaces the recorded figures
        print("quick run: results not written", file=sys.stderr)
    else:
        write_results("quantization", out)


def targets(rows: list[dict]) -> list[dict]:
    """Issue 3's targets, each from this run; speed-ups against the fastest fp32 runtime measured beside them."""
    out = []
    for row in rows:
        m, v = row["model"], row["variants"]
        ort = v["ours_int8_static_onnxruntime"]
        out += [target(f"{m} int8 static top-1 drop", "<= 0.5 pp", v["ours_int8_static"]["top1_drop_pp"],
                       v["ours_int8_static"]["top1_drop_pp"] <= 0.5),
                target(f"{m} int8 static weight bytes", ">= 3.9x smaller (int8 weights, fp32 biases)", v["ours_int8_static"]["size_ratio"],
                       v["ours_int8_static"]["size_ratio"] >= 3.9),
                target(f"{m} entropy calibration vs min-max", "within 0.5 pp", v["ours_int8_static_entropy"]["top1"] - v["ours_int8_static"]["top1"],
                       abs(v["ours_int8_static_entropy"]["top1"] - v["ours_int8_static"]["top1"]) <= 0.5)]
        for threads in THREAD_COUNTS:
            suffix = "" if threads == THREADS else f"_{threads}t"
            sp = ort[f"speedup_vs_fastest_fp32{suffix}"]
            out.append(target(f"{m} int8 (ONNX Runtime) vs fastest fp32 ({row[f'fastest_fp32{suffix}']}), batch {BATCH}, {threads} thread",
                              ">= 2x", sp, sp >= 2.0))
        qat, peer = v["ours_w4a8_qat_lsq"], v["peer_torch_ao_w4a8_qat"]
        out += [target(f"{m} 4-bit LSQ QAT top-1 drop", "<= 1 pp", qat["top1_drop_pp"], qat["top1_drop_pp"] <= 1.0),
                target(f"{m} 4-bit LSQ QAT vs peer (torch.ao 4-bit QAT)", ">= peer top-1", qat["top1"] - peer["top1"], qat["top1"] >= peer["top1"])]
    return out


if __name__ == "__main__":
    main()
