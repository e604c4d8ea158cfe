"""Issue 17's items, one row each: the call that exercised it and a figure it measured (accuracy, MACs, bytes,
latency or energy). A row that cannot apply says why; "no missing item" counts the rows that are "ok" or a
stated "n/a: ...". A row whose call raised says "error: ..." and counts as missing.

Short runs on the bundled datasets (digits: 8×8, 1437 train / 360 test; the attention experiments use
mnist5k canvases), one thread, fixed seeds. Targets (issue 17): selective attention saves ≥ 50 % of the
MACs at ≤ 1 pp; Ristretto trimming within 1 pp on LeNet-5 (bits per layer reported); the LSTM classifier
(digits rows as an 8-step sequence) at 80 % sparsity within 1 pp after fine-tuning; LSTM dynamic int8 on ONNX
Runtime's integer kernel (DynamicQuantizeLSTM), measured; no missing item.

    python benchmarks/seed_rows.py            # ~10 min on 1 thread → benchmarks/results/seed_rows.json
    python benchmarks/seed_rows.py --quick    # smaller runs, checks every call, writes nothing
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import environment, target, write_results  # noqa: E402

from nncompress.data import load_dataset, make_loaders  # noqa: E402
from nncompress.training import TrainConfig, evaluate, train  # noqa: E402

THREADS = 1
SEED = 0
ROWS: list[dict] = []
QUICK = False


# ---------------------------------------------------------------------------------------------- plumbing
def fig(name: str, value, unit: str) -> dict:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"figure {name!r} is {value}: a non-finite figure is an error, not a row")
        value = round(value, 4)
    return {"name": name, "value": value, "unit": unit}


def add(item: str, call: str, figure: dict, status: str = "ok", **details) -> dict:
    from nncompress.core.guards import near_chance

    if figure["unit"] == "%" and "top-1" in figure["name"] and near_chance(figure["value"], 10):
        raise RuntimeError(f"top-1 {figure['value']:.1f} % is at chance level (10 classes): a collapsed run, not a result")
    row = {"item": item, "status": status, "call": call, "figure": figure, **({"details": details} if details else {})}
    ROWS.append(row)
    print(f"  {item:58s} {status:4s} {figure['name']} = {figure['value']} {figure['unit']}", flush=True)
    return row


def run_item(item: str, fn) -> None:
    """Run one row's function; an exception becomes an 'error: ...' row (counted as missing), never a silent skip."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report whatever broke, keep the other rows
        traceback.print_exc()
        ROWS.append({"item": item, "status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}", "call": None,
                     "figure": None})
    ROWS[-1].setdefault("seconds", round(time.perf_counter() - t0, 2))


def epochs(full: int, quick: int = 1) -> int:
    return quick if QUICK else full


_DIGITS = {}


def digits():
    """The digits split and fresh seeded loaders: every row sees the same batches whatever ran before it."""
    if "ds" not in _DIGITS:
        _DIGITS["ds"] = load_dataset("digits", seed=SEED)
    return _DIGITS["ds"], *make_loaders(_DIGITS["ds"], batch_size=64, seed=SEED)


def lenet5_trained() -> nn.Module:
    """LeNet-5 on digits (8×8), trained once and copied by every row that prunes/quantizes it."""
    if "lenet" not in _DIGITS:
        from nncompress.architectures import build_model

        ds, train_loader, test_loader = digits()
        torch.manual_seed(SEED)
        net = build_model("lenet5", ds.input_shape, ds.num_classes)
        train(net, train_loader, TrainConfig(epochs=epochs(15, 3), lr=0.02, seed=SEED, progress=False))
        _DIGITS["lenet"], _DIGITS["lenet_top1"] = net.eval(), evaluate(net, test_loader)
    return copy.deepcopy(_DIGITS["lenet"])


def lenet_top1() -> float:
    lenet5_trained()
    return _DIGITS["lenet_top1"]


def calib_batches(n: int = 4):
    _, train_loader, _ = digits()
    out = []
    for i, b in enumerate(train_loader):
        if i >= n:
            break
        out.append(b)
    return out


def finetune(net: nn.Module, n_epochs: int, lr: float = 0.01) -> nn.Module:
    _, train_loader, _ = digits()
    train(net, train_loader, TrainConfig(epochs=n_epochs, lr=lr, seed=SEED, progress=False))
    return net


def top1(net: nn.Module) -> float:
    return evaluate(net, digits()[2])


def weight_sparsity(net: nn.Module, layers=None) -> float:
    from nncompress.core.layers import compressible_layers

    zeros = total = 0
    for name, m in compressible_layers(net).items():
        if layers is None or name in layers:
            w = m.weight.detach()
            zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / max(total, 1)


