"""Structural pruning of transformers: whole attention heads, FFN intermediate channels and whole layers.

Michel, Levy & Neubig (NeurIPS 2019, "Are Sixteen Heads Really Better than One?") show that most heads of a
trained BERT can be removed at test time with little loss, and that importance estimated from data ranks
them well; Voita et al. (ACL 2019) reach the same conclusion. The FFN is the other half of a layer's MACs
(2·d·d_ff per token against 4·d² for the projections), so its intermediate channels are pruned the same way.

What is removed, physically (the model gets smaller and faster, not masked):
- a head h of an attention block: rows h·d_h … (h+1)·d_h − 1 of the query, key and value projections (and
  their biases), and the same columns of the output projection. The block's head-count attributes
  (`num_attention_heads`, `num_heads`, `n_heads`, `all_head_size`, `split_size`) follow, so the module's own
  forward (which reshapes with −1 heads of `head_dim`) is unchanged and exports to ONNX as before.
- an FFN channel j: row j of the up projection (and bias), column j of the down projection.
- a layer: removed from its ModuleList; `num_hidden_layers` / `n_layer` / `n_layers` in the config follow.

Found by structure, not by model name: an attention block is a module with three Linear children named
(query, key, value), (q_lin, k_lin, v_lin) or (q_proj, k_proj, v_proj) and a head size attribute, whose
output projection is a child (out_lin, out_proj, o_proj, dense) or the sibling `output.dense` (BERT, RoBERTa,
ViT); or a fused `c_attn` (GPT-2: q, k, v stacked along the output) with `c_proj`. GPT-2's Conv1D layout
(weight (in, out)) is handled, as is nn.Linear after `nncompress.core.linearize_conv1d`. An FFN is
(intermediate.dense, output.dense), (lin1, lin2), (c_fc, c_proj), (fc1, fc2) or (up_proj, down_proj).

Importance (per head / per channel, higher = keep), from calibration batches:
- "activation": E_tokens ‖W_o[:, h] · x_h‖₂, the norm of what head h adds to the residual stream (x_h its
  context vector); for an FFN channel, E|a_j|·‖W_down[:, j]‖₂.
- "taylor": Σ |w · ∂L/∂w| over the weights of the head / channel (first-order Taylor of the loss change when
  they are zeroed, Molchanov et al. 2019) — needs labels or a loss the model returns.
- "magnitude": ‖W_o[:, h]‖_F · ‖W_v[h]‖_F (data-free).

Saving: the removed structure is recorded in `model.config.nncompress_structure` (heads kept per block, FFN
widths, removed layers), so `save_pretrained` writes it into config.json and `load_pruned_pretrained` rebuilds
the same shapes from the config before loading the weights.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import forward_and_loss, forward_batch, to_device

_QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
_OUT_NAMES = ("out_lin", "out_proj", "o_proj")
_HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size")
_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_FFN_NAMES = (("intermediate.dense", "output.dense"), ("lin1", "lin2"), ("c_fc", "c_proj"), ("fc1", "fc2"),
              ("up_proj", "down_proj"))
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
IMPORTANCE_METHODS = ("activation", "taylor", "magnitude")


# --- the two layouts of a projection --------------------------------------------------------------------------

def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _is_projection(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Linear) or (m is not None and _is_conv1d(m))


def _out_features(m: nn.Module) -> int:
    return m.weight.shape[1] if _is_conv1d(m) else m.weight.shape[0]


def _in_features(m: nn.Module) -> int:
    return m.weight.shape[0] if _is_conv1d(m) else m.weight.shape[1]


def _out_rows(m: nn.Module) -> torch.Tensor:
    """The weight viewed as (out, in), whatever the layout (a view: no copy)."""
    return m.weight.t() if _is_conv1d(m) else m.weight


@torch.no_grad()
def _keep_outputs(m: nn.Module, keep: torch.Tensor) -> None:
    """Keep only output features `keep` (sorted indices) of a Linear / Conv1D, in place."""
    dim = 1 if _is_conv1d(m) else 0
    m.weight = nn.Parameter(m.weight.index_select(dim, keep).clone(), requires_grad=m.weight.requires_grad)
    if getattr(m, "bias", None) is not None:
        m.bias = nn.Parameter(m.bias.index_select(0, keep).clone(), requires_grad=m.bias.requires_grad)
    if isinstance(m, nn.Linear):
        m.out_features = int(keep.numel())
    else:
        m.nf = int(keep.numel())


@torch.no_grad()
def _keep_inputs(m: nn.Module, keep: torch.Tensor) -> None:
    """Keep only input features `keep` of a Linear / Conv1D, in place."""
    dim = 0 if _is_conv1d(m) else 1
    m.weight = nn.Parameter(m.weight.index_select(dim, keep).clone(), requires_grad=m.weight.requires_grad)
    if isinstance(m, nn.Linear):
        m.in_features = int(keep.numel())


# --- finding the blocks ---------------------------------------------------------------------------------------

@dataclass
class AttentionBlock:
    """One multi-head attention: where its projections are and how many heads of which size it has."""

    name: str                      # qualified name of the module holding q/k/v (or c_attn)
    module: nn.Module
    q: nn.Module | None            # separate projections (None when fused)
    k: nn.Module | None
    v: nn.Module | None
    qkv: nn.Module | None          # fused c_attn (GPT-2), q/k/v stacked along the output
    out: nn.Module
    out_name: str
    num_heads: int
    head_dim: int


@dataclass
class FFNBlock:
    name: str                      # qualified name of the module holding the FFN (a transformer layer or its mlp)
    up: nn.Module
    down: nn.Module
    up_name: str
    down_name: str

    @property
    def width(self) -> int:
        return _out_features(self.up)


def _child(module: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        return None


def _head_dim(module: nn.Module, width: int) -> tuple[int, int] | None:
    for attr in _HEAD_SIZE_ATTRS:
        hd = getattr(module, attr, None)
        if isinstance(hd, int) and hd > 0 and width % hd == 0:
            return width // hd, hd
    return None


def attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Every multi-head attention block of `model`, in definition order (see the module docstring)."""
    modules = dict(model.named_modules())
    blocks = []
    for name, m in modules.items():
        found = None
        for qn, kn, vn in _QKV_NAMES:
            q, k, v = (getattr(m, n, None) for n in (qn, kn, vn))
            if all(_is_projection(p) for p in (q, k, v)):
                found = (q, k, v, None)
                break
        fused = getattr(m, "c_attn", None)
        if found is None and _is_projection(fused) and _is_projection(getattr(m, "c_proj", None)):
            if getattr(m, "is_cross_attention", False):
                continue  # GPT-2 cross-attention splits c_attn in two (k, v): not a self-attention block
            found = (None, None, None, fused)
        if found is None:
            continue
        q, k, v, qkv = found
        width = _out_features(q) if qkv is None else _out_features(qkv) // 3
        shape = _head_dim(m, width)
        if shape is None:
            continue
        out, out_name = None, ""
        for on in (*_OUT_NAMES, "c_proj"):
            if _is_projection(getattr(m, on, None)):
                out, out_name = getattr(m, on), f"{name}.{on}" if name else on
                break
        if out is None:  # BERT / RoBERTa / ViT: <attention>.self (or .attention) holds q/k/v, <attention>.output.dense projects
            parent_name = name.rpartition(".")[0]
            parent = modules.get(parent_name)
            cand = _child(parent, "output.dense") if parent is not None else None
            if _is_projection(cand):
                out, out_name = cand, f"{parent_name}.output.dense"
        if out is None or _in_features(out) != width:
            continue
        blocks.append(AttentionBlock(name, m, q, k, v, qkv, out, out_name, *shape))
    return blocks


