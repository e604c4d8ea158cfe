"""Runtimes side by side: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (QDQ), on a compressed
LeNet-5 (Deep Compression's per-layer levels, fine-tuned) and a VGG-style conv-BN-ReLU net, mnist5k.

All runtimes are timed in one run, interleaved call by call (the CPU is shared and noisy): medians over
repeats at batch 1 and batch 32, at 1 and 2 intra-op threads (PyTorch and ORT alike); speed-ups are against the
fastest fp32 runtime of the same run (PyTorch or ONNX Runtime, whichever wins). Top-1 is
measured in every runtime on the test split. Writes benchmarks/results/runtime.json.

    .venv/bin/python benchmarks/runtime.py [--repeats 50] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_common import environment, target, write_results

from nncompress.architectures import build_model
from nncompress.core import seed_everything
from nncompress.data import load_dataset, make_loaders
from nncompress.export.onnx import ort_session, to_onnx
from nncompress.pruning import LevelPruner, finalize
from nncompress.quantization import quantize_static
from nncompress.training import TrainConfig, train

THREAD_COUNTS = (1, 2)


def conv_net(num_classes: int = 10) -> torch.nn.Module:
    """conv-BN-ReLU ×4 with two max-pools, global average pool, linear (ops the QDQ exporter lowers)."""
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def _runners(net, fp32_onnx: bytes, int8_onnx: bytes, threads: int) -> dict:
    s32, s8 = ort_session(fp32_onnx, threads), ort_session(int8_onnx, threads)

    def torch_run(x):
        with torch.no_grad():
            return net(x).numpy()

    return {"pytorch_fp32": torch_run,
            "ort_fp32": lambda x: s32.run(None, {s32.get_inputs()[0].name: x.numpy()})[0],
            "ort_int8": lambda x: s8.run(None, {s8.get_inputs()[0].name: x.numpy()})[0]}


def bench(name: str, net, ds, repeats: int) -> dict:
    net.eval()
    train_loader, _ = make_loaders(ds, seed=0)
    calib = [x for x, _ in list(train_loader)[:8]]
    int8 = to_onnx(quantize_static(net, calib, bits=8), ds.x_test[:1])
    fp32 = to_onnx(net, ds.x_test[:1])
    runners = _runners(net, fp32, int8, 1)
    out = {"model": name, "onnx_bytes": {"fp32": len(fp32), "int8": len(int8)}, "top1": {}, "latency_ms": {},
           "fastest_fp32": {}, "speedup_vs_fastest_fp32": {}, "speedup_vs_pytorch": {}}
    for k, run in runners.items():
        out["top1"][k] = 100.0 * float((run(ds.x_test).argmax(1) == ds.y_test.numpy()).mean())
    for threads in THREAD_COUNTS:
        runners = _runners(net, fp32, int8, threads)
        for batch in (1, 32):
            x = ds.x_test[:batch]
            times = {k: [] for k in runners}
            torch.set_num_threads(threads)
            for k, run in runners.items():  # warm-up
                for _ in range(5):
                    run(x)
            for _ in range(repeats):  # interleaved: each round times every runtime once
                for k, run in runners.items():
                    t = time.perf_counter()
                    run(x)
                    times[k].append((time.perf_counter() - t) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            key = f"batch{batch}_{threads}thread"
            fastest = min(("pytorch_fp32", "ort_fp32"), key=med.get)  # the best fp32 runtime a user already has
            out["latency_ms"][key] = med
            out["fastest_fp32"][key] = fastest
            out["speedup_vs_fastest_fp32"][key] = {k: med[fastest] / v for k, v in med.items()}
            out["speedup_vs_pytorch"][key] = {k: med["pytorch_fp32"] / v for k, v in med.items()}
    torch.set_num_threads(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="fewer training epochs and repeats (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seed_everything(0)
    ds = load_dataset("mnist5k")
    train_loader, _ = make_loaders(ds, seed=0)
    epochs = 1 if args.quick else 4
    lenet = build_model("lenet5", ds.input_shape, ds.num_classes)
    train(lenet, train_loader, TrainConfig(epochs=epochs, lr=0.05, progress=False))
    LevelPruner({"conv1": 0.4, "conv2": 0.9, "fc1": 0.955, "fc2": 0.85}).prune(lenet)  # Deep Compression's LeNet-5 levels
    train(lenet, train_loader, TrainConfig(epochs=max(1, epochs // 2), lr=0.01, progress=False))
    finalize(lenet)
    conv = conv_net(ds.num_classes)
    train(conv, train_loader, TrainConfig(epochs=1, lr=0.05, progress=False))
    repeats = 10 if args.quick else args.repeats
    rows = [bench("lenet5_pruned", lenet, ds, repeats), bench("conv_bn_relu_net", conv, ds, repeats)]
    for r in rows:
        print(f"{r['model']}: top-1 " + ", ".join(f"{k} {v:.2f}%" for k, v in r["top1"].items()))
        for b, med in r["latency_ms"].items():
            print(f"  {b}: " + ", ".join(f"{k} {v:.3f} ms ({r['speedup_vs_fastest_fp32'][b][k]:.2f}× vs {r['fastest_fp32'][b]})"
                                         for k, v in med.items()))
    targets = []
    for r in rows:
        drop = r["top1"]["pytorch_fp32"] - r["top1"]["ort_int8"]
        targets.append(target(f"{r['model']} int8 top-1 drop", "<= 0.5 pp", drop, drop <= 0.5))
        for threads in THREAD_COUNTS:
            key = f"batch32_{threads}thread"
            sp = r["speedup_vs_fastest_fp32"][key]["ort_int8"]
            targets.append(target(f"{r['model']} ONNX Runtime int8 vs fastest fp32 ({r['fastest_fp32'][key]}), batch 32, {threads} thread",
                                  "> 1.0x", sp, sp > 1.0))
    out = {"dataset": "mnist5k", "thread_counts": list(THREAD_COUNTS), "repeats": repeats, "targets": targets,
           "environment": environment(list(THREAD_COUNTS)), "results": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    if args.quick:  # a smoke run never replaces the recorded figures
        print("quick run: results not written", flush=True)
    else:
        write_results("runtime", out)


if __name__ == "__main__":
    main()