# ---------------------------------------------------------------------------------------------- pruning
class RowLSTM(nn.Module):
    """A digit as a sequence of its 8 rows (8 features each) → LSTM → last hidden state → 10 classes."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        y, _ = self.lstm(x.reshape(x.shape[0], 8, 8))
        return self.fc(y[:, -1])


def lstm_trained() -> nn.Module:
    if "lstm" not in _DIGITS:
        _, train_loader, test_loader = digits()
        torch.manual_seed(SEED)
        net = RowLSTM()
        train(net, train_loader, TrainConfig(epochs=epochs(40, 4), lr=0.01, optimizer="adam", seed=SEED, progress=False))
        _DIGITS["lstm"], _DIGITS["lstm_top1"] = net.eval(), evaluate(net, test_loader)
    return copy.deepcopy(_DIGITS["lstm"])


def row_rnn_pruner(targets: list) -> None:
    from nncompress.pruning import RNNPruner, finalize, rnn_sparsity

    net = lstm_trained()
    dense = _DIGITS["lstm_top1"]
    RNNPruner(0.5).prune(net)  # gradual: 50 % then 80 %, fine-tuning after each (Narang et al. prune gradually)
    train(net, digits()[1], TrainConfig(epochs=epochs(8, 1), lr=0.005, optimizer="adam", seed=SEED, progress=False))
    RNNPruner(0.8).prune(net)
    pruned_only = top1(net)
    train(net, digits()[1], TrainConfig(epochs=epochs(15, 1), lr=0.003, optimizer="adam", seed=SEED, progress=False))
    finalize(net)
    after = top1(net)
    sp = rnn_sparsity(net)
    overall = float(np.mean([v["all"] for v in sp.values()]))
    drop = dense - after
    if abs(overall - 0.8) > 0.01:
        raise RuntimeError(f"RNNPruner(0.8) left {overall:.3f} of the LSTM weights at zero, not 0.8")
    add("RNN/LSTM/GRU pruner (pruning.rnn)",
        "RNNPruner(0.5).prune(lstm); train(...); RNNPruner(0.8).prune(lstm); train(lstm, digits, adam); finalize(lstm)",
        fig("top-1 drop at 80 % LSTM sparsity after fine-tuning", drop, "pp"),
        dense_top1=dense, after_top1=after, top1_before_finetune=pruned_only, sparsity=sp, mean_sparsity=overall)
    targets.append(target("LSTM classifier (digits rows) at 80 % sparsity: top-1 drop after fine-tuning", "<= 1 pp",
                          round(drop, 3), drop <= 1.0))


def _score_prune(criterion: str, sparsity: float, **kwargs) -> tuple[nn.Module, float]:
    from nncompress.pruning import ScorePruner

    net = lenet5_trained()
    ScorePruner(sparsity, criterion=criterion, **kwargs).prune(net)
    return net, top1(net)


def row_saliency() -> None:
    """APoZ, OBD and Taylor, no fine-tuning, beside magnitude at the same sparsity: one-shot pruning quality."""
    def one(item, criterion, sparsity, layers, name):
        data = calib_batches()
        _, acc = _score_prune(criterion, sparsity, data=data, layers=layers)
        # the peer at the same sparsity: APoZ removes whole units (rows of fc1), so its peer removes the rows of
        # smallest L1 norm (Li et al.'s criterion on a Linear); OBD and Taylor score single weights, so |w|
        unit = {"granularity": "block", "block": (1, lenet5_trained().fc1.in_features)} if criterion == "apoz" else {}
        _, mag = _score_prune("magnitude", sparsity, layers=layers, **unit)
        where = f", layers={layers}" if layers else ""
        add(item, f'ScorePruner({sparsity}, criterion="{criterion}"{where}, data=batches).prune(lenet5)', fig(name, acc, "%"),
            **{("l1_rows" if unit else "magnitude") + "_top1_same_sparsity": mag}, dense_top1=lenet_top1())

    for item, crit, sp, layers, name in (
            ("APoZ (Hu et al. 2016)", "apoz", 0.5, ["fc1"], "top-1 with the weights of half of fc1's units removed, no fine-tuning"),
            ("OBD (Hessian diagonal)", "obd", 0.6, None, "top-1 at 60 % sparsity, no fine-tuning"),
            ("gradient saliency (Taylor)", "taylor", 0.6, None, "top-1 at 60 % sparsity, no fine-tuning")):
        run_item(item, lambda item=item, crit=crit, sp=sp, layers=layers, name=name: one(item, crit, sp, layers, name))


def _at_init(criterion: str, rounds: int = 1, **kwargs) -> tuple[float, dict]:
    """Prune a fresh LeNet-5 to 90 % before any training (`rounds` > 1: the sparsity 1 − 0.1^(k/rounds) at round k,
    masks intersecting), then train it as the dense net is trained."""
    from nncompress.architectures import build_model
    from nncompress.pruning import ScorePruner

    ds, train_loader, _ = digits()
    torch.manual_seed(SEED + 1)
    net = build_model("lenet5", ds.input_shape, ds.num_classes)
    for k in range(1, rounds + 1):
        ScorePruner(1 - 0.1 ** (k / rounds), criterion=criterion, scope="global", **kwargs).prune(net)
    sparsity = {n: round(weight_sparsity(net, [n]), 4) for n in ("conv1", "conv2", "fc1", "fc2")}
    sparsity["all"] = round(weight_sparsity(net), 4)
    train(net, train_loader, TrainConfig(epochs=epochs(15, 2), lr=0.02, seed=SEED, progress=False))
    return top1(net), sparsity


def row_snip() -> None:
    acc, sp = _at_init("snip", data=calib_batches(1))
    add("SNIP at init", 'ScorePruner(0.9, criterion="snip", scope="global", data=[one batch]).prune(fresh lenet5); train(...)',
        fig("top-1 after training at 90 % sparsity pruned at init", acc, "%"), sparsity=sp, dense_top1=lenet_top1())


def row_synflow() -> None:
    """SynFlow prunes iteratively (Tanaka et al. 2020 use 100 rounds): in one shot at 90 % it empties LeNet-5's fc1
    on this net (layer collapse, 10 % top-1 after training), which is the failure the iteration exists to avoid."""
    ds, _, _ = digits()
    acc, sp = _at_init("synflow", rounds=20, example_input=ds.x_test[:4])
    add("data-free pruning (SynFlow)",
        'for k in 1..20: ScorePruner(1 - 0.1 ** (k / 20), criterion="synflow", scope="global", example_input=x).prune(fresh lenet5); '
        'train(...)', fig("top-1 after training at 90 % sparsity, no data used to prune", acc, "%"), sparsity=sp,
        dense_top1=lenet_top1())


def row_granularity() -> None:
    for gran, item, kw, note in (("kernel", "kernel-level granularity", {}, "whole k×k kernels"),
                                 ("vector", "vector-level granularity", {"vector": "row"}, "kernel rows"),
                                 ("block", "block granularity", {"block": 4}, "4×4 blocks")):
        def one(gran=gran, item=item, kw=kw, note=note):
            layers = ["conv2"] if gran != "block" else ["fc1"]
            net, before_ft = _score_prune("magnitude", 0.5, granularity=gran, layers=layers, **kw)
            finetune(net, epochs(2, 1))
            sp = weight_sparsity(net, layers)
            extra = ", ".join(f"{k}={v!r}" for k, v in kw.items())
            add(item, f'ScorePruner(0.5, granularity="{gran}"{", " + extra if extra else ""}, layers={layers}).prune(lenet5)',
                fig(f"top-1 after 50 % of {layers[0]} removed as {note} + fine-tuning", top1(net), "%"),
                sparsity=sp, top1_before_finetune=before_ft, dense_top1=lenet_top1())
        run_item(item, one)


def row_greedy() -> None:
    from nncompress.analysis.macs import count_macs
    from nncompress.pruning.structured import prune_channels

    ds, _, _ = digits()
    net, x = lenet5_trained(), ds.x_test[:8]
    res = {s: prune_channels(net, x, "l1", 0.6, strategy=s) for s in ("independent", "greedy")}
    accs = {s: top1(m) for s, m in res.items()}
    macs = {s: count_macs(m, ds.input_shape).total_macs for s, m in res.items()}
    add("Li et al. greedy vs independent channel selection",
        'prune_channels(lenet5, x, "l1", 0.6, strategy="greedy") vs strategy="independent"',
        fig("top-1 greedy − independent at 60 % of channels, no fine-tuning", accs["greedy"] - accs["independent"], "pp"),
        top1=accs, macs=macs, dense_top1=lenet_top1())


def row_sensitivity_s() -> None:
    from nncompress.pruning import SensitivityPruner, sensitivity_analysis, sensitivity_to_s

    net = lenet5_trained()
    result = sensitivity_analysis(net, top1, levels=[0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95], progress=False)
    s = sensitivity_to_s(result, net, max_drop=1.0)
    pruned = SensitivityPruner(s).prune(copy.deepcopy(net))
    sp = weight_sparsity(pruned)
    add("sensitivity → per-layer s (pruning.sensitivity_to_s)",
        "s = sensitivity_to_s(sensitivity_analysis(lenet5, top1), lenet5, max_drop=1.0); SensitivityPruner(s).prune(lenet5)",
        fig("weight sparsity reached by SensitivityPruner(s)", 100 * sp, "%"),
        s={k: round(v, 4) for k, v in s.items()}, targets=result.targets(1.0), top1_no_finetune=top1(pruned), dense_top1=lenet_top1())


_MNIST = {}


def mnist5k_lenet():
    """LeNet-5 on mnist5k (28×28, 4000 train / 1000 test): held-out digits sit at 100 % for every NetAdapt
    proposal, so ΔAcc would be 0 and the ratio rule would tie; mnist5k's held-out split does tell proposals apart."""
    from nncompress.architectures import build_model

    if "net" not in _MNIST:
        ds = load_dataset("mnist5k", seed=SEED)
        train_loader, test_loader = make_loaders(ds, batch_size=64, seed=SEED)
        torch.manual_seed(SEED)
        net = build_model("lenet5", ds.input_shape, ds.num_classes)
        train(net, train_loader, TrainConfig(epochs=epochs(3, 1), lr=0.02, seed=SEED, progress=False))
        _MNIST.update(ds=ds, test_loader=test_loader, net=net.eval(), top1=evaluate(net, test_loader))
    return _MNIST["ds"], copy.deepcopy(_MNIST["net"])