def ffn_blocks(model: nn.Module) -> list[FFNBlock]:
    """Every two-layer feed-forward block (up projection → activation → down projection), in definition order."""
    out = []
    for name, m in model.named_modules():
        for up_n, down_n in _FFN_NAMES:
            up, down = _child(m, up_n), _child(m, down_n)
            if not (_is_projection(up) and _is_projection(down)) or _out_features(up) != _in_features(down):
                continue
            if hasattr(m, "c_attn"):  # GPT-2 attention also has a c_proj; only its MLP pairs c_fc with c_proj
                continue
            prefix = f"{name}." if name else ""
            out.append(FFNBlock(name, up, down, prefix + up_n, prefix + down_n))
            break
    return out


# --- importance -----------------------------------------------------------------------------------------------

def _batches(data: Iterable, num_batches: int) -> list:
    out = []
    for i, b in enumerate(data):
        if i >= num_batches:
            break
        out.append(b)
    if not out:
        raise UserError("importance needs at least one calibration batch: the data given was empty")
    return out


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _head_slices(block: AttentionBlock) -> list[torch.Tensor]:
    """Per head: the feature indices it owns in the output of q, k and v (and the input of the out projection)."""
    hd, h = block.head_dim, block.num_heads
    return [torch.arange(i * hd, (i + 1) * hd) for i in range(h)]


