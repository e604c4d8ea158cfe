"""Quantization-aware training by module swap: QAT for models no tracer can capture (Hugging Face transformers, ...).

`prepare_qat` builds its fake-quantized model from a torch.fx graph, which a Hugging Face model's top-level forward
defeats. `prepare_qat_swap` needs no graph: in a copy of the model every nn.Linear / nn.Conv1d / nn.Conv2d becomes a
`graph.QuantLayer` holding the layer itself, a weight quantizer and a quantizer on the layer's input — the very fake
quantizers `prepare_qat` inserts (LSQ learned steps, Esser et al. 2020; or STE with min-max weights and EMA activation
ranges, Jacob et al. 2018) — and the model's own Python forward runs unchanged, with any batch format.

What only the graph path can do: fold a BatchNorm into the conv before it (a graph tells that the BN is the conv's only
consumer; Krishnamoorthi 2018 §3.2), fuse a following ReLU, and share one activation quantizer between a layer's output
and the next layer's input. Here each layer quantizes its own input, signed (it cannot know a ReLU came before, so a
non-negative input spends one of its bits on the sign). Use `prepare_qat` when the model traces, this otherwise.

    qat = prepare_qat_swap(model, example_batch)        # a copy; `model` is untouched
    train_qat(qat, loader, epochs=1)                     # any batch format the model seam understands
    qat = convert_qat(qat)                               # eval mode, activation ranges frozen

Tied weights stay tied: a Linear whose weight is an Embedding's (GPT-2's lm_head and wte) is wrapped, not copied, so
both still read one Parameter (the embedding lookup itself stays float). A layer registered under two names gets one
QuantLayer installed under both.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import call_model, split_batch, to_device
from nncompress.quantization.graph import QuantConfig, QuantLayer, _act_quantizer, _weight_quantizer

SWAP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


class SwappedQuantLayer(QuantLayer):
    """A `QuantLayer` standing where the float layer stood in the user's model: `weight` and `bias` read through to
    the wrapped layer (the trained master copy), because the model's own code may inspect them (Hugging Face ViT
    casts its pixels to `patch_embeddings.projection.weight.dtype`)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias


def prepare_qat_swap(model: nn.Module, example_batch: Any, weight_bits: int = 8, act_bits: int = 8,
                     granularity: str = "channel", method: str = "lsq", skip: Iterable[str] = ()) -> nn.Module:
    """A trainable fake-quantized copy of `model` made by module swap (no graph); see the module docstring.

    example_batch: one batch in any format the model seam understands (tensor, (x, y), a tokenizer's dict); it is
    run once so LSQ steps and EMA ranges start from real activations. skip: qualified layer names kept in float.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"prepare_qat_swap takes an nn.Module, got {type(model).__name__}")
    cfg = QuantConfig("qat", weight_bits, act_bits, granularity, qat_method=method)
    cfg.validate()
    qat = copy.deepcopy(model)
    if isinstance(qat, SWAP_LAYERS):
        qat = nn.Sequential(qat)  # a bare layer: wrap it so there is a parent to swap it in
    skip = set(skip)
    layers = {name: m for name, m in qat.named_modules(remove_duplicate=False) if isinstance(m, SWAP_LAYERS)}
    unknown = skip - set(layers)
    if unknown:
        raise UserError(f"skip names {sorted(unknown)} are not Linear/Conv layers of {type(model).__name__}")
    if not layers:
        raise UserError(f"{type(model).__name__} has no nn.Linear / nn.Conv1d / nn.Conv2d layer to train quantized "
                        "(GPT-2-style Conv1D: call nncompress.core.conv1d.linearize_conv1d first)")
    wrapped: dict[int, QuantLayer] = {}
    for parent_name, parent in list(qat.named_modules(remove_duplicate=False)):
        for attr, child in list(parent._modules.items()):
            full = f"{parent_name}.{attr}" if parent_name else attr
            if child is None or not isinstance(child, SWAP_LAYERS):
                continue
            if full in skip or any(n in skip for n, m in layers.items() if m is child):
                continue  # a layer registered twice and skipped under one name stays float under both
            if id(child) not in wrapped:
                wrapped[id(child)] = SwappedQuantLayer(child, _weight_quantizer(cfg, weight_bits), None, False,
                                                _act_quantizer(cfg, signed=True))
            setattr(parent, attr, wrapped[id(child)])
    qat.quant_layers = [n for n, m in layers.items() if id(m) in wrapped]
    qat.quant_skipped = {n: "kept in float (asked)" for n in layers if n in skip}
    device = next((p.device for p in qat.parameters()), torch.device("cpu"))
    qat.to(device)
    inputs, _ = split_batch(example_batch)
    with torch.no_grad():  # initialise LSQ steps / EMA ranges before an optimizer sees the parameters
        call_model(qat.eval(), to_device(inputs, device))
    return qat.train()