def _netadapt(data: str = "digits", **kwargs):
    from torch.utils.data import DataLoader, TensorDataset

    from nncompress.pruning.structured.netadapt import netadapt

    ds, net = mnist5k_lenet() if data == "mnist5k" else (digits()[0], lenet5_trained())
    n = len(ds.x_train) - len(ds.x_train) // 10  # proposals judged on 10 % of the training set held out
    fit = DataLoader(TensorDataset(ds.x_train[:n], ds.y_train[:n]), batch_size=64, shuffle=True,
                     generator=torch.Generator().manual_seed(SEED))
    held = DataLoader(TensorDataset(ds.x_train[n:], ds.y_train[n:]), batch_size=256)
    return netadapt(net, fit, held, ds.x_test[:32], short_steps=epochs(10, 3), long_epochs=epochs(1, 1),
                    threads=THREADS, repeats=5, seed=SEED, **kwargs)


def row_netadapt_ratio() -> None:
    from nncompress.pruning.structured.measure import latency_pair_ms

    out = {}
    for rule in ("accuracy", "ratio"):
        r = _netadapt("mnist5k", resources={"latency": 0.5}, rule=rule, step=0.15, decay=1.0)
        out[rule] = {"top1": evaluate(r.model, _MNIST["test_loader"]), "reached": r.reached, "model": r.model,
                     "steps": [{"group": h["group"], "removed": h["removed"], "score": round(h["score"], 4),
                                "val_top1": h["val_top1"]} for h in r.history]}
    ds = _MNIST["ds"]
    ratio_ms, accuracy_ms = latency_pair_ms(out["ratio"]["model"], out["accuracy"]["model"], ds.x_test[:32], repeats=20)
    add("NetAdapt ΔAcc/|ΔLat| rule (MobileNetV3)",
        'netadapt(lenet5, fit, held, x, resources={"latency": 0.5}, rule="ratio", step=0.15, decay=1.0)  # mnist5k',
        fig("mnist5k test top-1 with rule='ratio' at 50 % latency (long-term fine-tuned)", out["ratio"]["top1"], "%"),
        top1_rule_accuracy=out["accuracy"]["top1"], reached={k: v["reached"] for k, v in out.items()},
        steps={k: v["steps"] for k, v in out.items()}, latency_ms={"ratio": ratio_ms, "accuracy": accuracy_ms},
        dense_top1=_MNIST["top1"])