@torch.no_grad()
def _magnitude_scores(blocks: list[AttentionBlock], ffns: list[FFNBlock]) -> tuple[dict, dict]:
    heads = {}
    for b in blocks:
        w_out = _out_rows(b.out).float()  # (d_model, width)
        w_v = _out_rows(b.v).float() if b.qkv is None else _out_rows(b.qkv).float()[2 * b.num_heads * b.head_dim:]
        heads[b.name] = torch.stack([w_out[:, s].norm() * w_v[s].norm() for s in _head_slices(b)])
    channels = {f.name: _out_rows(f.up).float().norm(dim=1) * _out_rows(f.down).float().norm(dim=0) for f in ffns}
    return heads, channels


def _activation_scores(model, blocks, ffns, batches, forward_fn) -> tuple[dict, dict]:
    """Mean over tokens of ‖W_o[:, h] x_h‖ per head and E|a_j|·‖W_down[:, j]‖ per FFN channel."""
    heads = {b.name: torch.zeros(b.num_heads, dtype=torch.float64) for b in blocks}
    chans = {f.name: torch.zeros(f.width, dtype=torch.float64) for f in ffns}
    tokens = {"n": 0}
    handles = []

    def head_hook(block):
        w_out = _out_rows(block.out).detach().float()

        def hook(module, args):
            x = args[0].detach().float().reshape(-1, block.num_heads, block.head_dim)  # (tokens, h, d_h)
            w = w_out.reshape(w_out.shape[0], block.num_heads, block.head_dim)         # (d_model, h, d_h)
            contrib = torch.einsum("thd,ohd->tho", x, w).norm(dim=-1)                  # (tokens, h)
            heads[block.name] += contrib.sum(0).double()
        return hook

    def ffn_hook(ffn):
        col_norm = _out_rows(ffn.down).detach().float().norm(dim=0)

        def hook(module, args):
            a = args[0].detach().float().reshape(-1, ffn.width)
            chans[ffn.name] += (a.abs().sum(0) * col_norm).double()
            if ffn is ffns[0] and not blocks:
                tokens["n"] += a.shape[0]
        return hook

    for b in blocks:
        handles.append(b.out.register_forward_pre_hook(head_hook(b)))
    for f in ffns:
        handles.append(f.down.register_forward_pre_hook(ffn_hook(f)))
    if blocks:
        def count(module, args):
            tokens["n"] += args[0].reshape(-1, _in_features(blocks[0].out)).shape[0]
        handles.append(blocks[0].out.register_forward_pre_hook(count))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                forward_batch(model, to_device(batch, _device(model)), forward_fn)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = max(tokens["n"], 1)
    return ({k: (v / n).float() for k, v in heads.items()}, {k: (v / n).float() for k, v in chans.items()})


