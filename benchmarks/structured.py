"""Structured pruning side by side with Torch-Pruning (Fang et al., DepGraph, CVPR 2023; `torch-pruning` 1.6).

Same ResNet-20 trained on mnist5k, same target (50% of MACs removed, uniform per-group ratio found by
bisection for both), same L1 filter criterion, same fine-tuning budget and seed. Printed: params, MACs,
measured CPU latency (median over interleaved repeats, fixed thread count), top-1 before/after fine-tuning;
then the criteria ablation of Li et al. 2017 (L1 vs random vs largest-norm, each over several fine-tuning
seeds; one criterion is called better than another only when the gap in mean top-1 exceeds two standard errors
of the difference and two test samples, else the pair is a tie), and a NetAdapt run on a LeNet-5. Writes
benchmarks/results/structured.json.

    .venv/bin/python benchmarks/structured.py            # ~6-8 min on 2 shared cores
"""
from __future__ import annotations

import copy
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse

from bench_common import environment, target, write_results
from nncompress.architectures import build_model
from nncompress.data import Dataset, load_dataset, make_loaders
from nncompress.pruning.structured import count_macs, count_params, prune_channels
from nncompress.pruning.structured.measure import latency_ms
from nncompress.pruning.structured.netadapt import FirstBatches, netadapt
from nncompress.training import TrainConfig, evaluate, train

THREADS = 1
LAT_BATCH = 64
REPEATS = 25
TRAIN_EPOCHS = 3
FT_EPOCHS = 2
ABLATION_STEPS = 30  # batches of fine-tuning in the criteria ablation
ABLATION_SEEDS = (0, 1, 2)  # fine-tuning seeds per criterion (random: also the channel draw)
ORDER_Z = 2.0  # a gap counts as an ordering only beyond ORDER_Z standard errors of the difference of means
REMOVE_MACS = 0.5
ROUND_TO = 8  # kept widths in multiples of 8 (AVX2 blocks), for both tools
OUT = Path(__file__).parent / "results" / "structured.json"


def finetune(model, ds, epochs=FT_EPOCHS, steps=None, seed=1):
    """The same budget for everyone: a fresh loader with the same seed, so every model sees the same batches."""
    loader, _ = make_loaders(ds, batch_size=64, seed=seed)
    if steps is not None:
        loader = FirstBatches(loader, steps)
    schedule = "cosine" if steps is None else "constant"
    train(model, loader, TrainConfig(epochs=epochs, lr=0.01, weight_decay=5e-4, lr_schedule=schedule, seed=seed, progress=False))
    return model


def compare(a: list[float], b: list[float], z: float = ORDER_Z, min_gap: float = 0.0) -> tuple[str, float, float]:
    """(">", "<" or "tie", gap of means, threshold): a beats b only when mean(a) − mean(b) exceeds both
    z·sqrt(se_a² + se_b²) (se = sample std / sqrt(n)) and `min_gap` (the metric's resolution, e.g. two test
    samples). A single run has no spread estimate, so with one seed on either side only `min_gap` guards the call;
    a 0.03 pp gap between seeds that scatter by 0.5 pp is a tie, not an ordering."""
    gap = statistics.mean(a) - statistics.mean(b)
    se2 = sum(statistics.variance(v) / len(v) for v in (a, b) if len(v) > 1)
    threshold = max(z * se2 ** 0.5, min_gap)
    return (">" if gap > threshold else "<" if gap < -threshold else "tie"), gap, threshold


def ordering(results: dict[str, list[float]], z: float = ORDER_Z, min_gap: float = 0.0) -> tuple[str, dict[str, dict]]:
    """Criteria by mean, best first, joined by ">" where the neighbours differ beyond the threshold and "≈"
    where they tie; and every pairwise verdict (ties are not transitive, so the chain alone can hide one)."""
    names = sorted(results, key=lambda k: -statistics.mean(results[k]))
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            verdict, gap, threshold = compare(results[a], results[b], z, min_gap)
            pairs[f"{a} vs {b}"] = {"verdict": verdict, "gap_pp": gap, "threshold_pp": threshold}
    chain = names[0]
    for a, b in zip(names, names[1:]):
        chain += (" > " if pairs[f"{a} vs {b}"]["verdict"] == ">" else " ≈ ") + b
    return chain, pairs


def torch_pruning_at_macs(model, x, remove_macs):
    """Torch-Pruning's MetaPruner, L1 magnitude importance, uniform ratio bisected to the same MAC target."""
    import torch_pruning as tp

    base = count_macs(model, x)

    def pruned(ratio):
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[m.fc], round_to=ROUND_TO)
        pruner.step()
        return m

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count_macs(pruned(mid), x) <= (1 - remove_macs) * base else (mid, hi)
    return pruned(hi), hi