def row_netadapt_multi() -> None:
    from nncompress.analysis.counts import count_parameters
    from nncompress.analysis.macs import count_macs

    ds, _, _ = digits()
    budgets = {"latency": 0.8, "macs": 0.5, "params": 0.5, "energy": 0.6}
    r = _netadapt(resources=budgets, weights={"latency": 1, "macs": 1}, rule="ratio", step=0.1, decay=1.0)
    base = lenet5_trained()
    macs = count_macs(r.model, ds.input_shape).total_macs / count_macs(base, ds.input_shape).total_macs
    params = count_parameters(r.model).params / count_parameters(base).params
    add("NetAdapt several resources (latency, MACs, params, energy)",
        'netadapt(lenet5, fit, held, x, resources={"latency": 0.8, "macs": 0.5, "params": 0.5, "energy": 0.6}, '
        'weights={"latency": 1, "macs": 1}, rule="ratio")',
        fig("MACs after / before (counted by analysis.macs; budget 0.5)", macs, "ratio"),
        params_ratio=params, all_budgets_met=r.reached, resources_before=r.resources_before, resources_after=r.resources_after,
        top1=top1(r.model), dense_top1=lenet_top1(), iterations=len(r.history))


# ---------------------------------------------------------------------------------------------- quantization
def _ristretto(fmt: str, w_bits: int, a_bits: int) -> float:
    from nncompress.core.layers import compressible_layers
    from nncompress.quantization.ristretto import LayerBits, activation_ranges, simulate

    net = lenet5_trained()
    ranges = activation_ranges(net, top1)
    bits = {n: LayerBits(w_bits, a_bits) for n in compressible_layers(net)}
    with simulate(net, bits, fmt, ranges):
        return top1(net)


def row_ristretto(targets: list) -> None:
    from nncompress.quantization.ristretto import trim_bits

    for fmt, item, wb, ab in (("dynamic_fixed_point", "Ristretto dynamic fixed point", 8, 8),
                              ("minifloat", "Ristretto minifloat", 8, 8),
                              ("power_of_two", "Ristretto power-of-two weights", 4, 8)):
        run_item(item, lambda fmt=fmt, item=item, wb=wb, ab=ab: add(
            item, f'with simulate(lenet5, {{layer: LayerBits({wb}, {ab})}}, "{fmt}", activation_ranges(lenet5, top1)): top1(lenet5)',
            fig(f"top-1, every layer at {wb}-bit weights / {ab}-bit activations", _ristretto(fmt, wb, ab), "%"),
            dense_top1=lenet_top1()))

    def trimming():
        net = lenet5_trained()
        res = trim_bits(net, top1, formats="dynamic_fixed_point", max_drop_pp=1.0, start_bits=epochs(16, 10), min_bits=2)
        drop = res.fp32_accuracy - res.accuracy
        bits = {k: {"weights": v.weights, "activations": v.activations} for k, v in res.layer_bits.items()}
        add("Ristretto bit trimming", 'trim_bits(lenet5, top1, formats="dynamic_fixed_point", max_drop_pp=1.0)',
            fig("top-1 drop with the trimmed widths applied together", drop, "pp"), bits_per_layer=bits,
            fp32_top1=res.fp32_accuracy, trimmed_top1=res.accuracy, evaluations=res.evaluations)
        targets.append(target("Ristretto trimming on LeNet-5: top-1 within 1 pp of fp32 (bits per layer in the row)", "<= 1 pp",
                              round(drop, 3), drop <= 1.0))
    run_item("Ristretto bit trimming", trimming)