def _taylor_scores(model, blocks, ffns, batches, forward_fn, loss_fn) -> tuple[dict, dict]:
    """Σ |w · ∂L/∂w| over each head's q/k/v rows and out columns, and each channel's up row and down column."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    was_training = model.training
    model.eval()  # dropout off: the score is about the deployed function
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            step = forward_and_loss(model, to_device(batch, _device(model)), loss_fn, forward_fn)
            if not torch.isfinite(step.loss):
                raise UserError(f"taylor importance: the loss is {float(step.loss)} on a calibration batch; "
                                "check the model and data, or use importance='activation'")
            step.loss.backward()
            for p in params:
                if p.grad is not None:
                    grads[id(p)] += (p.detach().float() * p.grad.float()).abs()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    def rows(m):  # (out, in) view of |w·g|
        g = grads[id(m.weight)]
        return g.t() if _is_conv1d(m) else g

    heads = {}
    for b in blocks:
        s_out = rows(b.out)
        width = b.num_heads * b.head_dim
        score = []
        for i, s in enumerate(_head_slices(b)):
            if b.qkv is None:
                t = sum(rows(p)[s].sum() for p in (b.q, b.k, b.v))
            else:
                fused = rows(b.qkv)
                t = sum(fused[s + j * width].sum() for j in range(3))
            score.append(t + s_out[:, s].sum())
        heads[b.name] = torch.stack(score)
    chans = {f.name: rows(f.up).sum(1) + rows(f.down).sum(0) for f in ffns}
    return heads, chans


def importance(model: nn.Module, data: Iterable | None = None, method: str = "activation", num_batches: int = 8,
               forward_fn: Callable | None = None, loss_fn: Callable | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(head scores per attention block, channel scores per FFN block), higher = more important."""
    if method not in IMPORTANCE_METHODS:
        raise UserError(f"unknown importance '{method}': use one of {', '.join(IMPORTANCE_METHODS)}")
    blocks, ffns = attention_blocks(model), ffn_blocks(model)
    if not blocks and not ffns:
        raise UserError(f"{type(model).__name__}: no attention block (q/k/v + output projections) and no FFN block found; "
                        "head/FFN pruning applies to transformer layers")
    if method == "magnitude":
        return _magnitude_scores(blocks, ffns)
    if data is None:
        raise UserError(f"importance='{method}' needs calibration data; pass data= or use importance='magnitude'")
    batches = _batches(data, num_batches)
    if method == "activation":
        return _activation_scores(model, blocks, ffns, batches, forward_fn)
    return _taylor_scores(model, blocks, ffns, batches, forward_fn, loss_fn)


# --- removal --------------------------------------------------------------------------------------------------

def _set_head_count(block: AttentionBlock, kept: int) -> None:
    m = block.module
    for attr in _HEAD_COUNT_ATTRS:
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, kept)
    for attr in ("all_head_size", "split_size"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, kept * block.head_dim)
    if hasattr(m, "num_key_value_groups") and isinstance(m.num_key_value_groups, int):
        m.num_key_value_groups = 1


