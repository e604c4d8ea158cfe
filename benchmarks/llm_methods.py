"""The LLM compression methods side by side on the language-model testbed (issue 15, items 2–4): test-set
perplexity of the dense GPT-2-architecture model against

    weight-only   RTN and GPTQ at 4 and 3 bits per channel (GPTQ's Table 3 setting), RTN / GPTQ / AWQ at 4 bits
                  in groups of 64, with exact packed bytes
    W8A8          per-token int8 activations × per-channel int8 weights, without and with SmoothQuant (α searched
                  on the validation split), and + int8 KV cache
    pruning       magnitude (per row), Wanda and SparseGPT at 50 % unstructured and 2:4

All from the same calibration set (128 seeded training blocks); perplexity on the test split (files never used
for training, calibration or the α search). Targets are the published orderings:
    GPTQ < RTN (LLaMA-7B 4-bit: fp16 5.68, RTN 6.29, GPTQ 6.09);   AWQ < RTN (Llama-2-7B g128: RTN 5.73, AWQ 5.60);
    Wanda, SparseGPT ≪ magnitude at 50 % (LLaMA-2-7B: dense 5.12, magnitude 14.89, SparseGPT 6.51, Wanda 6.42);
    SmoothQuant W8A8 close to fp16 (Llama-2-7B 5.474 → 5.515, +0.75 %).

    python benchmarks/llm_methods.py           # builds the testbed first if not cached (see llm_testbed.py), then ~5–10 min
    python benchmarks/llm_methods.py --quick   # the quick testbed, few blocks: a plumbing check, writes nothing
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import environment, target, write_results  # noqa: E402
from llm_testbed import QUICK, TestbedConfig, build  # noqa: E402

from nncompress.data.text_corpus import perplexity  # noqa: E402
from nncompress.pruning import finalize  # noqa: E402
from nncompress.pruning.sparsegpt import sparsegpt  # noqa: E402
from nncompress.pruning.wanda import magnitude_prune_llm, wanda_prune  # noqa: E402
from nncompress.quantization.awq import awq  # noqa: E402
from nncompress.quantization.gptq import gptq  # noqa: E402
from nncompress.quantization.smoothquant import kv_cache_int8, quantize_w8a8, search_alpha, smoothquant  # noqa: E402
from nncompress.quantization.weight_only import WeightOnlyLinear, quantize_weight_only, weight_only_bytes  # noqa: E402


def linear_sparsity(model: torch.nn.Module) -> float:
    """Zero fraction over the compressed linear weights (the transformer blocks' projections)."""
    zeros = total = 0
    for name, m in model.named_modules():
        if name.startswith("transformer.h.") and hasattr(m, "weight") and isinstance(m.weight, torch.Tensor) and m.weight.dim() == 2:
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick testbed and few blocks (plumbing check, writes nothing)")
    ap.add_argument("--out", default=None, help="results JSON path (default benchmarks/results/llm_methods.json)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg = QUICK if args.quick else TestbedConfig()
    bed = build(cfg, quick=args.quick, log=lambda s: print(s, file=sys.stderr))
    threads = cfg.threads
    torch.set_num_threads(threads)
    n_calib, n_eval = (8, 16) if args.quick else (128, 256)
    g = torch.Generator().manual_seed(0)
    train = bed.splits["train"]
    picks = torch.randperm(len(train), generator=g)[:n_calib].tolist()
    calib = [{"input_ids": torch.stack([train[i]["input_ids"] for i in picks[j:j + 8]])} for j in range(0, n_calib, 8)]
    val, test = bed.splits["validation"], bed.splits["test"]

    def ppl(model) -> float:
        return perplexity(model, test, max_blocks=n_eval)

    dense = bed.model.eval()
    rows: dict[str, dict] = {"dense": {"test_ppl": ppl(dense), "bytes": weight_only_bytes(dense)}}

    def run(name: str, fn, **extra) -> None:
        t = time.perf_counter()
        model = copy.deepcopy(dense)
        fn(model)
        for m in model.modules():
            if isinstance(m, WeightOnlyLinear):
                m.kernel = "cached"          # evaluation speed; storage is still counted from the packed buffers
        row = {"test_ppl": ppl(model), "seconds": round(time.perf_counter() - t, 2), **extra}
        if any(isinstance(m, WeightOnlyLinear) for m in model.modules()):
            row["bytes"] = weight_only_bytes(model)
        if name.startswith(("magnitude", "wanda", "sparsegpt")):
            finalize(model)
            row["linear_sparsity"] = round(linear_sparsity(model), 4)
        rows[name] = row
        print(f"{name}: ppl {row['test_ppl']:.3f} ({row['seconds']} s)", file=sys.stderr)

    for bits in (4, 3):
        run(f"rtn_w{bits}_channel", lambda m, b=bits: quantize_weight_only(m, b, None))
        run(f"gptq_w{bits}_channel", lambda m, b=bits: gptq(m, calib, b, None, act_order=True))
    run("rtn_w4_g64", lambda m: quantize_weight_only(m, 4, 64))
    run("gptq_w4_g64", lambda m: gptq(m, calib, 4, 64, act_order=True))
    run("awq_w4_g64", lambda m: awq(m, calib, 4, 64))
    run("w8a8_plain", quantize_w8a8)

    def val_ppl(model) -> float:
        return perplexity(model, val, max_blocks=n_eval // 2)

    alpha, alpha_scores = search_alpha(dense, calib[:2], val_ppl, alphas=(0.3, 0.5, 0.7, 0.85))
    run("w8a8_smoothquant", lambda m: smoothquant(m, calib, alpha), alpha=alpha, alpha_validation_ppl=alpha_scores)
    run("w8a8_smoothquant_kv8", lambda m: kv_cache_int8(smoothquant(m, calib, alpha), cfg.n_head), alpha=alpha)
    for label, kw in (("50pct", {"sparsity": 0.5}), ("2of4", {"n": 2, "m": 4})):
        run(f"magnitude_{label}", lambda m, kw=kw: magnitude_prune_llm(m, **kw))
        run(f"wanda_{label}", lambda m, kw=kw: wanda_prune(m, calib, **kw))
        run(f"sparsegpt_{label}", lambda m, kw=kw: sparsegpt(m, calib, **kw))

    p = {k: v["test_ppl"] for k, v in rows.items()}
    sq_gap = 100 * (p["w8a8_smoothquant"] / p["dense"] - 1)
    targets = [
        target("GPTQ 4-bit per-channel perplexity below RTN's (GPTQ Table 3: 6.09 vs 6.29)", "< RTN",
               p["gptq_w4_channel"], p["gptq_w4_channel"] < p["rtn_w4_channel"]),
        target("GPTQ 3-bit per-channel perplexity below RTN's", "< RTN", p["gptq_w3_channel"], p["gptq_w3_channel"] < p["rtn_w3_channel"]),
        target("AWQ 4-bit g64 perplexity below RTN's (AWQ Table 4: 5.60 vs 5.73)", "< RTN", p["awq_w4_g64"], p["awq_w4_g64"] < p["rtn_w4_g64"]),
        target("Wanda 50 % perplexity below magnitude's (Wanda Table 3: 6.42 vs 14.89)", "< magnitude",
               p["wanda_50pct"], p["wanda_50pct"] < p["magnitude_50pct"]),
        target("SparseGPT 50 % perplexity below magnitude's (6.51 vs 14.89)", "< magnitude",
               p["sparsegpt_50pct"], p["sparsegpt_50pct"] < p["magnitude_50pct"]),
        target("SparseGPT 2:4 perplexity below magnitude 2:4", "< magnitude", p["sparsegpt_2of4"], p["sparsegpt_2of4"] < p["magnitude_2of4"]),
        target("SmoothQuant W8A8 perplexity increase over fp32 (paper: +0.75 % on Llama-2-7B)", "<= 2 %", sq_gap, sq_gap <= 2.0),
        target("SmoothQuant W8A8 perplexity not above plain W8A8", "<= plain W8A8", p["w8a8_smoothquant"],
               p["w8a8_smoothquant"] <= p["w8a8_plain"]),
    ]
    payload = {
        "targets": targets,
        "environment": environment(threads),
        "testbed": bed.info,
        "method": f"{n_calib} calibration blocks of {cfg.seq_len} tokens (seeded draw from the training split); test "
                  f"perplexity over the first {n_eval} test blocks; GPTQ act-order, sequential layer by layer, damp 1 %, "
                  "block 128; AWQ grid 20 with clip search; SparseGPT sequential, block 128; Wanda and magnitude per output "
                  "row; SmoothQuant α searched on validation perplexity; the tied output head stays fp32 everywhere",
        "results": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.quick:
        for t in targets:
            print(t, file=sys.stderr)
        print("quick run: nothing written", file=sys.stderr)
        return
    write_results("llm_methods", payload, args.out)


if __name__ == "__main__":
    main()