def _small_cnn(width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, 10))


def row_pact() -> None:
    from nncompress.quantization import pact_alphas, replace_relu_with_pact

    torch.manual_seed(SEED)
    net = _small_cnn(16)
    replace_relu_with_pact(net, bits=4, alpha_init=6.0)
    finetune(net, epochs(15, 2), lr=0.05)
    add("PACT", "replace_relu_with_pact(cnn, bits=4, alpha_init=6.0); train(cnn, digits)",
        fig("top-1 with 4-bit PACT activations", top1(net), "%"), alphas=pact_alphas(net))


def row_wrpn() -> None:
    from nncompress.quantization import replace_relu_with_pact, widen

    accs = {}
    res = None
    for factor in (1.0, 2.0):
        torch.manual_seed(SEED)
        base = _small_cnn(4)
        res = widen(base, factor, in_shape=(1, 8, 8)) if factor != 1.0 else None
        net = res.model if res is not None else base
        replace_relu_with_pact(net, bits=2, alpha_init=6.0)
        finetune(net, epochs(15, 2), lr=0.05)
        accs[factor] = top1(net)
    add("WRPN widening", "widen(cnn, 2.0, in_shape=(1, 8, 8)); 2-bit PACT activations; train on digits",
        fig("top-1 gain of the 2× wide net over the 1× net, both with 2-bit activations", accs[2.0] - accs[1.0], "pp"),
        top1_1x=accs[1.0], top1_2x=accs[2.0], params=[res.params_before, res.params_after] if hasattr(res, "params_before") else None)


def row_lstm_int8(targets: list) -> None:
    from nncompress.export.onnx import ort_session
    from nncompress.quantization.rnn_int8 import int8_weight_bytes, integer_ops, lstm_to_onnx, quantize_lstm_dynamic

    ds, _, _ = digits()
    net = lstm_trained()
    fp32 = lstm_to_onnx(net, ds.x_test[:4])
    int8 = quantize_lstm_dynamic(fp32)
    ops = integer_ops(int8)
    if not ops.get("DynamicQuantizeLSTM"):
        raise RuntimeError(f"no DynamicQuantizeLSTM in the quantized graph (integer ops: {ops})")
    x = ds.x_test.float().numpy()
    sessions = {"fp32": ort_session(fp32, THREADS), "int8": ort_session(int8, THREADS)}
    acc = {k: 100.0 * float((s.run(None, {"input": x})[0].argmax(1) == ds.y_test.numpy()).mean()) for k, s in sessions.items()}
    feed = {"input": x[:64]}
    times = {k: [] for k in sessions}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(epochs(60, 8)):  # interleaved: a slow-down from other processes hits both
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    drop = acc["fp32"] - acc["int8"]
    add("LSTM dynamic int8 on real kernels (ONNX Runtime DynamicQuantizeLSTM)",
        "quantize_lstm_dynamic(lstm_to_onnx(lstm, x)); ort_session(...).run (batch 64, 1 thread)",
        fig("int8 latency, median of interleaved runs, batch 64", ms["int8"], "ms"),
        fp32_ms=ms["fp32"], speedup=ms["fp32"] / ms["int8"], top1=acc, integer_ops=ops,
        onnx_bytes={"fp32": len(fp32), "int8": len(int8)}, int8_weight_bytes=int8_weight_bytes(int8))
    targets.append(target("LSTM dynamic int8 on ONNX Runtime's integer LSTM kernel (DynamicQuantizeLSTM in the graph, "
                          "latency in the row): top-1 drop vs fp32 ONNX", "<= 1 pp", round(drop, 3), drop <= 1.0))


# ---------------------------------------------------------------------------------------------- low rank
def row_cp() -> None:
    from nncompress.lowrank.factorize import factorize

    net = lenet5_trained()
    rep = factorize(net, "cp", ranks={"conv1": 6, "conv2": 16})
    before = top1(net)
    finetune(net, epochs(3, 1), lr=0.01)  # the CLI's defaults: 3 epochs at lr 0.01 (unbalanced CP went to NaN here)
    finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if not finite:
        raise RuntimeError("CP fine-tuning produced non-finite weights")
    add("CP decomposition, balanced factors fine-tune without NaN (lowrank)",
        'factorize(lenet5, "cp", ranks={"conv1": 6, "conv2": 16}); train(lenet5, digits, epochs=3, lr=0.01)',
        fig("top-1 after CP + fine-tuning (weights finite)", top1(net), "%"), top1_before_finetune=before,
        param_ratio=rep.param_ratio, dense_top1=lenet_top1())