def interleaved_latency(models: dict, x, repeats=REPEATS, threads=THREADS):
    """Median ms per model; the models take turns so background load hits all of them alike."""
    times = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(latency_ms(m, x, repeats=3, warmup=1, threads=threads))
    return {k: statistics.median(v) for k, v in times.items()}


def semi_structured_speedup(n: int = 8192, batch: int = 4096, repeats: int = 20) -> dict:
    """Dense vs 2:4 semi-structured fp16 linear (n×n) on a CUDA GPU; skipped without one."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from nncompress.pruning.mask import finalize
    from nncompress.pruning.structured.nm import apply_nm_sparsity, to_semi_structured

    lin = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False))
    apply_nm_sparsity(lin, 2, 4)
    finalize(lin)
    dense = lin[0].half().cuda().eval()
    x = torch.randn(batch, n, dtype=torch.half, device="cuda")

    def cuda_ms(layer):
        with torch.no_grad():
            for _ in range(5):
                layer(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                layer(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        return statistics.median(times)

    dense_ms = cuda_ms(dense)
    sparse = to_semi_structured(copy.deepcopy(dense))
    sparse_ms = cuda_ms(sparse)
    return {"n": n, "batch": batch, "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "device": torch.cuda.get_device_name()}


def row(name, m, x, top1_pruned, top1_ft, lat, base):
    return {"method": name, "params": count_params(m), "macs": count_macs(m, x), "latency_ms": round(lat, 3),
            "speedup": round(base["latency_ms"] / lat, 3), "macs_ratio": round(base["macs"] / count_macs(m, x), 3),
            "top1_pruned": top1_pruned, "top1_finetuned": top1_ft, "drop_pp": round(base["top1"] - top1_ft, 2)}


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    t0 = time.time()
    ds = load_dataset("mnist5k")
    train_loader, test_loader = make_loaders(ds, batch_size=64)
    x1 = ds.x_train[:2]
    xb = ds.x_test[:LAT_BATCH]

    torch.manual_seed(0)
    model = build_model("resnet20", ds.input_shape, ds.num_classes)
    train(model, train_loader, TrainConfig(epochs=TRAIN_EPOCHS, lr=0.05, weight_decay=5e-4, progress=False))
    model.eval()
    base = {"params": count_params(model), "macs": count_macs(model, x1), "top1": evaluate(model, test_loader)}
    print(f"ResNet-20 on mnist5k: {base['params']:,} params, {base['macs']:,} MACs, top-1 {base['top1']:.2f}%  "
          f"({time.time() - t0:.0f} s)", flush=True)

    ours = prune_channels(model, x1, "l1", remove_macs=REMOVE_MACS, round_to=ROUND_TO)
    taylor = prune_channels(model, x1, "taylor", remove_macs=REMOVE_MACS, round_to=ROUND_TO,
                            data=list(FirstBatches(train_loader, 8)))
    peer, peer_ratio = torch_pruning_at_macs(model, x1, REMOVE_MACS)
    same_shapes = [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in peer.parameters()]
    same_channels = same_shapes and all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), peer.state_dict().values()))
    pruned_top1 = {"ours": evaluate(ours, test_loader), "taylor": evaluate(taylor, test_loader), "peer": evaluate(peer, test_loader)}
    for m in (ours, taylor, peer):
        finetune(m, ds)
    lat = interleaved_latency({"base": model, "ours": ours, "peer": peer, "taylor": taylor}, xb)
    base["latency_ms"] = lat["base"]
    # deployed form: batch norm folded into the convolutions (torch.fx), same for all three
    fused = interleaved_latency({k: fuse(copy.deepcopy(m).eval()) for k, m in {"base": model, "ours": ours, "peer": peer}.items()}, xb)
    rows = [row("nncompress l1", ours, x1, pruned_top1["ours"], evaluate(ours, test_loader), lat["ours"], base),
            row("nncompress taylor", taylor, x1, pruned_top1["taylor"], evaluate(taylor, test_loader), lat["taylor"], base),
            row(f"torch-pruning l1 (ratio {peer_ratio:.3f})", peer, x1, pruned_top1["peer"], evaluate(peer, test_loader), lat["peer"], base)]
    lat2 = interleaved_latency({"base": model, "ours": ours, "peer": peer}, xb, repeats=REPEATS // 2, threads=2)
    print(f"\n50% of MACs removed; latency batch {LAT_BATCH}, {THREADS} thread, median of {REPEATS} interleaved repeats; "
          f"fine-tune {FT_EPOCHS} epochs, same seed")
    print(f"{'method':38s} {'params':>8s} {'MACs':>11s} {'MAC×':>5s} {'ms':>7s} {'speedup':>7s} {'pruned':>7s} {'tuned':>7s} {'drop':>6s}")
    print(f"{'baseline':38s} {base['params']:8,d} {base['macs']:11,d} {1.0:5.2f} {base['latency_ms']:7.2f} {1.0:7.2f} "
          f"{base['top1']:7.2f} {base['top1']:7.2f} {0.0:6.2f}")
    for r in rows:
        print(f"{r['method']:38s} {r['params']:8,d} {r['macs']:11,d} {r['macs_ratio']:5.2f} {r['latency_ms']:7.2f} "
              f"{r['speedup']:7.2f} {r['top1_pruned']:7.2f} {r['top1_finetuned']:7.2f} {r['drop_pp']:6.2f}")
    print(f"same layer widths as torch-pruning: {same_shapes}; same channels kept: {same_channels} "
          "(then latency differences between the two are timing noise from the shared CPU)")
    print(f"batch norm folded (1 thread): speedup ours {fused['base'] / fused['ours']:.2f}×, torch-pruning {fused['base'] / fused['peer']:.2f}× "
          f"({fused['base']:.1f} / {fused['ours']:.1f} / {fused['peer']:.1f} ms)")
    print(f"2 threads: speedup ours {lat2['base'] / lat2['ours']:.2f}×, torch-pruning {lat2['base'] / lat2['peer']:.2f}×", flush=True)

    # Li et al. 2017 ablation: same MAC target, which filters to drop; every criterion over the same fine-tuning
    # seeds (l1 and largest prune the same channels each time, so their spread is the fine-tuning noise)
    ablation, tuned_by = {}, {}
    min_gap = 2 * 100.0 / len(ds.y_test)  # two test samples, in pp: below the metric's resolution a gap means nothing
    for crit in ("l1", "largest", "random"):
        accs, tuned = [], []
        for s in ABLATION_SEEDS:
            m = prune_channels(model, x1, crit, remove_macs=REMOVE_MACS, seed=s, round_to=ROUND_TO)
            accs.append(evaluate(m, test_loader))
            finetune(m, ds, epochs=1, steps=ABLATION_STEPS, seed=1 + s)
            tuned.append(evaluate(m, test_loader))
        tuned_by[crit] = tuned
        ablation[crit] = {"top1_pruned": statistics.mean(accs), "top1_short_finetune": statistics.mean(tuned),
                          "top1_short_finetune_runs": tuned, "std_pp": statistics.stdev(tuned) if len(tuned) > 1 else 0.0,
                          "seeds": list(ABLATION_SEEDS)}
    chain, pairs = ordering(tuned_by, ORDER_Z, min_gap)
    ordering_result = {"after_short_finetune": chain, "pairs": pairs, "z": ORDER_Z, "min_gap_pp": min_gap,
                       "rule": f"a > b only if mean gap > max({ORDER_Z:g}·SE of the difference, two test samples); else tie",
                       # keys name the better-by-mean criterion first, so a missing key means the order is reversed
                       "li_2017_order_holds": pairs.get("l1 vs random", {}).get("verdict") == ">"
                       and pairs.get("random vs largest", {}).get("verdict") == ">"}
    print(f"\ncriterion ablation (50% MACs removed): top-1 right after pruning → after {ABLATION_STEPS} batches of fine-tuning "
          f"(mean ± std over {len(ABLATION_SEEDS)} seeds)")
    for crit in ("l1", "largest", "random"):
        r = ablation[crit]
        print(f"  {crit:8s} {r['top1_pruned']:6.2f}% → {r['top1_short_finetune']:6.2f}% ± {r['std_pp']:.2f}")
    print(f"  ordering after fine-tuning ({ordering_result['rule']}): {chain}")
    for k, v in pairs.items():
        print(f"    {k}: {v['verdict']} (gap {v['gap_pp']:+.2f} pp, threshold {v['threshold_pp']:.2f} pp)", flush=True)

    # NetAdapt on LeNet-5: measured-latency budget of 50%
    torch.manual_seed(0)
    lenet = build_model("lenet5", ds.input_shape, ds.num_classes)
    train(lenet, train_loader, TrainConfig(epochs=3, lr=0.02, progress=False))
    lenet_top1 = evaluate(lenet, test_loader)
    # NetAdapt picks proposals on data held out of the training set, never on the test set
    holdout_train, holdout_val = make_loaders(Dataset(ds.name, ds.x_train[:3500], ds.y_train[:3500], ds.x_train[3500:],
                                                      ds.y_train[3500:], ds.num_classes), batch_size=64)
    na = netadapt(lenet, holdout_train, holdout_val, ds.x_test[:32], latency_budget=0.5, short_steps=15, long_epochs=2,
                  threads=THREADS)
    na_lat = interleaved_latency({"base": lenet, "netadapt": na.model}, ds.x_test[:32])
    netadapt_result = {"top1_before": lenet_top1, "top1_after": evaluate(na.model, test_loader),
                       "latency_ms_before": na_lat["base"], "latency_ms_after": na_lat["netadapt"],
                       "speedup": na_lat["base"] / na_lat["netadapt"], "iterations": len(na.history), "reached_budget": na.reached,
                       "params_before": count_params(lenet), "params_after": count_params(na.model),
                       "steps": [{k: h[k] for k in ("group", "removed", "measured_ms", "target_ms", "val_top1")} for h in na.history],
                       "widths": {k: v for k, v in na.history[-1]["widths"].items()} if na.history else {}}
    print(f"\nNetAdapt LeNet-5, budget 50% of measured latency (batch 32, {THREADS} thread): "
          f"{na_lat['base']:.2f} → {na_lat['netadapt']:.2f} ms ({netadapt_result['speedup']:.2f}×), "
          f"top-1 {lenet_top1:.2f} → {netadapt_result['top1_after']:.2f}%, {netadapt_result['iterations']} iterations, "
          f"budget {'met' if na.reached else 'NOT met'} by its own measurement ({na.latency_ms_before:.2f} → {na.latency_ms_after:.2f} ms)")
    for h in netadapt_result["steps"]:
        print(f"  removed {h['removed']:3d} from {h['group']:6s} → measured {h['measured_ms']:.2f} ms (target {h['target_ms']:.2f}), val top-1 {h['val_top1']:.1f}%")

    nm_gpu = semi_structured_speedup()
    print(f"\n2:4 semi-structured sparse linear on GPU: {nm_gpu}")

    result = {"model": "resnet20", "dataset": "mnist5k", "threads": THREADS, "latency_batch": LAT_BATCH, "repeats": REPEATS,
              "train_epochs": TRAIN_EPOCHS, "finetune_epochs": FT_EPOCHS, "remove_macs": REMOVE_MACS,
              "baseline": base, "methods": rows, "same_widths_as_peer": same_shapes, "same_channels_as_peer": same_channels,
              "bn_folded_speedup": {"ours": fused["base"] / fused["ours"], "peer": fused["base"] / fused["peer"], "ms": fused},
              "round_to": ROUND_TO, "two_threads": {"speedup_ours": lat2["base"] / lat2["ours"], "speedup_peer": lat2["base"] / lat2["peer"]},
              "criteria_ablation": ablation, "criteria_ordering": ordering_result, "netadapt_lenet5": netadapt_result, "nm_2_4_gpu": nm_gpu,
              "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
              "seconds": round(time.time() - t0, 1)}
    result["targets"] = targets(rows, pairs)
    result["environment"] = environment([THREADS, 2])
    write_results("structured", result, OUT)


def _verdict(pairs: dict[str, dict], a: str, b: str) -> str:
    """'>' when a beats b beyond the ablation's threshold, '<' when b beats a, else 'tie' (keys name the better first)."""
    if f"{a} vs {b}" in pairs:
        return pairs[f"{a} vs {b}"]["verdict"]
    return {">": "<", "<": ">"}.get(pairs[f"{b} vs {a}"]["verdict"], "tie")


def targets(rows: list[dict], pairs: dict[str, dict]) -> list[dict]:
    """Issue 4's targets from this run: speed-up and accuracy of 50 % MAC removal, against the peer; Li et al.'s order."""
    ours, peer = rows[0], rows[2]
    out = [target(f"L1 channel removal speed-up (batch {LAT_BATCH}, {THREADS} thread)", ">= 1.6x", ours["speedup"], ours["speedup"] >= 1.6),
           target("top-1 drop after fine-tuning", "<= 1 pp", ours["drop_pp"], ours["drop_pp"] <= 1.0),
           target("top-1 minus the peer's (Torch-Pruning, same MAC cut)", ">= 0 pp", ours["top1_finetuned"] - peer["top1_finetuned"],
                  ours["top1_finetuned"] >= peer["top1_finetuned"])]
    for other in ("random", "largest"):
        v = _verdict(pairs, "l1", other)
        out.append(target(f"L1 beats {other} filters (Li et al. 2017)", f"l1 > {other} beyond {ORDER_Z:g} SE", f"l1 {v} {other}", v == ">"))
    return out


if __name__ == "__main__":
    main()
