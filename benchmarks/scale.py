"""Deep Compression at ImageNet scale: VGG16 and AlexNet through prune → share → encode → save → load, timed and sized.

Issue 16: the pipeline must stream (no second copy of the model) and the .nnc file must sit close to the
entropy of its streams. Each model runs in a fresh subprocess (so its peak RSS is its own), on 1 thread:

  prune   `pruning.level_prune_inplace` with the paper's per-layer keep rates (Han, Mao & Dally 2016,
          Table 4 for AlexNet, Table 5 for VGG16; "Weights%" = weights kept)
  share   `sharing.share_weights_inplace`, 8-bit conv / 5-bit fc codebooks (the paper's), linear init
  encode  `export.nnc.save_compressed` minus the time spent in file writes (histogram gap width per layer,
          Huffman or rANS per stream)
  save    the file writes, fsync and rename of that same streamed save
  load    `export.nnc.load_into`: decode layer by layer into the model's own tensors (zeroed first), then
          every tensor is checked bit-exact against a CRC-32 taken after sharing

Peak RSS is the process's `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the kernel's high-water mark of
resident memory, model construction included), compared with the model's fp32 bytes.

The models are the zoo's seeded initialisation (torch.manual_seed(0), PyTorch default init: kaiming-uniform
weights), not trained ImageNet weights: the values are uniform-like, so the codebook index streams have
higher entropy than trained, peaked weight distributions, and the file is somewhat larger than the paper's
for the same sparsity and bit widths. The "before" figures are the ones reported in issue 16 for the code
before this change (not re-measured here).

    python benchmarks/scale.py            # both models, writes benchmarks/results/scale.json (~2-3 min, quiet machine)
    python benchmarks/scale.py --quick    # a 4x smaller FC head, no JSON written (~30 s)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAPER_KEEP = {
    # Deep Compression Table 4 (AlexNet): weights kept per layer, in definition order
    "alexnet": [0.84, 0.38, 0.35, 0.37, 0.37, 0.09, 0.09, 0.25],
    # Deep Compression Table 5 (VGG16): conv1_1 .. conv5_3, fc6, fc7, fc8
    "vgg16": [0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36, 0.04, 0.04, 0.23],
}
PAPER_BYTES = {"alexnet": 6.9e6, "vgg16": 11.3e6}  # the paper's MB are 10^6 bytes (VGG16 552 MB = 138 M x 4 B)
PAPER_RATIO = {"alexnet": 35, "vgg16": 49}
BEFORE = {  # issue 16, measured on the code before this change (VGG16, 1 thread)
    "vgg16": {"prune_s": 68.0, "share_s": 22.0, "encode_s": 43.0, "save_s": 3.0, "load_decode_s": 9.0, "total_s": 145.0,
              "peak_rss_bytes": 4.9e9, "peak_rss_over_fp32": 8.9, "file_bytes": 12.4e6, "ratio": 44.6,
              "source": "issue 16 text (not re-measured)"},
}
MAX_TOTAL_S = 60.0
MAX_RSS_OVER_FP32 = 2.5
MAX_OVER_PAPER = 1.1
MAX_OVER_ENTROPY = 1.02


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _state_crc(model) -> dict[str, int]:
    return {k: zlib.crc32(v.detach().contiguous().view(-1).numpy().view("uint8")) for k, v in model.state_dict().items()}


def run_one(name: str, quick: bool, seed: int = 0) -> dict:
    """One model, all stages, in this process; returns the measurements."""
    import torch

    torch.set_num_threads(1)
    from nncompress.architectures.vgg_alexnet import AlexNet, vgg16
    from nncompress.core.layers import compressible_layers
    from nncompress.export.nnc import load_into, save_compressed
    from nncompress.pruning.pruners import level_prune_inplace
    from nncompress.sharing.shared_weight import share_weights_inplace

    rss_import = _rss_now_bytes()
    torch.manual_seed(seed)
    hidden = 1024 if quick else None  # quick: a 4x narrower FC head, same convs and rates
    model = (vgg16 if name == "vgg16" else AlexNet)((3, 224, 224), 1000, hidden=hidden).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fp32_bytes = sum(v.numel() * 4 for v in model.state_dict().values())
    params = sum(p.numel() for p in model.parameters())
    rss_model = _rss_now_bytes()
    layers = list(compressible_layers(model))
    sparsity = {n: round(1.0 - k, 6) for n, k in zip(layers, PAPER_KEEP[name], strict=True)}
    times, cpu = {}, {}

    t, c = time.perf_counter(), time.process_time()
    kept = level_prune_inplace(model, sparsity)
    times["prune_s"], cpu["prune_s"] = time.perf_counter() - t, time.process_time() - c
    peaks = {"prune": _peak_rss_bytes()}

    t, c = time.perf_counter(), time.process_time()
    codebooks = share_weights_inplace(model, {"conv": 8, "linear": 5})
    times["share_s"], cpu["share_s"] = time.perf_counter() - t, time.process_time() - c
    peaks["share"] = _peak_rss_bytes()
    reference = _state_crc(model)

    meta = {"model": name, "in_shape": [3, 224, 224], "num_classes": 1000, "pipeline": "benchmarks/scale.py"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.nnc"
        t, c = time.perf_counter(), time.process_time()
        saved = save_compressed(model, path, meta, codebooks=codebooks)
        total_save, cpu_save = time.perf_counter() - t, time.process_time() - c
        times["save_s"] = cpu["save_s"] = saved["write_s"]
        times["encode_s"], cpu["encode_s"] = total_save - saved["write_s"], cpu_save - saved["write_s"]
        peaks["encode_save"] = _peak_rss_bytes()

        with torch.no_grad():
            for v in model.state_dict().values():
                v.zero_()
        t, c = time.perf_counter(), time.process_time()
        load_into(model, path)
        times["load_decode_s"], cpu["load_decode_s"] = time.perf_counter() - t, time.process_time() - c
        restored = _state_crc(model) == reference
        peak = peaks["load_decode"] = _peak_rss_bytes()  # before the untimed comparison encode below
        huffman_only = save_compressed(model, Path(tmp) / "huffman.nnc", meta, codebooks=codebooks, coder="huffman")["bytes"]
    for d in (times, cpu):
        d["total_s"] = sum(d[k] for k in ("prune_s", "share_s", "encode_s", "save_s", "load_decode_s"))
    streams = saved["streams"]
    entropy_bits = sum(s.entropy_bits for s in streams)
    table_bits = sum(s.table_bits for s in streams)
    coded_bits = sum(s.total_bits for s in streams)
    nnz = sum(kept.values())
    return {
        "model": name, "quick": quick, "params": params, "fp32_bytes": fp32_bytes,
        "init": f"zoo default init (PyTorch kaiming-uniform), torch.manual_seed({seed}); not trained weights",
        "keep_rates": dict(zip(layers, PAPER_KEEP[name], strict=True)), "kept_fraction": nnz / sum(
            dict(model.named_modules())[n].weight.numel() for n in layers),
        "times": {k: round(v, 3) for k, v in times.items()},
        "cpu_times": {k: round(v, 3) for k, v in cpu.items()},  # process CPU seconds: what a busy machine cannot inflate
        "rss": {"after_import_bytes": rss_import, "after_model_bytes": rss_model, "peak_bytes": peak,
                "peak_after_stage_bytes": peaks,
                "peak_over_fp32": peak / fp32_bytes, "method": "resource.getrusage(RUSAGE_SELF).ru_maxrss, own subprocess"},
        "file_bytes": saved["bytes"], "ratio": fp32_bytes / saved["bytes"], "huffman_only_bytes": huffman_only,
        "paper_bytes": PAPER_BYTES[name], "over_paper": saved["bytes"] / PAPER_BYTES[name], "paper_ratio": PAPER_RATIO[name],
        "sizes": saved["sizes"], "gap_bits": saved["gap_bits"],
        "streams": {"entropy_bits": entropy_bits, "table_bits": table_bits, "coded_bits": coded_bits,
                    "coded_over_entropy_plus_tables": coded_bits / (entropy_bits + table_bits),
                    "coders": {c: sum(1 for s in streams if s.coder == c) for c in ("huffman", "rans")},
                    "per_stream": [{"tensor": s.tensor, "stream": s.stream, "coder": s.coder, "n_symbols": s.n_symbols,
                                    "entropy_bits": round(s.entropy_bits, 1), "coded_bits": s.coded_bits, "table_bits": s.table_bits}
                                   for s in streams]},
        "round_trip_bit_exact": restored,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4x narrower FC heads; prints, writes no JSON")
    ap.add_argument("--models", default="vgg16,alexnet")
    ap.add_argument("--out", help="results path (default benchmarks/results/scale.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, args.quick)))
        return
    os.environ.setdefault("NNCOMPRESS_PROGRESS", "0")
    rows = {}
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--child", name] + (["--quick"] if args.quick else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"scale.py: {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows[name] = json.loads(line[-1][len("RESULT "):])
        r = rows[name]
        if not r["round_trip_bit_exact"]:
            sys.exit(f"scale.py: {name}: the loaded model differs from the saved one")
        tm = r["times"]
        print(f"{name}{' (quick)' if args.quick else ''}: {r['params'] / 1e6:.1f} M params, kept {100 * r['kept_fraction']:.2f} %; "
              f"prune {tm['prune_s']:.1f} s, share {tm['share_s']:.1f} s, encode {tm['encode_s']:.1f} s, save {tm['save_s']:.2f} s, "
              f"load+decode {tm['load_decode_s']:.1f} s = {tm['total_s']:.1f} s wall ({r['cpu_times']['total_s']:.1f} s CPU); peak RSS {r['rss']['peak_bytes'] / 1e9:.2f} GB "
              f"({r['rss']['peak_over_fp32']:.2f}x fp32); file {r['file_bytes'] / 1e6:.2f} MB ({r['ratio']:.1f}x; paper "
              f"{r['paper_bytes'] / 1e6:.1f} MB), Huffman only {r['huffman_only_bytes'] / 1e6:.2f} MB; coded / (entropy + tables) "
              f"{r['streams']['coded_over_entropy_plus_tables']:.4f}; coders {r['streams']['coders']}")
    if args.quick:
        print("--quick: no results written")
        return
    from bench_common import environment, target, write_results

    targets = []
    for name, r in rows.items():
        label = "VGG16" if name == "vgg16" else "AlexNet"
        targets.append(target(f"{label} prune+share+encode+save+load, 1 thread", f"<= {MAX_TOTAL_S:.0f} s", r["times"]["total_s"],
                              r["times"]["total_s"] <= MAX_TOTAL_S))
        if name == "vgg16":  # the issue's memory target is VGG16's; AlexNet's 244 MB is below the ~280 MB torch import itself
            targets.append(target(f"{label} peak RSS / fp32 bytes", f"<= {MAX_RSS_OVER_FP32}", r["rss"]["peak_over_fp32"],
                                  r["rss"]["peak_over_fp32"] <= MAX_RSS_OVER_FP32))
        bound = round(MAX_OVER_PAPER * r["paper_bytes"])
        targets.append(target(f"{label} .nnc bytes", f"<= {bound} B ({MAX_OVER_PAPER} x the paper's {r['paper_bytes'] / 1e6} MB)",
                              r["file_bytes"], r["file_bytes"] <= bound))
        ratio = r["streams"]["coded_over_entropy_plus_tables"]
        targets.append(target(f"{label} coded streams / (empirical entropy + tables)", f"<= {MAX_OVER_ENTROPY}", ratio,
                              ratio <= MAX_OVER_ENTROPY))
    busy = [n for n, r in rows.items() if r["times"]["total_s"] > 1.3 * r["cpu_times"]["total_s"]]
    if busy:
        print(f"warning: wall time well above CPU time for {busy}: the machine was busy; rerun on a quiet machine")
    payload = {"environment": environment(1), "targets": targets, "before": BEFORE, "models": rows,
               "notes": ["peak RSS: resource.getrusage ru_maxrss of a fresh subprocess per model (model construction included); "
                         "the RSS target is VGG16's (issue 16): for AlexNet (244 MB fp32) the Python + torch import alone "
                         "(rss.after_import_bytes, ~280 MB) exceeds the model, so its ratio is reported, not targeted",
                         "encode = save_compressed time minus its file writes; save = the writes, fsync and rename",
                         "targets use wall-clock seconds; cpu_times (process CPU seconds) are recorded beside them",
                         "weights: seeded default init, not trained ImageNet weights (see each model's 'init')"]}
    print(f"wrote {write_results('scale', payload, args.out)}")


if __name__ == "__main__":
    main()
