"""The README's benchmark figures, generated from benchmarks/results/*.json so the two can never disagree.

The README holds blocks between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; this script renders
each block from the JSON files. `--write` rewrites the blocks in place, `--check` exits 1 when the README differs
(tests/test_benchmark_results.py runs the same comparison).

    .venv/bin/python benchmarks/readme_figures.py --write
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)

# what each benchmark compares, in the order the README lists them
DESCRIPTIONS = {
    "deep_compression": "LeNet-300-100 / LeNet-5 `.nnc` vs the paper's 40× / 39×",
    "scale": "VGG16 / AlexNet (ImageNet shapes) through prune → share → encode → save → load, time, peak RSS, bytes vs the paper",
    "sparse_exec": "pruned layers on sparse kernels (`nncompress.sparse.sparsify`) vs dense PyTorch, batch 1, 1 thread",
    "any_model": "architectures × methods on models users bring (Hugging Face transformers, real EfficientNet-Lite0, zoo CNNs, an odd CNN)",
    "ptq": "PTQ ladder on EfficientNet-Lite0 (real weights) and mnist5k nets: min-max, CLE + bias correction, AdaRound, mixed precision; NNCF and ORT quantizer peers; int8 vs the fastest fp32 runtime",
    "quant_engines": "int8 engines side by side: ONNX Runtime QDQ / integer ops, our `_int_mm` modules, torchao",
    "onnx_int8": "swap-quantized models exported to ONNX integer ops vs ONNX Runtime fp32 (BERT 6×384)",
    "llm": "language-model testbed (GPT-2 on the stdlib sources): Wanda / SparseGPT / GPTQ / AWQ / SmoothQuant / heads+FFN / KD vs baselines, perplexity",
    "weight_only_kernels": "int4/int8 weight-only kernels (ORT MatMulNBits, PyTorch int4) vs fp32 at LLM layer shapes",
    "quantization": "fp32 vs int8 dynamic / static (ONNX Runtime QDQ, eager int8 modules) vs 4-bit LSQ QAT; peer: torch.ao's own flow",
    "runtime": "PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 on a pruned LeNet-5 and a conv-BN net",
    "structured": "L1 channel removal vs Torch-Pruning 1.6 on ResNet-20 (mnist5k), same MAC cut; NetAdapt",
    "distill_lowrank": "student alone vs distilled; SVD; Tucker-2; lottery rewinding",
    "architectures": "every family's params/MACs at 224 vs published; trained on mnist5k; early exit; search",
    "seed_rows": "one row per method the seed material names (issue 17), with the call and a measured figure",
    "fuzz": "mutated `.nnc`, recipe and `.npz` files through the API and the installed CLI",
    "bad_inputs": "bad invocations of the installed `nncompress` console script",
}


def load_results() -> dict[str, dict]:
    """Every results JSON by benchmark name (the file stem)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def fmt(value) -> str:
    """A measured figure as the README prints it: thousands separators, at most two decimals."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def render_targets(results: dict[str, dict]) -> str:
    """One table per benchmark: every target its issue names, what this run measured, met or not."""
    lines = []
    names = [n for n in DESCRIPTIONS if n in results] + sorted(n for n in results if n not in DESCRIPTIONS)
    for name in names:
        r = results[name]
        targets = r.get("targets", [])
        met = sum(t["met"] for t in targets)
        env = r.get("environment", {})
        where = ", ".join(x for x in (env.get("isa"), f"threads {env['threads']}" if "threads" in env else None) if x)
        lines += [f"**`{name}.py`**: {DESCRIPTIONS.get(name, '')} ({met}/{len(targets)} targets met{'; ' + where if where else ''})", "",
                  "| target | wanted | measured | met |", "|---|---|---:|:-:|"]
        lines += [f"| {t['name']} | {t['target']} | {fmt(t['measured'])} | {'✓' if t['met'] else '✗'} |" for t in targets]
        lines.append("")
    return "\n".join(lines)


def render_deep_compression(results: dict[str, dict]) -> str:
    """The main job's table: bytes per stage, ratio, paper, accuracy."""
    r = results["deep_compression"]
    lines = ["| model | dense fp32 | pruned | shared | `.nnc` (Huffman / rANS) | ratio | paper | top-1 dense → `.nnc` |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in r["models"]:
        stages = [s["bytes"] for s in m["stages"]]
        lines.append(f"| {m['paper']['name']} | {stages[0]:,} B | {stages[1]:,} B | {stages[2]:,} B | {m['nnc_bytes']:,} B | "
                     f"**{m['ratio']:.1f}×** | {m['paper']['ratio']:.0f}× | {m['top1_dense']:.2f} → {m['top1_compressed']:.2f} % "
                     f"({0.0 - m['top1_drop_pp'] + 0.0:+.2f} pp) |")
    lines.append("")
    kept = "; ".join(f"{m['paper']['name']}: " + ", ".join(f"{l['layer']} {100 * (1 - l['sparsity']):.1f} % at {l['bits']} bits"
                                                         for l in m["layers"])
                     for m in r["models"])
    lines.append(f"Weights kept and codebook bits per layer (chosen from sensitivity under the accuracy budget): {kept}.")
    lines.append("")
    lines.append(f"mnist5k (4,000 train / 1,000 test images), {r['threads']} threads, seed 0; the run trains both baselines from "
                 f"scratch and took {r['total_seconds']:.0f} s in all ({r['cpu_seconds']:.0f} CPU-seconds). "
                 + ("Every target is met." if all(t["met"] for t in r["targets"]) else
                    "Targets not met: " + "; ".join(f"{t['name']} ({fmt(t['measured'])}, wanted {t['target']})"
                                                   for t in r["targets"] if not t["met"]) + "."))
    return "\n".join(lines) + "\n"


RENDERERS = {"targets": render_targets, "deep_compression": render_deep_compression}


def render_readme(text: str, results: dict[str, dict]) -> str:
    """`text` with every generated block re-rendered from `results`."""
    def one(m: re.Match) -> str:
        if m["name"] not in RENDERERS:
            raise SystemExit(f"README block '{m['name']}' has no renderer in benchmarks/readme_figures.py")
        return m.group(1) + RENDERERS[m["name"]](results) + m.group(4)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the README's generated blocks")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's figures differ from the JSON")
    args = ap.parse_args(argv)
    text = README.read_text()
    new = render_readme(text, load_results())
    if args.write:
        README.write_text(new)
        print(f"wrote {README}")
    elif args.check and new != text:
        print("README figures differ from benchmarks/results/*.json: run benchmarks/readme_figures.py --write", file=sys.stderr)
        return 1
    elif not args.check:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
