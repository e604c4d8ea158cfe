"""int8 ONNX of a swap-quantized BERT against ONNX Runtime fp32 (issues 13/14): a 6-layer, 384-wide BertModel built
from config (12 heads, FFN 1536), batch 32 × 128 tokens, 1 thread.

Engines, timed round-robin (`measure_interleaved_ms`, medians over interleaved repeats):
  pytorch_fp32          the float model in PyTorch
  ort_fp32              the float model exported by `export.onnx.to_onnx`, in ONNX Runtime (all graph optimizations)
  ort_int8_per_token    `quantize_(DynamicInt8Config())` → `to_onnx_int8` (our per-token int8 activations written as
                        ONNX ops → MatMulInteger with our weight codes): the same integers as our eager modules
  ort_int8_per_tensor   the same model, `dynamic_activations="per_tensor"`: DynamicQuantizeLinear → MatMulInteger,
                        which ORT fuses into its DynamicQuantizeMatMul kernel
  eager_int8            our eager modules on torch._int_mm (no ONNX)
Every engine's output (last_hidden_state) is compared with PyTorch fp32 by cosine before it is timed.

Why-figures, measured in the same run: the plain GEMMs at the layer shapes (4096 tokens × 384→384, 384→1536,
1536→384) as ORT fp32 MatMul vs ORT DynamicQuantizeLinear+MatMulInteger, and an ORT profile of each session
(time by op type), so a speed-up below the target shows where the time goes (attention matmuls, softmax, GELU,
LayerNorm stay fp32 in every engine).

    python benchmarks/onnx_int8.py            # full run (~3–6 min, 1 thread), writes results/onnx_int8.json
    python benchmarks/onnx_int8.py --quick    # smoke run (batch 4 × 32 tokens, 3 repeats; ~30 s), writes nothing
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench_common import environment, target, write_results
from nncompress.analysis import measure_interleaved_ms
from nncompress.core import seed_everything

MIN_SPEEDUP, MIN_COSINE = 2.0, 0.99
SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (K, N) of the attention projections, FFN up, FFN down


class LastHidden(nn.Module):
    """BertModel → last_hidden_state, so every engine returns the same one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def build_bert(seed: int = 0) -> nn.Module:
    import transformers as T

    seed_everything(seed)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    return LastHidden(T.BertModel(cfg, add_pooling_layer=False)).eval()


def _session(blob: bytes, threads: int, profile_dir: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(profile_dir) / "p")
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def ort_profile_ms(blob: bytes, feed: dict, threads: int, runs: int = 3) -> dict[str, float]:
    """Milliseconds per run by ONNX Runtime op type (after its graph optimizations), from its own profiler."""
    with tempfile.TemporaryDirectory() as d:
        sess = _session(blob, threads, d)
        sess.run(None, feed)  # warm-up, excluded below by taking the last `runs` runs only
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    t0 = per_run[-runs]["ts"] if len(per_run) >= runs else 0
    by_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= t0:
            by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / runs
    return dict(sorted(((k, round(v, 2)) for k, v in by_op.items()), key=lambda kv: -kv[1]))