@torch.no_grad()
def prune_heads(model: nn.Module, heads: dict[str, Sequence[int]]) -> dict[str, list[int]]:
    """Remove the given heads (block name → head indices) physically; returns the heads kept per block.

    At least one head must stay in each block (remove the layer instead). Records the structure in
    `model.config.nncompress_structure` when the model has a config.
    """
    blocks = {b.name: b for b in attention_blocks(model)}
    unknown = [n for n in heads if n not in blocks]
    if unknown:
        raise UserError(f"no attention block named {', '.join(unknown)}; blocks: {', '.join(blocks) or '(none)'}")
    kept_all = {}
    for name, drop in heads.items():
        b = blocks[name]
        drop_set = {int(h) for h in drop}
        bad = [h for h in drop_set if not 0 <= h < b.num_heads]
        if bad:
            raise UserError(f"{name}: head index {bad[0]} out of range (the block has {b.num_heads} heads, 0..{b.num_heads - 1})")
        kept = [h for h in range(b.num_heads) if h not in drop_set]
        if not kept:
            raise UserError(f"{name}: removing all {b.num_heads} heads would leave an empty attention; keep ≥ 1 "
                            "(or remove the whole layer with remove_layers)")
        if len(kept) == b.num_heads:
            kept_all[name] = kept
            continue
        idx = torch.cat([torch.arange(h * b.head_dim, (h + 1) * b.head_dim) for h in kept]).to(b.out.weight.device)
        if b.qkv is None:
            for p in (b.q, b.k, b.v):
                _keep_outputs(p, idx)
        else:
            width = b.num_heads * b.head_dim
            _keep_outputs(b.qkv, torch.cat([idx + j * width for j in range(3)]))
        _keep_inputs(b.out, idx)
        _set_head_count(b, len(kept))
        kept_all[name] = kept
    _record(model)
    return kept_all


@torch.no_grad()
def prune_ffn(model: nn.Module, channels: dict[str, Sequence[int]]) -> dict[str, int]:
    """Remove the given intermediate channels (FFN block name → indices); returns the widths kept."""
    ffns = {f.name: f for f in ffn_blocks(model)}
    unknown = [n for n in channels if n not in ffns]
    if unknown:
        raise UserError(f"no FFN block named {', '.join(unknown)}; blocks: {', '.join(ffns) or '(none)'}")
    widths = {}
    for name, drop in channels.items():
        f = ffns[name]
        drop_set = {int(c) for c in drop}
        if any(not 0 <= c < f.width for c in drop_set):
            raise UserError(f"{name}: channel index out of range (the FFN has {f.width} channels)")
        keep = torch.tensor([c for c in range(f.width) if c not in drop_set], dtype=torch.long, device=f.up.weight.device)
        if keep.numel() == 0:
            raise UserError(f"{name}: removing all {f.width} FFN channels; keep ≥ 1")
        _keep_outputs(f.up, keep)
        _keep_inputs(f.down, keep)
        widths[name] = int(keep.numel())
    _record(model)
    return widths


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer layers (the longest list whose items contain attention)."""
    names = {b.name for b in attention_blocks(model)}
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            prefix = f"{name}." if name else ""
            if all(any(n.startswith(f"{prefix}{i}.") or n == f"{prefix}{i}" for n in names) for i in range(len(m))):
                if best is None or len(m) > len(best[1]):
                    best = (name, m)
    if best is None:
        raise UserError(f"{type(model).__name__}: no list of transformer layers found (a ModuleList whose items hold attention)")
    return best


def remove_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Remove whole transformer layers by index; returns the original indices kept."""
    name, layer_list = _layer_list(model)
    n = len(layer_list)
    drop = {int(i) for i in layers}
    if any(not 0 <= i < n for i in drop):
        raise UserError(f"layer index out of range: the model has {n} layers in '{name}' (0..{n - 1})")
    kept = [i for i in range(n) if i not in drop]
    if not kept:
        raise UserError(f"removing all {n} layers of '{name}' leaves no network; keep ≥ 1")
    new = nn.ModuleList([layer_list[i] for i in kept])
    for new_idx, layer in enumerate(new):  # caches index layers by position
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_idx
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    config = getattr(model, "config", None)
    if config is not None:
        for attr in _LAYER_COUNT_ATTRS:
            if isinstance(getattr(config, attr, None), int):
                setattr(config, attr, len(kept))
    _record(model)
    return kept


