"""Benchmark: the Deep Compression pipeline on LeNet-300-100 and LeNet-5 (mnist5k), next to the paper.

Prints dense fp32 bytes, .nnc bytes, ratio and top-1 before/after for each model beside Han et al.'s
40× (LeNet-300-100) and 39× (LeNet-5), and writes benchmarks/results/deep_compression.json.
Targets: ratio ≥ paper, top-1 drop ≤ 0.5 pp, whole run < 10 min on 2 CPU cores.

    python benchmarks/deep_compression.py [--threads 2] [--models lenet300,lenet5]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import environment, target, write_results
from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression

PAPER = {  # Han, Mao & Dally 2016, Table 1 (MNIST, full 60k training set)
    "lenet300": {"name": "LeNet-300-100", "dense_kb": 1070, "compressed_kb": 27, "ratio": 40.0},
    "lenet5": {"name": "LeNet-5", "dense_kb": 1720, "compressed_kb": 44, "ratio": 39.0},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "deep_compression.json"))
    args = ap.parse_args()
    rows, t0, c0 = [], time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            t, c = time.perf_counter(), time.process_time()
            cfg = DeepCompressionConfig(model=model, data="mnist5k", out_dir=f"{tmp}/{model}", threads=args.threads,
                                        cache_dir=f"{tmp}/cache", progress=False)  # fresh baseline: the timing includes training
            r = run_deep_compression(cfg, log=lambda msg: print(f"  [{model}] {msg}", file=sys.stderr))
            dense, final = r.stages[0], r.stages[-1]
            rows.append({"model": model, "paper": PAPER[model], "dense_bytes": dense.bytes, "nnc_bytes": final.bytes,
                         "ratio": dense.bytes / final.bytes, "top1_dense": dense.top1, "top1_compressed": final.top1,
                         "top1_drop_pp": dense.top1 - final.top1, "seconds": time.perf_counter() - t,
                         "cpu_seconds": time.process_time() - c,
                         "stages": [{"stage": s.stage, "bytes": s.bytes, "ratio": s.ratio, "top1": s.top1} for s in r.stages],
                         "layers": r.layers})
    total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nDeep Compression on mnist5k ({args.threads} threads, torch {torch.__version__}, {platform.machine()})")
    print(f"{'model':<15}{'dense B':>11}{'.nnc B':>9}{'ratio':>8}{'paper':>7}{'top-1':>8}{'after':>8}{'drop pp':>9}{'time s':>8}")
    for r in rows:
        print(f"{r['paper']['name']:<15}{r['dense_bytes']:>11,}{r['nnc_bytes']:>9,}{r['ratio']:>7.1f}×{r['paper']['ratio']:>6.0f}×"
              f"{r['top1_dense']:>8.2f}{r['top1_compressed']:>8.2f}{r['top1_drop_pp']:>9.2f}{r['seconds']:>8.1f}")
    targets = []
    for r in rows:
        name = r["paper"]["name"]
        targets.append(target(f"{name} .nnc ratio", f">= {r['paper']['ratio']:.0f}x (paper)", r["ratio"], r["ratio"] >= r["paper"]["ratio"]))
        targets.append(target(f"{name} top-1 drop", "<= 0.5 pp", r["top1_drop_pp"], r["top1_drop_pp"] <= 0.5))
    targets.append(target("whole run wall time", "< 600 s on 2 cores", total, total < 600))
    ok = all(t["met"] for t in targets)
    print(f"CPU time {cpu_total:.0f} s over {args.threads} threads (wall time depends on what else the machine runs)")
    print(f"total {total:.1f} s; targets (ratio ≥ paper, drop ≤ 0.5 pp, < 600 s): {'met' if ok else 'NOT met'}")
    result = {"targets": targets, "environment": environment(args.threads), "threads": args.threads,
              "total_seconds": total, "cpu_seconds": cpu_total, "targets_met": ok, "models": rows}
    write_results("deep_compression", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