def row_separable() -> None:
    from nncompress.lowrank.factorize import factorize

    ds, _, _ = digits()
    net = lenet5_trained()
    rep = factorize(net, "separable", ratio=3.0, ratio_of="macs", example_input=ds.x_test[:1])
    before = top1(net)
    finetune(net, epochs(3, 1), lr=0.01)
    add("spatially separable decomposition (lowrank separable)", 'factorize(lenet5, "separable", ratio=3.0, ratio_of="macs", example_input=x)',
        fig("conv MACs original / separable", rep.mac_ratio, "ratio"), param_ratio=rep.param_ratio,
        top1_before_finetune=before, top1_after_finetune=top1(net), dense_top1=lenet_top1())


# ---------------------------------------------------------------------------------------------- architectures
def row_params() -> None:
    from nncompress.architectures.zoo import compare_published

    names = {"googlenet": "GoogLeNet", "bn_inception": "BN-Inception", "xception": "Xception", "mnasnet_a1": "MnasNet-A1",
             "efficientnet_b0": "EfficientNet-B0", "densenet121": "DenseNet-121"}
    for key, label in names.items():
        def one(key=key, label=label):
            r = compare_published([key])[0]
            add(f"{label} parameter count vs published", f'compare_published(["{key}"])',
                fig("parameter count error vs published", 100 * r["params_error"], "%"), params=r["params"],
                published_params=r["published_params"], macs=r["macs"], published_macs=r["published_macs"],
                macs_error_pct=100 * r["macs_error"], source=r["source"])
        run_item(f"{label} parameter count vs published", one)


def row_inception_8x8() -> None:
    from nncompress.architectures import build_model
    from nncompress.architectures.summary import count_macs as arch_macs

    ds, train_loader, _ = digits()
    torch.manual_seed(SEED)
    net = build_model("inception_v3", ds.input_shape, ds.num_classes, width_mult=0.125)
    train(net, train_loader, TrainConfig(epochs=epochs(6, 1), lr=0.05, seed=SEED, progress=False))
    add("Inception V3 on 8×8 inputs", 'build_model("inception_v3", (1, 8, 8), 10, width_mult=0.125); train(...)',
        fig("top-1 on digits (8×8)", top1(net), "%"), macs=arch_macs(net, ds.input_shape))


# ---------------------------------------------------------------------------------------------- search
_SEARCH = {}


def _search(resource: str = "latency") -> dict:
    from nncompress.search import MobileNetSpace, run_search

    if resource not in _SEARCH:
        space = MobileNetSpace(widths=(0.25, 0.5), depths=(1, 2), kernels=(3, 5), stages=((16, 2), (24, 2)))
        _SEARCH[resource] = run_search("digits", "reinforce" if resource == "latency" else "random", trials=epochs(6, 2),
                                       epochs=epochs(3, 1), latency_repeats=5, space=space, threads=THREADS, seed=SEED,
                                       progress=False, resource=resource)
    return _SEARCH[resource]


def row_reinforce() -> None:
    r = _search()
    add("REINFORCE controller (search)", 'run_search("digits", "reinforce", trials=6, epochs=3, space=small)',
        fig("best MnasNet reward (validation top-1 · (LAT/T)^−0.07)", r["best"]["reward"], "%"),
        rewards=[c["reward"] for c in r["candidates"]], baseline_reward=r["baseline"]["reward"])


def row_validation_winner() -> None:
    r = _search()
    add("validation-split winner (search)", 'run_search(..., val_fraction=0.2): winner chosen on validation, tested once',
        fig("winner's test top-1 (chosen on the validation split)", r["best_test_top1"], "%"),
        best_val_top1=r["best_val_top1"], n_fit=r["n_fit"], n_val=r["n_val"], n_test=r["n_test"], selection=r["selection"])


def _experiment(module: str, fn: str, quick_kwargs: dict) -> dict | None:
    try:
        mod = importlib.import_module(f"nncompress.search.{module}")
    except ImportError:
        return None
    f = getattr(mod, fn, None)
    if f is None:
        return None
    params = inspect.signature(f).parameters
    kwargs = {"seed": SEED, "threads": THREADS, "progress": False}
    if QUICK:
        kwargs.update(quick_kwargs)
    return f(**{k: v for k, v in kwargs.items() if k in params})


def _pending(item: str, module: str) -> None:
    ROWS.append({"item": item, "status": f"pending: module nncompress.search.{module} not present", "call": None, "figure": None})
    print(f"  {item:58s} pending", flush=True)


