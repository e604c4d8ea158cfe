"""Quantization-aware training: train through fake quantizers so the weights adapt to the grid.

Weights and activations are fake-quantized in forward; gradients pass by the straight-through estimator
(`ste`: min-max weight ranges, EMA activation ranges; Jacob et al. 2018) or learn the step sizes (`lsq`;
Esser et al. 2020). Conv → BN pairs are trained with BN folded into the quantized weights (Krishnamoorthi
2018, §3.2). Fine-tuning starts from a trained float model, so the learning rate is a tenth of a typical
training rate by default.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.utils.data import DataLoader

from nncompress.quantization.fake_quant import FakeQuantize
from nncompress.quantization.graph import QuantConfig, prepare, quantizers
from nncompress.training import Callback, TrainConfig, train

DEFAULT_QAT_LR = 0.005  # a tenth of the 0.05 SGD rate the float models here train with


def prepare_qat(model: nn.Module, example_input: torch.Tensor, weight_bits: int = 4, act_bits: int = 8,
                granularity: str = "channel", method: str = "lsq", keep_first_last: bool = False,
                layer_bits: dict[str, int] | None = None, reduce_range: bool = False) -> fx.GraphModule:
    """A trainable fake-quantized copy of `model` (BN kept for folding in training, ReLU fused)."""
    cfg = QuantConfig("qat", weight_bits, act_bits, granularity, qat_method=method, keep_first_last=keep_first_last,
                      layer_bits=dict(layer_bits or {}), reduce_range=reduce_range)
    gm = prepare(model, example_input, cfg)
    return gm.train()


def train_qat(gm: fx.GraphModule, loader: DataLoader, epochs: int = 2, lr: float = DEFAULT_QAT_LR, optimizer: str = "sgd",
              seed: int = 0, callbacks: Sequence[Callback] = (), val_loader: DataLoader | None = None,
              progress: bool | None = None) -> list[dict[str, float]]:
    """Fine-tune a `prepare_qat` graph with the shared training loop; returns per-epoch metrics."""
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, seed=seed, progress=progress)
    return train(gm, loader, cfg, callbacks=callbacks, val_loader=val_loader)


def convert_qat(gm: fx.GraphModule) -> fx.GraphModule:
    """End training: eval mode (BN folded with running statistics), EMA activation ranges frozen.
    The result evaluates like the deployed integer model and lowers with `to_int8_kernels` (eager int8 modules) or `to_onnx_qdq` (ONNX Runtime)."""
    gm.eval()
    for m in quantizers(gm).values():
        if isinstance(m, FakeQuantize) and not m.dynamic:
            m.freeze()
    return gm


def quantize_qat(model: nn.Module, loader: DataLoader, weight_bits: int = 4, act_bits: int = 8, epochs: int = 2,
                 lr: float = DEFAULT_QAT_LR, granularity: str = "channel", method: str = "lsq",
                 keep_first_last: bool = False, reduce_range: bool = False, seed: int = 0,
                 progress: bool | None = None) -> fx.GraphModule:
    """One call: prepare, fine-tune for `epochs`, convert."""
    x0 = next(iter(loader))
    x0 = x0[0] if isinstance(x0, (tuple, list)) else x0
    gm = prepare_qat(model, x0, weight_bits, act_bits, granularity, method, keep_first_last, reduce_range=reduce_range)
    train_qat(gm, loader, epochs, lr, seed=seed, progress=progress)
    return convert_qat(gm)