def gemm_shapes_ms(tokens: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """ORT fp32 MatMul vs ORT dynamic int8 (DynamicQuantizeLinear → MatMulInteger → ×scale) at the BERT layer shapes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out = {}
    for k, n in SHAPES:
        x = rng.standard_normal((tokens, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32) * 0.05
        codes = np.clip(np.round(w / (np.abs(w).max(0) / 127)), -127, 127).astype(np.int8)
        inp = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])]
        outp = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])]
        f32 = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "f", inp, outp, [numpy_helper.from_array(w, "w")])
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                 helper.make_node("MatMulInteger", ["q", "w", "z"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["s", "ws"], ["sc"]), helper.make_node("Mul", ["accf", "sc"], ["y"])]
        i8 = helper.make_graph(nodes, "q", inp, outp, [numpy_helper.from_array(codes, "w"),
                                                       numpy_helper.from_array((np.abs(w).max(0) / 127).astype(np.float32), "ws")])
        sessions = {}
        for name, g in (("ort_fp32_matmul", f32), ("ort_int8_dynamic_matmul", i8)):
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
            sessions[name] = _session(m.SerializeToString(), threads)
        names = list(sessions)
        res = measure_interleaved_ms([lambda s=sessions[nm]: s.run(None, {"x": x}) for nm in names], warmup=1, repeats=repeats,
                                     threads=threads)
        ms = {nm: round(r.median_ms, 3) for nm, r in zip(names, res)}
        ms["int8_speedup"] = round(ms["ort_fp32_matmul"] / ms["ort_int8_dynamic_matmul"], 3)
        out[f"{tokens}x{k}->{n}"] = ms
    return out


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bert_int8_speed(threads: int = 1, batch: int = 32, seq: int = 128, repeats: int = 7) -> dict:
    """Median latencies (ms) of the five engines on one batch × seq token batch, cosines vs PyTorch fp32, speed-ups
    over ORT fp32, the per-shape GEMM figures and ORT profiles by op type."""
    from nncompress.export.onnx import to_onnx
    from nncompress.quantization import DynamicInt8Config, quantize_, to_onnx_int8
    from nncompress.quantization.onnx_swap import integer_op_counts

    torch.set_num_threads(threads)
    net = build_bert()
    g = torch.Generator().manual_seed(1)
    x = {"input_ids": torch.randint(1000, 30522, (batch, seq), generator=g), "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    feed = {k: v.numpy() for k, v in x.items()}
    with torch.no_grad():
        ref = net(**x).numpy()
    fp32_blob = to_onnx(net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = quantize_(build_bert(), DynamicInt8Config())
        blobs = {"ort_int8_per_token": to_onnx_int8(ours, x, dynamic_activations="per_token"),
                 "ort_int8_per_tensor": to_onnx_int8(ours, x, dynamic_activations="per_tensor")}
    sessions = {"ort_fp32": _session(fp32_blob, threads), **{k: _session(b, threads) for k, b in blobs.items()}}

    def torch_call(m):
        def run():
            with torch.no_grad():
                return m(**x).numpy()
        return run

    engines = {"pytorch_fp32": torch_call(net), **{k: (lambda s=s: s.run(None, feed)[0]) for k, s in sessions.items()},
               "eager_int8": torch_call(ours)}
    cos = {k: round(_cos(fn(), ref), 6) for k, fn in engines.items()}
    for k, c in cos.items():
        if not c >= 0.9:  # a broken engine (NaN, garbage) is an error, never a row
            raise RuntimeError(f"{k}: output cosine {c} vs PyTorch fp32; refusing to time a wrong engine")
    names = list(engines)
    res = measure_interleaved_ms([engines[k] for k in names], warmup=1, repeats=repeats, threads=threads)
    ms = {k: round(r.median_ms, 2) for k, r in zip(names, res)}
    base = ms["ort_fp32"]
    int8 = [k for k in names if "int8" in k]
    best = min(int8, key=ms.get)
    best_ort = min(("ort_int8_per_token", "ort_int8_per_tensor"), key=ms.get)
    return {
        "config": {"model": "BertModel 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522 (random init from config)",
                   "batch": batch, "tokens": seq, "threads": threads, "repeats": repeats,
                   "timing": "medians of interleaved calls (analysis.latency.measure_interleaved_ms), warm-up 1 per call"},
        "median_ms": ms, "cosine_vs_pytorch_fp32": cos, "speedup_vs_ort_fp32": {k: round(base / v, 3) for k, v in ms.items()},
        "best_int8": best, "best_int8_speedup_vs_ort_fp32": round(base / ms[best], 3), "best_int8_cosine": cos[best],
        "best_ort_int8": best_ort, "best_ort_int8_speedup_vs_ort_fp32": round(base / ms[best_ort], 3),
        "integer_ops": {k: {op: c for op, c in integer_op_counts(b).items() if c} for k, b in blobs.items()},
        "onnx_bytes": {"ort_fp32": len(fp32_blob), **{k: len(b) for k, b in blobs.items()}},
        "gemm_at_layer_shapes_ms": gemm_shapes_ms(batch * seq, threads, max(3, repeats)),
        "ort_profile_ms_by_op": {"ort_fp32": ort_profile_ms(fp32_blob, feed, threads),
                                 **{k: ort_profile_ms(b, feed, threads) for k, b in blobs.items()}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4 x 32 tokens, 3 repeats; writes nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    batch, seq, repeats = (4, 32, 3) if args.quick else (32, 128, args.repeats)
    row = bert_int8_speed(args.threads, batch, seq, repeats)
    print(json.dumps({k: row[k] for k in ("median_ms", "cosine_vs_pytorch_fp32", "speedup_vs_ort_fp32")}, indent=1), file=sys.stderr)
    print(json.dumps(row["gemm_at_layer_shapes_ms"], indent=1), file=sys.stderr)
    if args.quick:
        print("quick run: results not written", file=sys.stderr)
        return
    write_results("onnx_int8", payload(row, args.threads))


def payload(row: dict, threads: int) -> dict:
    """The results JSON: the two targets the issue names, computed from the row, the environment and the row."""
    best = row["best_ort_int8"]  # the faster of to_onnx_int8's two activation grids; both are in the row
    sp, cos = row["best_ort_int8_speedup_vs_ort_fp32"], row["cosine_vs_pytorch_fp32"][best]
    targets = [
        target("BERT 6x384 int8 >= 2x ONNX Runtime fp32 (batch 32 x 128, 1 thread; to_onnx_int8 in ORT)", f">= {MIN_SPEEDUP}", sp,
               sp >= MIN_SPEEDUP),
        target("BERT 6x384 int8 output cosine >= 0.99 vs fp32 (to_onnx_int8 in ORT)", f">= {MIN_COSINE}", cos, cos >= MIN_COSINE),
    ]
    return {"targets": targets, "environment": environment(threads), "bert": row}


if __name__ == "__main__":
    main()