def _first_number(d: dict, keys: tuple[str, ...]):
    for k in keys:
        if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool):
            return k, float(d[k])
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, float(v)
    raise ValueError("the experiment returned no numeric figure")


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def row_cascade() -> None:
    item = "cascades (search.cascade)"
    r = _experiment("cascade", "cascade_experiment", {"n_train": 600, "n_test": 150, "epochs": 2, "classifier_epochs": 2})
    if r is None:
        return _pending(item, "cascade")
    levels = r.get("levels") or []
    if levels and "mean_error_px" in levels[-1]:
        last = levels[-1]
        figure = fig(f"localization error after the last of {len(levels)} levels (mean)", float(last["mean_error_px"]), "px")
    else:
        key, value = _first_number(r, ("final_error_px", "error_px"))
        figure = fig(key, value, "px" if "px" in key else "")
    add(item, "cascade_experiment(seed=0, threads=1)", figure, levels=levels, **_scalars(r))


def row_sbnet() -> None:
    item = "SBNet sparse blocks (search.sbnet)"
    r = _experiment("sbnet", "sbnet_experiment", {"repeats": 3})
    if r is None:
        return _pending(item, "sbnet")
    rows = r.get("rows") or []
    if rows and "speedup" in rows[0]:
        pick = next((x for x in rows if "canvas" in str(x.get("mask", "")) or "foreground" in str(x.get("mask", "")).lower()),
                    min(rows, key=lambda x: abs(x.get("active_fraction", 1.0) - 0.25)))
        figure = fig(f"3×3 conv speed-up, sparse blocks vs dense ({pick.get('mask')}, "
                     f"{100 * pick.get('active_fraction', 0):.0f} % of blocks active), median of interleaved runs",
                     float(pick["speedup"]), "×")
    else:
        key, value = _first_number(r, ("speedup",))
        figure = fig(key, value, "×" if key == "speedup" else "")
    add(item, "sbnet_experiment(seed=0, threads=1)", figure, rows=rows, **_scalars(r))


def row_selective_attention(targets: list) -> None:
    item = "selective attention (search.selective_attention)"
    saved_name = "selective attention: MACs saved vs classifying the whole canvas"
    drop_name = "selective attention: top-1 drop vs classifying the whole canvas"
    r = _experiment("selective_attention", "selective_attention_experiment", {"n_train": 1500, "n_test": 200, "epochs": 2})
    if r is None:
        _pending(item, "selective_attention")
        targets.append(target(saved_name, ">= 50 %", "pending: module not present", False))
        targets.append(target(drop_name, "<= 1 pp", "pending: module not present", False))
        return
    saved, drop = float(r["macs_saved_pct"]), float(r["drop_pp"])
    add(item, "selective_attention_experiment(seed=0, threads=1)", fig("MACs saved vs classifying the whole canvas", saved, "%"),
        **_scalars(r))
    targets.append(target(saved_name, ">= 50 %", round(saved, 2), saved >= 50.0))
    targets.append(target(drop_name, "<= 1 pp", round(drop, 3), drop <= 1.0))


def row_energy() -> None:
    from nncompress.analysis.report import analyze
    from nncompress.pruning import LevelPruner, finalize
    from nncompress.report.document import build_report

    ds, _, _ = digits()
    net = lenet5_trained()

    def analyze_row():
        a = analyze(net, ds.input_shape)
        add("energy in analyze (analysis.energy)", "analyze(lenet5, (1, 8, 8)).totals['energy_pj']",
            fig("LeNet-5 energy estimate per sample (Horowitz 45 nm, fp32, DRAM weights)", a.totals["energy_pj"] / 1e6, "µJ"),
            macs=a.totals.get("macs"), dense_bytes=a.totals.get("dense_bytes"))

    def report_row():
        pruned = finalize(LevelPruner(0.9).prune(copy.deepcopy(net)))
        rep = build_report(net, pruned, ds.input_shape, lenet_top1(), top1(pruned))
        before = analyze(net, ds.input_shape).totals["energy_pj"]
        after = sum(r["energy_after_pj"] for r in rep.layers)
        add("energy in report (report.build_report)", "build_report(lenet5, LevelPruner(0.9) pruned, (1, 8, 8), ...)",
            fig("energy estimate before / after 90 % pruning (CSR where smaller)", before / after, "ratio"),
            energy_before_pj=before, energy_after_pj=after)

    def search_row():
        r = _search("energy")
        add("energy in the search reward (search.reward.energy_reward)", 'run_search("digits", "random", resource="energy", ...)',
            fig("best reward ACC·(E/E_target)^−0.07", r["best"]["reward"], "%"), target_energy_pj=r["target_energy_pj"],
            best_energy_pj=r["best"].get("energy_pj"))

    run_item("energy in analyze (analysis.energy)", analyze_row)
    run_item("energy in report (report.build_report)", report_row)
    run_item("energy in the search reward (search.reward.energy_reward)", search_row)