def _record(model: nn.Module) -> None:
    """Write the model's current shapes into `config.nncompress_structure`: every block's head count and every
    FFN's width, under today's names (a layer removal renumbers them), so a model built from the config (whose
    layer count `remove_layers` already updated) can be given the same shapes by `apply_structure`."""
    config = getattr(model, "config", None)
    if config is None:
        return
    config.nncompress_structure = {"heads": {b.name: b.num_heads for b in attention_blocks(model)},
                                   "ffn": {f.name: f.width for f in ffn_blocks(model)}}


# --- the one-call pruner ---------------------------------------------------------------------------------------

@dataclass
class TransformerPruneReport:
    heads_before: dict[str, int]
    heads_kept: dict[str, list[int]]
    ffn_before: dict[str, int]
    ffn_kept: dict[str, int]
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    scores: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mac_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_dict(self) -> dict:
        return {"heads_before": self.heads_before, "heads_kept": self.heads_kept, "ffn_before": self.ffn_before,
                "ffn_kept": self.ffn_kept, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "mac_reduction": round(self.mac_reduction, 4), "params_before": self.params_before,
                "params_after": self.params_after}


def transformer_macs(model: nn.Module, seq_len: int) -> int:
    """MACs per sequence of `seq_len` tokens: every Linear / Conv1D (in·out per token) plus the two attention
    matmuls of each block (QKᵀ and AV: 2·T²·heads·d_h). Embedding lookups and norms are not MACs."""
    macs = 0
    for m in model.modules():
        if _is_projection(m):
            macs += _in_features(m) * _out_features(m) * seq_len
    for b in attention_blocks(model):
        macs += 2 * seq_len * seq_len * b.num_heads * b.head_dim
    return macs


