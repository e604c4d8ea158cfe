"""Eager quantization by module swap: one verb, a config object, no graph (torchao's `quantize_` design).

    model = quantize_(model, DynamicInt8Config())                          # int8 weights, per-token int8 activations
    model = quantize_(model, StaticInt8Config("mse"), calib_data=loader)    # activation ranges from hooks on calibration data
    model = quantize_(model, WeightOnlyConfig(bits=4, group_size=32))      # packed int4 weights, float activations

Every nn.Linear, nn.Conv1d, nn.Conv2d and nn.Embedding is replaced by its quantized module (`modules`), whose
codes, scales and zero points are buffers (in `state_dict()`, saved by `persist.save_quantized_model`). The
model's own Python forward runs unchanged, so models no tracer can capture — data-dependent control flow,
Python-side loops, HF models with caches — are quantized all the same: static calibration attaches an observer
to each layer's input with a forward pre-hook (Jacob et al. 2018 §3: activation ranges collected on
representative data), runs the calibration batches through the model, then swaps.

Modes: dynamic — weights int8 ahead, each input's range measured at run time (per token for Linear, per
sample for convolutions); static — affine activation (scale, zero point) fixed from calibration, 8-bit by
default (7 with reduce_range for CPUs without VNNI); weight-only — int8 or packed int4 (per channel or
per group), activations stay float. Embeddings are weight-only in every mode (a lookup has no product).

Tied weights: a Linear whose weight is the very Parameter of an Embedding (GPT-2's lm_head and wte) is
quantized once: both modules hold the same `QuantizedWeight`, so the tie survives `.to()`, saving and
loading. When the two places would need different quantizations the second is left in float with a
warning naming both. nn.LSTM / nn.GRU become `recurrent.QuantizedRNN` (int8 gate GEMMs, activation scales
per call — dynamic in every mode but weight-only); other parameterised modules are left in float and listed (warned).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError
from nncompress.quantization.modules import QUANTIZED_MODULES, QuantizedConv, QuantizedEmbedding, QuantizedLinear, QuantizedWeight
from nncompress.quantization.observers import OBSERVERS, make_observer
from nncompress.quantization.quantizer import check_bits
from nncompress.quantization.recurrent import QuantizedRNN

SWAP_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LSTM, nn.GRU)
ALL_QUANTIZED = QUANTIZED_MODULES + (QuantizedRNN,)
_RNN_TYPES = (nn.LSTM, nn.GRU)
_FLOAT_ONLY_NOTE = {nn.RNN: "RNN (vanilla; LSTM and GRU are quantized)", nn.Conv3d: "Conv3d", nn.ConvTranspose1d: "ConvTranspose1d",
                    nn.ConvTranspose2d: "ConvTranspose2d", nn.MultiheadAttention: "MultiheadAttention"}


def _check_granularity(granularity: str) -> None:
    if granularity not in ("channel", "tensor"):
        raise UserError(f"granularity '{granularity}' is not supported here: use channel or tensor")


def _check_embedding(bits: int | None, group_size: int | None) -> None:
    if bits is not None and (isinstance(bits, bool) or bits not in (4, 8)):
        raise UserError(f"embedding_bits={bits!r}: embeddings are quantized to 8 or 4 bits (or None to keep them in float)")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise UserError(f"embedding_group_size={group_size!r} must be a positive integer (or None for one scale per row)")


@dataclass
class DynamicInt8Config:
    """int8 weights (per output channel or per tensor), activations quantized at run time."""

    weight_bits: int = 8
    granularity: str = "channel"
    embedding_bits: int | None = 8
    embedding_group_size: int | None = None

    act_mode = "dynamic"

    def validate(self) -> "DynamicInt8Config":
        check_bits(self.weight_bits, "weight_bits")
        if self.weight_bits > 8:
            raise UserError(f"weight_bits={self.weight_bits}: int8 kernels hold at most 8-bit weights")
        _check_granularity(self.granularity)
        _check_embedding(self.embedding_bits, self.embedding_group_size)
        return self


@dataclass
class StaticInt8Config:
    """int8 weights, activations with calibrated (scale, zero point): `calibration` names the observer
    (minmax, moving_average, percentile, mse, entropy). `bias_correction`: after the swap, remove each layer's
    output-mean shift against a float copy on the same calibration batches (`eager_bias_correction`; costs one
    model copy and `bias_correction_sweeps` passes)."""

    calibration: str = "minmax"
    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "channel"
    reduce_range: bool = False
    embedding_bits: int | None = 8
    embedding_group_size: int | None = None
    bias_correction: bool = False
    bias_correction_sweeps: int = 3

    act_mode = "static"

    def validate(self) -> "StaticInt8Config":
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits")
        if self.weight_bits > 8 or self.act_bits > 8 or self.act_bits < 2:
            raise UserError(f"weight_bits={self.weight_bits}, act_bits={self.act_bits}: static int8 kernels take 2..8-bit "
                            "activations and at most 8-bit weights")
        if self.calibration not in OBSERVERS:
            raise UserError(f"unknown calibration '{self.calibration}': choose one of {', '.join(OBSERVERS)}")
        _check_granularity(self.granularity)
        _check_embedding(self.embedding_bits, self.embedding_group_size)
        if not isinstance(self.bias_correction, bool):
            raise UserError(f"bias_correction={self.bias_correction!r}: use True or False")
        if isinstance(self.bias_correction_sweeps, bool) or not isinstance(self.bias_correction_sweeps, int) or self.bias_correction_sweeps < 1:
            raise UserError(f"bias_correction_sweeps={self.bias_correction_sweeps!r}: use a whole number of sweeps ≥ 1")
        return self

    @property
    def observer_bits(self) -> int:
        return self.act_bits - 1 if self.reduce_range else self.act_bits


@dataclass
class WeightOnlyConfig:
    """Weights to `bits` (2..8; ≤ 4 packed two per byte), one scale per output channel or per `group_size`
    input columns; activations stay float. Embeddings use the same bits and groups unless told otherwise."""

    bits: int = 8
    group_size: int | None = None
    embedding_bits: int | None = -1  # -1: same as `bits`
    embedding_group_size: int | None = -1

    act_mode = "none"

    def validate(self) -> "WeightOnlyConfig":
        check_bits(self.bits, "bits")
        if not 2 <= self.bits <= 8:
            raise UserError(f"bits={self.bits}: weight-only quantization stores 2..8-bit codes")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise UserError(f"group_size={self.group_size!r} must be a positive integer (or None for one scale per channel)")
        if self.embedding_bits == -1:
            self.embedding_bits = self.bits if self.bits in (4, 8) else 8
        if self.embedding_group_size == -1:
            self.embedding_group_size = self.group_size
        _check_embedding(self.embedding_bits, self.embedding_group_size)
        return self


QuantizeConfig = DynamicInt8Config | StaticInt8Config | WeightOnlyConfig


def _weight_spec(config, module: nn.Module) -> tuple[int, str, int | None] | None:
    """(bits, granularity, group_size) the config gives this module's weight; None: the module stays float."""
    if isinstance(module, nn.Embedding):
        if config.embedding_bits is None:
            return None
        g = config.embedding_group_size
        return (config.embedding_bits, "group" if g else "channel", g)
    if isinstance(config, WeightOnlyConfig):
        return (config.bits, "group" if config.group_size else "channel", config.group_size)
    return (config.weight_bits, config.granularity, None)


