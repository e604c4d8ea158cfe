"""The Deep Compression pipeline (Han, Mao & Dally, ICLR 2016): prune → fine-tune → share → fine-tune → Huffman.

Every stage is measured: exact bytes of the representation it implies and top-1 on held-out data.

    dense fp32       all parameters at 32 bits (the sensitivity allocation runs here: see recipes/allocation.py)
    pruned           surviving weights at 32 bits + relative-index gaps (plus fillers), dense leftovers
    shared           surviving weights as codebook indices (bits) + gaps + codebooks, dense leftovers
    huffman (.nnc)   the real file: Huffman-coded indices and gaps, codebooks, leftovers, header, checksum

Ratios are dense fp32 bytes / stage bytes.

Per-layer sparsity and codebook bits are chosen by `recipes.allocation` (sensitivity grid + greedy by accuracy cost
per byte saved, under `budget_pp`) on a validation split carved from the training data; the test split is only
ever used to report. Values the user fixes (`sparsity`, `bits`) are kept as given; `allocate=False` uses the presets.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nncompress.analysis import analyze, sparsity_bar_plot, weight_histogram
from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.guards import check_accuracy_kept
from nncompress.core.layers import plain_state_dict
from nncompress.core.io import atomic_write_text, load_weights, save_weights
from nncompress.core.seed import seed_everything
from nncompress.data import Dataset, load_dataset, make_loaders
from nncompress.data.datasets import stratified_split
from nncompress.encoding import count_entries, read_nnc, save_nnc, size_breakdown, write_nnc
from nncompress.export.nnc import compress_model, model_from_nnc
from nncompress.pruning import finalize, iterative_prune
from nncompress.recipes.allocation import Allocation, allocate, expected_top1
from nncompress.sharing import get_codebook, share_weights, shared_layers
from nncompress.training import TrainConfig, evaluate, train

# Per-layer sparsity targets, close to Han et al. 2015 (Tables 2/3 keep 8%/9%/26% of LeNet-300-100 and
# 66%/12%/8%/19% of LeNet-5); fc1 of LeNet-300-100 a little sparser, as mnist5k's 28×28 borders carry nothing.
SPARSITY_PRESETS: dict[str, dict[str, float]] = {
    "lenet300": {"fc1": 0.935, "fc2": 0.9, "fc3": 0.7},
    "lenet5": {"conv1": 0.35, "conv2": 0.88, "fc1": 0.94, "fc2": 0.8},
}
DEFAULT_SPARSITY = 0.9
BUDGET_PRESETS: dict[str, float] = {"lenet300": 5.0, "lenet5": 1.5}
"""Sum of one-shot drops in validation expected top-1 (points; allocation.expected_top1) the allocation may spend per
model; fine-tuning recovers it. Chosen on the validation grid so the .nnc lands near 55x (LeNet-300-100) and 50x (LeNet-5)."""
DEFAULT_BUDGET_PP = 3.0


@dataclass
class DeepCompressionConfig:
    model: str = "lenet300"
    data: str = "mnist5k"
    weights: str | None = None  # a trained .safetensors; None trains (or reuses a cached) baseline
    out_dir: str = "nncompress-out"
    seed: int = 0
    threads: int = 2
    baseline_epochs: int = 20
    baseline_lr: float = 0.05
    sparsity: dict[str, float] | float | None = None  # per layer, one value for all; unset layers are allocated (or preset)
    prune_steps: int = 3  # iterative pruning: reach the target in this many prune → fine-tune rounds
    prune_finetune_epochs: int = 6
    finetune_lr: float = 0.02
    bits: dict[str, int] | int | None = None  # codebook bits per layer / kind; unset layers are allocated (else conv 8, linear 5)
    share_init: str = "linear"
    share_finetune_epochs: int = 4
    share_lr: float = 0.002
    gap_bits: int | str = "auto"  # relative-index width; "auto" picks the smallest file per layer
    cache_dir: str | None = None  # baseline cache; default $NNCOMPRESS_CACHE or ./.nncompress-cache
    progress: bool | None = None
    allow_drop: bool = False  # a stage at chance accuracy (from a model well above it) warns instead of stopping the run
    allocate: bool = True  # choose unset per-layer sparsity/bits from sensitivity (recipes/allocation.py); False: presets
    budget_pp: float | None = None  # allocation budget: sum of one-shot val expected-top-1 drops (points); None: model preset
    val_fraction: float = 0.1  # of the training split, held out (stratified, seeded) for the allocation and val top-1


@dataclass
class Stage:
    stage: str
    bytes: int
    ratio: float
    top1: float
    detail: dict = field(default_factory=dict)


@dataclass
class DeepCompressionResult:
    config: dict
    stages: list[Stage]
    layers: list[dict]
    nnc_path: str
    nnc_breakdown: dict[str, int]
    seconds: float
    files: list[str]
    allocation: dict | None = None  # Allocation.to_dict() when the sensitivity allocation chose sparsity/bits
    val_top1: dict[str, float] = field(default_factory=dict)  # validation top-1 (carved from train) per stage

    def to_dict(self) -> dict:
        return {"config": self.config, "stages": [asdict(s) for s in self.stages], "layers": self.layers,
                "nnc_path": self.nnc_path, "nnc_breakdown": self.nnc_breakdown, "seconds": self.seconds, "files": self.files,
                "allocation": self.allocation, "val_top1": self.val_top1}


def _validate(cfg: DeepCompressionConfig, model: nn.Module) -> tuple[dict[str, float], dict[str, int]]:
    """(fixed sparsity per layer, fixed bits per layer): what the user set, or the presets when `allocate` is off.

    With `allocate` on, layers missing from either dict are chosen by the sensitivity allocation."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    layers = list(modules)
    sp = cfg.sparsity
    if sp is None and not cfg.allocate:
        sp = SPARSITY_PRESETS.get(cfg.model, DEFAULT_SPARSITY)
    targets = {} if sp is None else {n: float(sp) for n in layers} if isinstance(sp, (int, float)) else dict(sp)
    unknown = [n for n in targets if n not in layers]
    if unknown:
        raise UserError(f"sparsity names unknown layers {unknown}; model '{cfg.model}' has {layers}")
    for name, s in targets.items():
        if not 0.0 <= s < 1.0:
            raise UserError(f"sparsity for layer '{name}' is {s}: it must be in [0, 1)")
    bits = cfg.bits
    for b in ([bits] if isinstance(bits, int) else (bits or {}).values()):
        if not (isinstance(b, int) and 1 <= b <= 16):
            raise UserError(f"bits must be integers in 1..16, got {b!r}")
    fixed_bits: dict[str, int] = {}
    if isinstance(bits, int):
        fixed_bits = {n: bits for n in layers}
    elif bits:
        unknown = [k for k in bits if k not in layers and k not in ("conv", "linear")]
        if unknown:
            raise UserError(f"bits names unknown layers {unknown}; use 'conv', 'linear' or one of {layers}")
        for n, m in modules.items():
            b = bits.get(n, bits.get("conv" if isinstance(m, nn.Conv2d) else "linear"))
            if b is not None:
                fixed_bits[n] = b
    if cfg.budget_pp is not None and (isinstance(cfg.budget_pp, bool) or not isinstance(cfg.budget_pp, (int, float))
                                      or not 0 <= cfg.budget_pp < float("inf")):
        raise UserError(f"budget_pp must be a finite number of top-1 points >= 0, got {cfg.budget_pp!r}")
    if not (isinstance(cfg.val_fraction, (int, float)) and 0.0 < cfg.val_fraction < 0.5):
        raise UserError(f"val_fraction must be in (0, 0.5), got {cfg.val_fraction!r}")
    for name in ("prune_steps", "baseline_epochs"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("prune_finetune_epochs", "share_finetune_epochs"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.threads < 1:
        raise UserError(f"threads must be >= 1, got {cfg.threads}")
    return targets, fixed_bits


def _cache_path(cfg: DeepCompressionConfig, data_name: str) -> Path:
    root = Path(cfg.cache_dir or os.environ.get("NNCOMPRESS_CACHE", ".nncompress-cache"))
    key = hashlib.sha256(f"{cfg.model}|{data_name}|{cfg.seed}|{cfg.baseline_epochs}|{cfg.baseline_lr}|val{cfg.val_fraction}|v2"
                         .encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.model)  # a factory reference (path/to/nets.py:build) is not a file name
    return root / f"{name}-{Path(data_name).stem}-{key}.safetensors"


def _baseline(cfg: DeepCompressionConfig, model: nn.Module, train_loader, log) -> str:
    if cfg.weights:
        state = load_weights(cfg.weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"weights {cfg.weights} do not fit model '{cfg.model}': {str(e).splitlines()[0]}") from None
        return f"loaded {cfg.weights}"
    cache = _cache_path(cfg, cfg.data)
    if cache.is_file() and not cfg.data.endswith(".npz"):
        model.load_state_dict(load_weights(cache))
        return f"cached baseline {cache}"
    log(f"training baseline {cfg.model} on {cfg.data} for {cfg.baseline_epochs} epochs")
    train(model, train_loader, TrainConfig(epochs=cfg.baseline_epochs, lr=cfg.baseline_lr, seed=cfg.seed, progress=cfg.progress))
    if not cfg.data.endswith(".npz"):
        save_weights(model.state_dict(), cache)
    return f"trained {cfg.baseline_epochs} epochs"


def _leftover_bytes(model: nn.Module, weight_names: set[str]) -> int:
    """Bytes of every tensor that is not a compressed weight (biases, buffers), stored raw."""
    return sum(t.numel() * t.element_size() for k, t in plain_state_dict(model).items() if k not in weight_names)


def _pruned_bytes(model: nn.Module, gap_bits: dict[str, int], value_bits: dict[str, int] | int) -> tuple[int, list[dict]]:
    """Exact bits of nonzero values + relative-index gaps per layer (fillers included), rounded up to bytes."""
    rows, total_bits = [], 0
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        w = m.weight.detach().reshape(-1)  # effective weight (shared layers compute it)
        positions = torch.nonzero(w).reshape(-1).numpy()
        g = gap_bits[name]
        entries = count_entries(positions, g)
        vb = value_bits if isinstance(value_bits, int) else value_bits[name]
        bits = entries * (vb + g)
        total_bits += bits
        rows.append({"layer": name, "numel": w.numel(), "nnz": int(positions.size), "entries": entries, "gap_bits": g, "value_bits": vb})
    return (total_bits + 7) // 8, rows


def run_deep_compression(cfg: DeepCompressionConfig | None = None, log=print) -> DeepCompressionResult:
    """Run the whole pipeline and write .nnc, report.md, report.json and plots into cfg.out_dir."""
    cfg = cfg or DeepCompressionConfig()
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes)
    fixed_sparsity, fixed_bits = _validate(cfg, model)
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    if hasattr(ds, "loaders"):
        raise UserError(f"deep compression needs an in-memory dataset (digits, mnist5k, .npz), not the image folder '{cfg.data}'")
    # the validation split: carved from the training split (stratified, seeded), never trained on; decisions use it,
    # the test split only reports
    fit_idx, val_idx = stratified_split(ds.y_train.numpy(), cfg.val_fraction, cfg.seed + 1009, keep_both_sides=True)
    fit = Dataset(ds.name, ds.x_train[fit_idx], ds.y_train[fit_idx], ds.x_test, ds.y_test, ds.num_classes)
    train_loader, test_loader = make_loaders(fit, batch_size=64, seed=cfg.seed)
    val_loader = [(ds.x_train[val_idx], ds.y_train[val_idx])]  # one batch: the allocation evaluates it ~150 times
    source = _baseline(cfg, model, train_loader, log)
    dense_model = copy.deepcopy(model).eval()
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    stages = [Stage("dense fp32", dense_bytes, 1.0, evaluate(model, test_loader), {"source": source})]
    val_top1 = {"dense fp32": evaluate(model, val_loader)}
    log(f"dense: {dense_bytes} bytes, top-1 {stages[0].top1:.2f}% (val {val_top1['dense fp32']:.2f}%)")

    # 0. per-layer sparsity and bits: what the user fixed, the rest chosen from sensitivity on the validation split
    layer_names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    allocation: Allocation | None = None
    if cfg.allocate and (len(fixed_sparsity) < len(layer_names) or len(fixed_bits) < len(layer_names)):
        budget = cfg.budget_pp if cfg.budget_pp is not None else BUDGET_PRESETS.get(cfg.model, DEFAULT_BUDGET_PP)
        allocation = allocate(model, layer_names, lambda m: expected_top1(m, val_loader), budget,
                              sparsities={n: (s,) for n, s in fixed_sparsity.items()},
                              bits={n: (b,) for n, b in fixed_bits.items()})
        targets, share_bits = dict(allocation.sparsity), dict(allocation.bits)
        log(f"allocated (budget {budget:g} pp one-shot val expected-top-1 drop, spent {allocation.spent_pp:.2f}): "
            + ", ".join(f"{n} {100 * targets[n]:.1f}%/{share_bits[n]}b" for n in layer_names))
    else:
        targets = fixed_sparsity
        share_bits = dict(fixed_bits) if fixed_bits else cfg.bits
    weight_names = {f"{n}.weight" for n in targets}

    # 1. iterative pruning: reach each layer's target in prune_steps rounds, fine-tuning after each; every
    #    round removes the same fraction of the surviving weights (density d_i = d_final^(i/n)), gentle at the end
    levels = [{n: 1.0 - (1.0 - s) ** ((i + 1) / cfg.prune_steps) for n, s in targets.items()} for i in range(cfg.prune_steps)]
    round_seed = iter(range(cfg.seed + 1, cfg.seed + 1 + cfg.prune_steps))

    def fine_tune(m: nn.Module) -> float:
        train(m, train_loader, TrainConfig(epochs=cfg.prune_finetune_epochs, lr=cfg.finetune_lr, seed=next(round_seed), progress=cfg.progress))
        return evaluate(m, test_loader)

    history = iterative_prune(model, fine_tune, levels, criterion="level", scope="layer")
    finalize(model)
    leftover = _leftover_bytes(model, weight_names)
    fixed_gap = {n: (cfg.gap_bits if isinstance(cfg.gap_bits, int) else (8 if isinstance(m, nn.Conv2d) else 5))
                 for n, m in model.named_modules() if n in targets}
    pruned_weight_bytes, prune_rows = _pruned_bytes(model, fixed_gap, 32)
    pruned_bytes = pruned_weight_bytes + leftover
    stages.append(Stage("pruned", pruned_bytes, dense_bytes / pruned_bytes, evaluate(model, test_loader),
                        {"rounds": [{"sparsity": lv, "top1": acc} for lv, acc in history]}))
    val_top1["pruned"] = evaluate(model, val_loader)
    log(f"pruned: {pruned_bytes} bytes ({dense_bytes / pruned_bytes:.1f}x), top-1 {stages[-1].top1:.2f}%")
    check_accuracy_kept(stages[0].top1, stages[-1].top1, ds.num_classes, "pruning + fine-tuning",
                        f"lower the fine-tuning lr ({cfg.finetune_lr:g}) or the --sparsity, or raise --prune-steps", allow_drop=cfg.allow_drop)

    # 2. k-means weight sharing, then centroid fine-tuning (masks preserved by construction)
    share_weights(model, bits=share_bits, init=cfg.share_init, layers=list(targets), seed=cfg.seed)
    top1_shared_raw = evaluate(model, test_loader)
    train(model, train_loader, TrainConfig(epochs=cfg.share_finetune_epochs, lr=cfg.share_lr, optimizer="adam", seed=cfg.seed + 100, progress=cfg.progress))
    codebook_bits, shared_bits = 0, {}
    for name, m in shared_layers(model).items():
        centroids, _, _ = get_codebook(m)
        shared_bits[name] = max(1, int(np.ceil(np.log2(max(centroids.numel(), 2)))))
        codebook_bits += 32 * centroids.numel()
    shared_weight_bytes, _ = _pruned_bytes(model, fixed_gap, shared_bits)
    shared_bytes = shared_weight_bytes + (codebook_bits + 7) // 8 + leftover
    top1_shared = evaluate(model, test_loader)
    stages.append(Stage("shared", shared_bytes, dense_bytes / shared_bytes, top1_shared,
                        {"bits": shared_bits, "top1_before_finetune": top1_shared_raw}))
    log(f"shared: {shared_bytes} bytes ({dense_bytes / shared_bytes:.1f}x), top-1 {top1_shared:.2f}%")
    check_accuracy_kept(stages[0].top1, top1_shared, ds.num_classes, "weight sharing + centroid fine-tuning",
                        f"use more --bits or lower the centroid lr ({cfg.share_lr:g})", allow_drop=cfg.allow_drop)
    val_top1["shared"] = evaluate(model, val_loader)

    # 3. Huffman coding into the .nnc file; decode it again and check it is the same model
    metadata = {"model": cfg.model, "in_shape": list(ds.input_shape), "num_classes": ds.num_classes, "format": "deep-compression"}
    cm = compress_model(model, metadata, gap_bits=cfg.gap_bits)
    blob = write_nnc(cm)
    decoded = model_from_nnc(read_nnc(blob), cfg.model)  # the user's own reference: rebuilt on their word
    reference = plain_state_dict(model)
    mismatch = [k for k, v in decoded.state_dict().items() if not torch.equal(v, reference[k])]
    if mismatch:
        raise RuntimeError(f"internal error: .nnc round trip changed {mismatch}")
    top1_file = evaluate(decoded, test_loader)
    breakdown = size_breakdown(cm)
    stages.append(Stage("huffman (.nnc)", len(blob), dense_bytes / len(blob), top1_file,
                        {"gap_bits": {n: t.gap_bits for n, t in cm.shared.items()}, "breakdown": breakdown}))
    log(f"huffman: {len(blob)} bytes ({dense_bytes / len(blob):.1f}x), top-1 {top1_file:.2f}%")

    # 4. outputs: the file, plots, reports (each written atomically)
    out.mkdir(parents=True, exist_ok=True)
    nnc_path = out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(cfg.model.replace(':', '_')).name)}.nnc"  # nets.py:build → nets.py_build.nnc
    save_nnc(nnc_path, cm)
    files = [str(nnc_path)]
    files.append(str(weight_histogram(dense_model, out / "weights_before.png")))
    files.append(str(weight_histogram(decoded, out / "weights_after.png")))
    analysis = analyze(decoded, ds.input_shape)
    files.append(str(sparsity_bar_plot(analysis, out / "sparsity.png")))
    layers = []
    for row in prune_rows:
        key = f"{row['layer']}.weight"
        t = cm.shared[key]
        row.update({"sparsity": 1 - row["nnz"] / row["numel"], "codebook": int(t.codebook.size), "bits": int(t.bits), "nnc_gap_bits": int(t.gap_bits)})
        layers.append(row)
    result = DeepCompressionResult(asdict(cfg), stages, layers, str(nnc_path), breakdown, time.perf_counter() - t_start, files,
                                   allocation.to_dict() if allocation is not None else None, val_top1)
    md_path, json_path = out / "report.md", out / "report.json"
    result.files += [str(md_path), str(json_path)]
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2))
    atomic_write_text(md_path, render_markdown(result))
    return result


