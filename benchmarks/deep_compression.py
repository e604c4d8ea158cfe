"""Benchmark: the Deep Compression pipeline on LeNet-300-100 and LeNet-5 (mnist5k), next to the paper.

Prints dense fp32 bytes, .nnc bytes, ratio and top-1 before/after for each model beside Han et al.'s
40× (LeNet-300-100) and 39× (LeNet-5), and writes benchmarks/results/deep_compression.json.
Targets (issue 16): ≥ 50× on LeNet-300-100 and ≥ 45× on LeNet-5, each at ≤ 0.5 pp top-1 drop on the test split;
the coded streams within 2 % of their empirical entropy plus coder tables (`encoding.stream_stats`: what the .nnc
writer stored, per stream, next to the stream's own entropy); the make-run-equivalent run (LeNet-300-100 with a
fresh baseline, exactly what `nncompress compress` does after install) ≤ 120 s wall. Per-layer sparsity and bits
come from the recipe's sensitivity allocation (recipes/allocation.py), reported per model.
Accuracy does not depend on machine load; wall time does (load average recorded beside it).

    python benchmarks/deep_compression.py [--threads 2] [--models lenet300,lenet5]   # ~1-2 min on a quiet 2-core machine
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import environment, target, write_results
from nncompress.encoding import load_nnc, stream_stats
from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression

TARGET_RATIO = {"lenet300": 50.0, "lenet5": 45.0}
MAX_DROP_PP = 0.5
MAX_ENTROPY_OVERHEAD = 0.02
MAX_MAKE_RUN_S = 120.0
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
            streams = stream_stats(load_nnc(r.nnc_path))
            coded_bytes = sum(st.total_bits for st in streams) / 8
            bound_bytes = sum(st.entropy_bits + st.table_bits for st in streams) / 8
            rows.append({"model": model, "paper": PAPER[model], "dense_bytes": dense.bytes, "nnc_bytes": final.bytes,
                         "ratio": dense.bytes / final.bytes, "top1_dense": dense.top1, "top1_compressed": final.top1,
                         "top1_drop_pp": dense.top1 - final.top1, "seconds": time.perf_counter() - t,
                         "cpu_seconds": time.process_time() - c,
                         "stages": [{"stage": s.stage, "bytes": s.bytes, "ratio": s.ratio, "top1": s.top1} for s in r.stages],
                         "layers": r.layers, "allocation": r.allocation, "val_top1": r.val_top1,
                         "streams_coded_bytes": coded_bytes, "streams_entropy_plus_tables_bytes": bound_bytes,
                         "entropy_overhead": coded_bytes / bound_bytes - 1 if bound_bytes else 0.0,
                         "coders": {f"{st.tensor}/{st.stream}": st.coder for st in streams},
                         "load_avg_1min_after": os.getloadavg()[0]})
    total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nDeep Compression on mnist5k ({args.threads} threads, torch {torch.__version__}, {platform.machine()})")
    print(f"{'model':<15}{'dense B':>11}{'.nnc B':>9}{'ratio':>8}{'paper':>7}{'top-1':>8}{'after':>8}{'drop pp':>9}{'time s':>8}")
    for r in rows:
        print(f"{r['paper']['name']:<15}{r['dense_bytes']:>11,}{r['nnc_bytes']:>9,}{r['ratio']:>7.1f}×{r['paper']['ratio']:>6.0f}×"
              f"{r['top1_dense']:>8.2f}{r['top1_compressed']:>8.2f}{r['top1_drop_pp']:>9.2f}{r['seconds']:>8.1f}")
    targets = []
    for r in rows:
        name = r["paper"]["name"]
        want = TARGET_RATIO[r["model"]]
        targets.append(target(f"{name} .nnc ratio", f">= {want:.0f}x (paper {r['paper']['ratio']:.0f}x)", r["ratio"], r["ratio"] >= want))
        # top-1 is a multiple of 100/n_test: 95.4 - 94.9 is 0.5000000000000142 in floats, which is 0.5 pp
        targets.append(target(f"{name} top-1 drop (test split)", f"<= {MAX_DROP_PP} pp", round(r["top1_drop_pp"], 9),
                              round(r["top1_drop_pp"], 9) <= MAX_DROP_PP))
        targets.append(target(f"{name} coded streams vs empirical entropy + tables", f"<= {100 * MAX_ENTROPY_OVERHEAD:.0f} % over",
                              r["entropy_overhead"], r["entropy_overhead"] <= MAX_ENTROPY_OVERHEAD))
    make_run = next((r for r in rows if r["model"] == "lenet300"), None)
    if make_run is not None:
        targets.append(target(f"make-run-equivalent wall time (LeNet-300-100, fresh baseline, {args.threads} threads; load-dependent)",
                              f"<= {MAX_MAKE_RUN_S:.0f} s",
                              make_run["seconds"], make_run["seconds"] <= MAX_MAKE_RUN_S))
    ok = all(t["met"] for t in targets)
    print(f"CPU time {cpu_total:.0f} s over {args.threads} threads (wall time depends on what else the machine runs)")
    for r in rows:
        print(f"{r['paper']['name']}: " + ", ".join(f"{x['layer']} {100 * x['sparsity']:.1f}%/{x['bits']}b" for x in r["layers"])
              + f"; streams {r['streams_coded_bytes']:.0f} B vs entropy+tables "
              f"{r['streams_entropy_plus_tables_bytes']:.0f} B ({100 * r['entropy_overhead']:+.2f} %)")
    print(f"total {total:.1f} s (load average {os.getloadavg()[0]:.1f}); targets: {'met' if ok else 'NOT met'}")
    result = {"targets": targets, "environment": environment(args.threads), "threads": args.threads,
              "note": "top-1 on mnist5k's 1,000-image test split (0.1 pp = one image); per-layer sparsity/bits chosen on a "
                      "validation split carved from the training split; wall time depends on machine load (load_avg_1min_after)",
              "total_seconds": total, "cpu_seconds": cpu_total, "targets_met": ok, "models": rows}
    write_results("deep_compression", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