def _ratio(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise UserError(f"{what} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def prune_transformer(model: nn.Module, data: Iterable | None = None, *, head_ratio: float = 0.25, ffn_ratio: float = 0.25,
                      importance_method: str = "activation", scope: str = "global", min_heads: int = 1,
                      num_batches: int = 8, seq_len: int = 128, forward_fn: Callable | None = None,
                      loss_fn: Callable | None = None) -> TransformerPruneReport:
    """Remove `head_ratio` of all heads and `ffn_ratio` of all FFN channels, least important first.

    scope="global" ranks heads across layers after normalizing each layer's scores by their mean (Michel et
    al. normalize per layer so layers compare), keeping ≥ `min_heads` per block; scope="layer" removes the
    same fraction from every block. FFN channels are always ranked per layer (widths stay balanced).
    """
    head_ratio, ffn_ratio = _ratio(head_ratio, "head_ratio"), _ratio(ffn_ratio, "ffn_ratio")
    if scope not in ("global", "layer"):
        raise UserError(f"scope must be 'global' or 'layer', got {scope!r}")
    if isinstance(min_heads, bool) or not isinstance(min_heads, int) or min_heads < 1:
        raise UserError(f"min_heads must be an integer ≥ 1, got {min_heads!r}")
    from nncompress.analysis.counts import count_parameters

    blocks, ffns = attention_blocks(model), ffn_blocks(model)
    head_scores, chan_scores = importance(model, data, importance_method, num_batches, forward_fn, loss_fn)
    report = TransformerPruneReport({b.name: b.num_heads for b in blocks}, {}, {f.name: f.width for f in ffns}, {},
                                    macs_before=transformer_macs(model, seq_len), params_before=count_parameters(model).params,
                                    scores={k: [round(float(x), 6) for x in v] for k, v in head_scores.items()})
    drop: dict[str, list[int]] = {b.name: [] for b in blocks}
    if blocks and head_ratio > 0:
        if scope == "layer":
            for b in blocks:
                k = min(int(round(head_ratio * b.num_heads)), b.num_heads - min_heads)
                drop[b.name] = torch.argsort(head_scores[b.name])[:max(k, 0)].tolist()
        else:
            entries = []
            for b in blocks:
                s = head_scores[b.name]
                s = s / s.mean().clamp_min(1e-12)
                entries += [(float(s[h]), b.name, h) for h in range(b.num_heads)]
            total = sum(b.num_heads for b in blocks)
            budget = int(round(head_ratio * total))
            left = {b.name: b.num_heads for b in blocks}
            for score, name, h in sorted(entries):
                if budget == 0:
                    break
                if left[name] > min_heads:
                    drop[name].append(h)
                    left[name] -= 1
                    budget -= 1
    report.heads_kept = prune_heads(model, {n: d for n, d in drop.items()}) if blocks else {}
    if ffns and ffn_ratio > 0:
        cut = {}
        for f in ffns:
            k = min(int(round(ffn_ratio * f.width)), f.width - 1)
            cut[f.name] = torch.argsort(chan_scores[f.name])[:k].tolist()
        report.ffn_kept = prune_ffn(model, cut)
    else:
        report.ffn_kept = {f.name: f.width for f in ffns}
    report.macs_after = transformer_macs(model, seq_len)
    report.params_after = count_parameters(model).params
    return report


# --- saving and reloading ---------------------------------------------------------------------------------------

@torch.no_grad()
def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Give a freshly built model the shapes recorded in `structure` (values are then loaded from a file).

    The layer count comes from the config itself (`remove_layers` updates it); then head counts (the first k
    heads are kept: the weights loaded next decide what they hold), then FFN widths.
    """
    if not isinstance(structure, dict) or not all(isinstance(structure.get(k, {}), dict) for k in ("heads", "ffn")):
        raise UserError("nncompress_structure must be a mapping with 'heads' and 'ffn' mappings (written by nncompress)")
    blocks = {b.name: b for b in attention_blocks(model)}
    for name, kept in (structure.get("heads") or {}).items():
        if name not in blocks or not isinstance(kept, int) or not 1 <= kept <= blocks[name].num_heads:
            raise UserError(f"nncompress_structure.heads['{name}'] = {kept!r} does not fit this model "
                            f"(blocks: {', '.join(f'{n}:{b.num_heads}' for n, b in blocks.items())})")
        prune_heads(model, {name: list(range(kept, blocks[name].num_heads))})
    ffns = {f.name: f for f in ffn_blocks(model)}
    for name, width in (structure.get("ffn") or {}).items():
        if name not in ffns or not isinstance(width, int) or not 1 <= width <= ffns[name].width:
            raise UserError(f"nncompress_structure.ffn['{name}'] = {width!r} does not fit this model")
        prune_ffn(model, {name: list(range(width, ffns[name].width))})
    config = getattr(model, "config", None)
    if config is not None:
        config.nncompress_structure = structure
    return model


def load_pruned_pretrained(model_class: Any, path: str | os.PathLike, **kwargs) -> nn.Module:
    """Rebuild a head/FFN/layer-pruned Hugging Face model saved with `save_pretrained`.

    Plain `from_pretrained` builds the unpruned shapes from the config and then refuses the smaller weights.
    Here a subclass of `model_class` applies `config.nncompress_structure` at the end of its own `__init__`
    (in `post_init`, which every transformers model calls), so `from_pretrained` itself — with its checkpoint
    key conversions, tied weights and dtype handling — loads the weights into the right shapes.
    """
    folder = Path(path)
    for f in (folder / "config.json",):
        if not f.is_file():
            raise UserError(f"{f}: missing; expected a folder written by save_pretrained")
    if not hasattr(model_class, "from_pretrained") or not hasattr(model_class, "post_init"):
        raise UserError(f"{getattr(model_class, '__name__', model_class)!r} is not a Hugging Face model class "
                        "(it needs from_pretrained and post_init)")

    class Pruned(model_class):  # noqa: D401 - the same model, pruned shapes
        def post_init(self):
            super().post_init()
            structure = getattr(self.config, "nncompress_structure", None)
            if structure:
                apply_structure(self, json.loads(json.dumps(structure)))

    Pruned.__name__ = Pruned.__qualname__ = model_class.__name__
    model = Pruned.from_pretrained(str(folder), **kwargs)
    return model.eval()