# ---------------------------------------------------------------------------------------------- main
# every item of issue 17, one row each (sub-items of one line of the issue are rows of their own)
ITEMS = [
    "RNN/LSTM/GRU pruner (pruning.rnn)", "APoZ (Hu et al. 2016)", "OBD (Hessian diagonal)", "gradient saliency (Taylor)",
    "SNIP at init", "data-free pruning (SynFlow)", "kernel-level granularity", "vector-level granularity", "block granularity",
    "Li et al. greedy vs independent channel selection", "sensitivity → per-layer s (pruning.sensitivity_to_s)",
    "NetAdapt ΔAcc/|ΔLat| rule (MobileNetV3)", "NetAdapt several resources (latency, MACs, params, energy)",
    "Ristretto dynamic fixed point", "Ristretto minifloat", "Ristretto power-of-two weights", "Ristretto bit trimming",
    "PACT", "WRPN widening", "CP decomposition, balanced factors fine-tune without NaN (lowrank)",
    "spatially separable decomposition (lowrank separable)",
    "GoogLeNet parameter count vs published", "BN-Inception parameter count vs published", "Xception parameter count vs published",
    "MnasNet-A1 parameter count vs published", "EfficientNet-B0 parameter count vs published",
    "DenseNet-121 parameter count vs published", "Inception V3 on 8×8 inputs", "REINFORCE controller (search)",
    "validation-split winner (search)", "cascades (search.cascade)", "SBNet sparse blocks (search.sbnet)",
    "selective attention (search.selective_attention)", "energy in analyze (analysis.energy)",
    "energy in report (report.build_report)", "energy in the search reward (search.reward.energy_reward)",
    "LSTM dynamic int8 on real kernels (ONNX Runtime DynamicQuantizeLSTM)",
]


def main() -> None:
    global QUICK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs; checks every call, writes nothing")
    ap.add_argument("--only", default=None, help="run only the rows whose item contains this text (with --quick, for debugging)")
    args = ap.parse_args()
    QUICK = args.quick
    if args.only and not QUICK:
        ap.error("--only is for --quick runs: a results file holds every row")
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    targets: list = []
    steps = [
        ("RNN/LSTM/GRU pruner", lambda: run_item(ITEMS[0], lambda: row_rnn_pruner(targets))),
        ("APoZ OBD Taylor", row_saliency),
        ("SNIP", lambda: run_item("SNIP at init", row_snip)),
        ("SynFlow", lambda: run_item("data-free pruning (SynFlow)", row_synflow)),
        ("granularity", row_granularity),
        ("greedy", lambda: run_item("Li et al. greedy vs independent channel selection", row_greedy)),
        ("sensitivity", lambda: run_item("sensitivity → per-layer s (pruning.sensitivity_to_s)", row_sensitivity_s)),
        ("NetAdapt ratio", lambda: run_item("NetAdapt ΔAcc/|ΔLat| rule (MobileNetV3)", row_netadapt_ratio)),
        ("NetAdapt several", lambda: run_item("NetAdapt several resources (latency, MACs, params, energy)", row_netadapt_multi)),
        ("Ristretto", lambda: row_ristretto(targets)),
        ("PACT", lambda: run_item("PACT", row_pact)),
        ("WRPN", lambda: run_item("WRPN widening", row_wrpn)),
        ("CP", lambda: run_item("CP decomposition, balanced factors fine-tune without NaN (lowrank)", row_cp)),
        ("separable", lambda: run_item("spatially separable decomposition (lowrank separable)", row_separable)),
        ("parameter count", row_params),
        ("Inception", lambda: run_item("Inception V3 on 8×8 inputs", row_inception_8x8)),
        ("REINFORCE", lambda: run_item("REINFORCE controller (search)", row_reinforce)),
        ("validation-split", lambda: run_item("validation-split winner (search)", row_validation_winner)),
        ("cascades", lambda: run_item("cascades (search.cascade)", row_cascade)),
        ("SBNet", lambda: run_item("SBNet sparse blocks (search.sbnet)", row_sbnet)),
        ("selective attention", lambda: run_item("selective attention (search.selective_attention)",
                                                 lambda: row_selective_attention(targets))),
        ("energy", row_energy),
        ("LSTM dynamic int8", lambda: run_item(ITEMS[-1], lambda: row_lstm_int8(targets))),
    ]
    for name, step in steps:
        if args.only is None or args.only.lower() in name.lower():
            step()

    by_item = {}
    for r in ROWS:
        if r["item"] not in ITEMS:
            raise SystemExit(f"row '{r['item']}' is not one of ITEMS: fix the script")
        by_item.setdefault(r["item"], []).append(r)
    if any(len(v) > 1 for v in by_item.values()):
        raise SystemExit(f"items with more than one row: {[k for k, v in by_item.items() if len(v) > 1]}")
    stated = [r for r in ROWS if r["status"] == "ok" or r["status"].startswith("n/a:")]
    missing = [i for i in ITEMS if i not in by_item or by_item[i][0] not in stated]  # no row, an error, or pending
    targets.append(target("no missing item: rows with status ok or a stated n/a == number of items", f"{len(ITEMS)} of {len(ITEMS)}",
                          f"{len(stated)} of {len(ITEMS)}", not missing))
    seconds = time.perf_counter() - t0
    print(f"\n{len(stated)}/{len(ITEMS)} rows ok or n/a in {seconds:.0f} s; missing: {missing or 'none'}")
    for t in targets:
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['name']}: {t['measured']} (target {t['target']})")
    if QUICK:
        print("--quick: nothing written")
        return
    path = write_results("seed_rows", {"environment": environment(THREADS), "seconds": round(seconds, 1), "items": len(ITEMS),
                                       "targets": targets, "rows": ROWS, "missing": missing})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
