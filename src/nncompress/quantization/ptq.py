"""Post-training quantization: no retraining, a few unlabeled batches at most.

Dynamic: weights are quantized ahead; each batch's activation range is measured at run time (no calibration
data, a little run-time cost). Static: activation ranges are fixed from calibration batches, so the whole
network can stay in integers. fp16/bf16: the cheap baseline that halves bytes without calibration.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.fx as fx
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError
from nncompress.core.model_io import call_model, split_batch, tensor_leaves, to_device
from nncompress.core.progress import track
from nncompress.quantization.fake_quant import FakeQuantize
from nncompress.quantization.graph import QuantConfig, freeze, prepare, quantizers, set_observing
from nncompress.training.device import module_device


def iter_batches(data, num_batches: int | None = None, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Model inputs from a DataLoader of (x, y) or x, a list of tensors, one tensor split into batches, or batches
    in any format `nncompress.core.model_io.split_batch` takes (dicts from a tokenizer: the dict without labels)."""
    if data is None:
        raise UserError("static quantization needs calibration data: pass a few batches of unlabeled inputs (e.g. --calib-batches 8)")
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    count = 0
    for item in data:
        if num_batches is not None and count >= num_batches:
            break
        x = split_batch(item)[0]
        if not tensor_leaves(x):
            raise UserError(f"calibration data must yield tensors, (x, y) pairs or dicts of tensors, got {type(x).__name__}")
        yield x
        count += 1
    if count == 0:
        raise UserError("calibration data is empty: pass at least one batch of inputs")


def first_batch(data) -> torch.Tensor:
    return next(iter_batches(data, 1))


@torch.no_grad()
def calibrate(gm: nn.Module, data: Iterable, num_batches: int = 8) -> nn.Module:
    """Run `num_batches` unlabeled batches through the prepared graph so observers see activation ranges,
    then freeze every activation quantizer's (scale, zero point). Runs on the graph's device; batches are moved there."""
    if num_batches < 1:
        raise UserError(f"num_batches={num_batches}: calibration needs at least one batch")
    gm.eval()
    set_observing(gm, True)
    device = module_device(gm)
    batches = list(iter_batches(data, num_batches))
    for x in track(batches, "calibrating", total=len(batches)):
        call_model(gm, to_device(x, device))
    freeze(gm)
    bad = [n for n, m in quantizers(gm).items() if isinstance(m, FakeQuantize) and m.frozen
           and not bool(torch.isfinite(torch.as_tensor(m.scale)).all())]
    if bad:  # NaN/inf activations give a NaN scale, and a NaN scale a NaN model that still "evaluates"
        raise DivergenceError(f"calibration: activation range of {', '.join(bad[:3])} is not finite (the model's activations "
                              f"hold NaN/inf on the calibration data); check the weights and the inputs")
    return gm


def quantize_static(model: nn.Module, calib_data, bits: int = 8, granularity: str = "channel", calibration: str = "minmax",
                    num_batches: int = 8, act_bits: int = 8, keep_first_last: bool = False,
                    layer_bits: dict[str, int] | None = None, skip: tuple[str, ...] = (),
                    reduce_range: bool = False) -> fx.GraphModule:
    """Static PTQ: fold BN, fuse ReLU, quantize weights to `bits` and calibrate activation ranges on
    `num_batches` batches of `calib_data` with the chosen observer. Returns the simulated graph."""
    cfg = QuantConfig("static", bits, act_bits, granularity, calibration, keep_first_last=keep_first_last,
                      layer_bits=dict(layer_bits or {}), skip=tuple(skip), reduce_range=reduce_range)
    gm = prepare(model, first_batch(calib_data), cfg)
    return calibrate(gm, calib_data, num_batches)


def quantize_dynamic(model: nn.Module, example_input: torch.Tensor, bits: int = 8, granularity: str = "channel",
                     keep_first_last: bool = False, skip: tuple[str, ...] = (), reduce_range: bool = False) -> fx.GraphModule:
    """Dynamic PTQ: Linear weights quantized ahead; each input's 8-bit range is its own min and max."""
    if not isinstance(example_input, torch.Tensor):
        raise UserError("dynamic quantization needs one example input tensor to trace the model")
    cfg = QuantConfig("dynamic", bits, 8, granularity, keep_first_last=keep_first_last, skip=tuple(skip), reduce_range=reduce_range)
    return prepare(model, example_input, cfg).eval()


def quantize_weights(model: nn.Module, example_input: torch.Tensor, bits: int = 8, granularity: str = "channel",
                     layer_bits: dict[str, int] | None = None, skip: tuple[str, ...] = ()) -> fx.GraphModule:
    """Weight-only quantization (activations stay float): the storage saving without kernels."""
    cfg = QuantConfig("weight_only", bits, 8, granularity, layer_bits=dict(layer_bits or {}), skip=tuple(skip))
    return prepare(model, example_input, cfg).eval()


class ReducedPrecision(nn.Module):
    """Runs a copy of the model in fp16 or bf16; inputs are cast in, outputs cast back to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.model = model.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def to_reduced_precision(model: nn.Module, dtype: str | torch.dtype = "fp16") -> ReducedPrecision:
    """fp16 (IEEE half: 10-bit mantissa, range ±65504) or bf16 (8-bit mantissa, fp32's range) copy of `model`."""
    import copy

    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise UserError(f"unknown reduced precision '{dtype}': use fp16 or bf16")
        dtype = names[dtype]
    if dtype not in (torch.float16, torch.bfloat16):
        raise UserError(f"unsupported dtype {dtype}: use torch.float16 or torch.bfloat16")
    return ReducedPrecision(copy.deepcopy(model).eval(), dtype).eval()