def _slots(root: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """Every (parent, attribute, qualified name) holding each module object (a module registered twice has two)."""
    out: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for pname, parent in root.named_modules(remove_duplicate=False):
        for cname, child in parent._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((parent, cname, f"{pname}.{cname}" if pname else cname))
    return out


def _targets(model: nn.Module, skip: Iterable[str], types: tuple[type[nn.Module], ...]) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Modules to swap by qualified name (root included, as ''), and the parameterised ones left in float with the reason."""
    skip = set(skip)
    names = {n for n, _ in model.named_modules()}
    unknown = skip - names
    if unknown:
        raise UserError(f"skip names {sorted(unknown)} are not modules of the model (e.g. {sorted(names - {''})[:5]})")
    targets, left = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, ALL_QUANTIZED):
            continue
        if isinstance(m, types) and type(m) in SWAP_TYPES:
            if name in skip or any(name.startswith(s + ".") for s in skip if s):
                left[name] = "kept in float (asked)"
            else:
                targets[name] = m
        elif any(True for _ in m.parameters(recurse=False)) and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
                                                                                   nn.GroupNorm, nn.BatchNorm3d)):
            kind = _FLOAT_ONLY_NOTE.get(type(m), type(m).__name__)
            left[name] = f"no quantized module for {kind}"
    return targets, left


def _batches(data, num_batches: int) -> list:
    if data is None:
        raise UserError("static quantization needs calibration data: pass calib_data (a DataLoader, a list of batches or a tensor)")
    if isinstance(data, torch.Tensor):
        data = data.split(64)
    out = []
    for b in data:
        if len(out) >= num_batches:
            break
        out.append(b)
    if not out:
        raise UserError("calibration data is empty: pass at least one batch of inputs")
    return out


@torch.no_grad()
def _calibrate(model: nn.Module, targets: dict[str, nn.Module], config: StaticInt8Config, data, num_batches: int,
               forward_fn: Callable | None) -> dict[str, nn.Module]:
    """Observers on every target's input (forward pre-hooks), fed by `num_batches` batches; returns them by name."""
    from nncompress.core.model_io import run_batches

    observers, hooks = {}, []
    for name, m in targets.items():
        if isinstance(m, (nn.Embedding,) + _RNN_TYPES):
            continue
        obs = make_observer(config.calibration, bits=config.observer_bits, signed=False)
        observers[name] = obs

        def hook(_mod, args, _obs=obs):
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                _obs(args[0])

        hooks.append(m.register_forward_pre_hook(hook))
    try:
        run_batches(model, _batches(data, num_batches), forward_fn)
    finally:
        for h in hooks:
            h.remove()
    for name, obs in observers.items():
        if obs.saw_nonfinite:
            raise DivergenceError(f"calibration: the input of layer '{name}' holds NaN/inf on the calibration data; "
                                  "check the weights and the inputs")
    return observers


def quantize_(model: nn.Module, config: QuantizeConfig, calib_data=None, num_batches: int = 8, forward_fn: Callable | None = None,
              skip: Iterable[str] = (), types: tuple[type[nn.Module], ...] = SWAP_TYPES) -> nn.Module:
    """Swap every Linear/Conv1d/Conv2d/Embedding of `model` (in place) for its quantized module; returns the model.

    When `model` itself is such a layer, the quantized layer is returned (use the return value). `calib_data`
    (static only): batches as tensors, (x, y) pairs or dicts (tokenizer output; `labels` ignored), run with
    `forward_fn(model, batch)` when given. `skip`: qualified names kept in float. Left-float modules are warned
    (one line each, naming the module) and listed in `model.quant_skipped`; swapped names in `model.quant_layers`.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"quantize_ takes an nn.Module, got {type(model).__name__}")
    if not isinstance(config, (DynamicInt8Config, StaticInt8Config, WeightOnlyConfig)):
        raise UserError(f"unknown quantization config {type(config).__name__}: use DynamicInt8Config, StaticInt8Config "
                        "or WeightOnlyConfig")
    config.validate()
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise UserError(f"num_batches={num_batches!r}: calibration needs at least one batch")
    targets, left = _targets(model, skip, types)
    correct = isinstance(config, StaticInt8Config) and config.bias_correction
    reference = copy.deepcopy(model) if correct else None  # the float model the corrected means are measured against
    observers = _calibrate(model, targets, config, calib_data, num_batches, forward_fn) if isinstance(config, StaticInt8Config) else {}
    slots = _slots(model)
    by_param: dict[int, tuple[QuantizedWeight, tuple, str]] = {}
    swapped: dict[int, nn.Module] = {}
    done: list[str] = []
    root_new = None
    for name, m in targets.items():
        if id(m) in swapped:
            continue
        spec = _weight_spec(config, m)
        if spec is None:
            left[name] = "embedding kept in float (embedding_bits=None)"
            continue
        if isinstance(config, StaticInt8Config) and name in observers and not observers[name].has_data:
            left[name] = "never ran on the calibration data (no activation range)"
            continue
        where = f"layer '{name or '<root>'}' ({type(m).__name__})"
        if isinstance(m, _RNN_TYPES):  # int8 gate GEMMs with run-time activation scales in every mode but weight-only
            try:
                new = QuantizedRNN.from_float(m, "none" if config.act_mode == "none" else "dynamic", *spec, name=name)
            except UserError as e:
                left[name] = str(e).removeprefix(where + ": ")
                continue
            _install(new.to(next(m.parameters()).device), m, name, slots, swapped, done)
            root_new = new if name == "" else root_new
            continue
        shared = by_param.get(id(m.weight))
        if shared is not None and shared[1] != spec:
            left[name] = (f"its weight is tied to '{shared[2]}', which is quantized as {shared[1][0]}-bit {shared[1][1]}; this layer "
                          f"would need {spec[0]}-bit {spec[1]}: kept in float so the tie is not broken")
            continue
        try:
            weight = shared[0] if shared is not None else QuantizedWeight.from_float(m.weight, *spec)
            new = _quantized(m, config, weight, observers.get(name), name)
        except UserError as e:  # this layer's shape or options have no quantized form: float, warned, listed
            left[name] = str(e).removeprefix(where + ": ")
            continue
        new.to(m.weight.device)
        by_param.setdefault(id(m.weight), (weight, spec, name))
        _install(new, m, name, slots, swapped, done)
        if name == "":
            root_new = new
    _warn_left(left)
    out = root_new if root_new is not None else model
    out.quant_layers, out.quant_skipped = done, left
    if correct and done:
        from nncompress.quantization.eager_bias_correction import correct_biases_

        out.bias_correction_report = correct_biases_(out, reference, calib_data, num_batches,
                                                     sweeps=config.bias_correction_sweeps, forward_fn=forward_fn)
    return out


def _install(new: nn.Module, old: nn.Module, name: str, slots, swapped: dict, done: list) -> None:
    """Put `new` in every place that held `old` (a module registered twice is swapped in both)."""
    swapped[id(old)] = new
    for parent, attr, _ in slots.get(id(old), []):
        setattr(parent, attr, new)
    done.append(name)


def _quantized(m: nn.Module, config, weight: QuantizedWeight, obs, name: str) -> nn.Module:
    if isinstance(m, nn.Embedding):
        return QuantizedEmbedding.from_float(m, weight=weight, name=name)
    act = config.act_mode
    kw = {}
    if act == "static":
        kw["act_qrange"] = (obs.qmin, obs.qmax)
    if isinstance(m, nn.Linear):
        new = QuantizedLinear.from_float(m, act, weight=weight, **kw)
    else:
        new = QuantizedConv.from_float(m, act, weight=weight, name=name, **kw)
    if act == "static":
        s, z = obs.qparams()
        new.set_act_qparams(s, z)
    return new


def _warn_left(left: dict[str, str]) -> None:
    for name, why in left.items():
        warnings.warn(f"quantization: layer '{name or '<root>'}' left in float: {why}", stacklevel=3)


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Quantized modules of a swapped model by qualified name (a module registered twice appears once)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ALL_QUANTIZED)}


def weight_storage_bytes(model: nn.Module) -> int:
    """Bytes of the quantized weights (codes + scales; a tied weight counted once) plus float bias bytes."""
    seen, total = set(), 0
    for m in quantized_modules(model).values():
        if isinstance(m, QuantizedRNN):
            total += m.storage_bytes()
            continue
        if id(m.weight_q) not in seen:
            seen.add(id(m.weight_q))
            total += m.weight_q.storage_bytes()
        b = getattr(m, "bias", None)
        total += 0 if b is None else b.numel() * 4
    return total