def render_markdown(result: DeepCompressionResult) -> str:
    cfg = result.config
    lines = [f"# Deep Compression: {cfg['model']} on {cfg['data']}", "",
             "| stage | bytes | ratio vs fp32 | top-1 % |", "|---|---:|---:|---:|"]
    for s in result.stages:
        lines.append(f"| {s.stage} | {s.bytes:,} | {s.ratio:.1f}× | {s.top1:.2f} |")
    lines += ["", "## Layers", "", "| layer | weights | kept | sparsity | codebook | bits | gap bits |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result.layers:
        lines.append(f"| {r['layer']} | {r['numel']:,} | {r['nnz']:,} | {100 * r['sparsity']:.1f}% | {r['codebook']} | {r['bits']} | {r['nnc_gap_bits']} |")
    alloc = result.allocation
    if alloc:
        lines += ["", "## Allocation", "",
                  f"Per-layer sparsity and bits chosen greedily by one-shot validation expected-top-1 drop per byte saved, "
                  f"budget {alloc['budget_pp']:g} pp, spent {alloc['spent_pp']:.2f} pp, estimated {alloc['est_bytes']:,.0f} coded "
                  f"weight bytes; validation top-1 " + ", ".join(f"{k} {v:.2f}%" for k, v in result.val_top1.items()) + "."]
    lines += ["", "## .nnc file", "", "| part | bytes |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in result.nnc_breakdown.items()]
    lines += ["", "![weights before](weights_before.png) ![weights after](weights_after.png) ![sparsity](sparsity.png)", "",
              f"Ran in {result.seconds:.1f} s with {cfg['threads']} threads, seed {cfg['seed']}."]
    return "\n".join(lines) + "\n"
