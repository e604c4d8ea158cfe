"""One-call model summary (counts, MACs, storage per layer and in total) and two plots.

Storage per layer: the weight in each format (see storage.py) plus the bias stored dense at 32 bits
in every format (float32, or the int32 bias of quantized kernels), so format totals are comparable.
Energy per layer (energy.py, Horowitz ISSCC 2014 45 nm costs): its MACs of `mac_type` plus one read of its
stored bytes (weight + bias, dense at `value_bits` or CSR per `weight_format`) from DRAM or SRAM.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.analysis.counts import count_layer, weight_layers
from nncompress.analysis.energy import check_mac_type, layer_energy_pj
from nncompress.analysis.macs import count_macs
from nncompress.analysis.storage import dense_bytes, layer_storage
from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes

BIAS_BITS = 32
FORMATS = ("dense", "coo", "csr", "csc")


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    nnz: int
    sparsity: float  # 1 − nnz/params over weight and bias
    weight_sparsity: float
    macs: int
    sparse_macs: int  # MACs of non-zero weights only
    dense_bytes: int
    coo_bytes: int
    csr_bytes: int
    csc_bytes: int
    energy_pj: float = 0.0  # estimate: MACs + one read of the stored bytes (energy.py)


_SUMMED = ("params", "nnz", "macs", "sparse_macs") + tuple(f"{f}_bytes" for f in FORMATS) + ("energy_pj",)


@dataclass
class ModelAnalysis:
    input_shape: tuple[int, ...]
    value_bits: int
    layers: list[LayerRow] = field(default_factory=list)
    mac_type: str = "fp32"
    weight_format: str = "dense"
    weight_memory: str = "dram"

    @property
    def totals(self) -> dict[str, Any]:
        t: dict[str, Any] = {k: sum(getattr(r, k) for r in self.layers) for k in _SUMMED}
        t["sparsity"] = 0.0 if t["params"] == 0 else 1.0 - t["nnz"] / t["params"]
        return t

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict: input_shape, value_bits, layers (list of rows), totals."""
        return {
            "input_shape": list(self.input_shape),
            "value_bits": self.value_bits,
            "energy_model": {"mac_type": self.mac_type, "weight_format": self.weight_format,
                             "weight_memory": self.weight_memory, "costs": "Horowitz ISSCC 2014, 45 nm (estimate)"},
            "layers": [{**asdict(r), "shape": list(r.shape)} for r in self.layers],
            "totals": self.totals,
        }

    def rich_table(self, title: str | None = None):
        """A rich Table with one row per layer and a total row."""
        from rich.table import Table

        table = Table(title=title or f"model analysis (input {tuple(self.input_shape)}, {self.value_bits}-bit values)")
        for col in ("layer", "type", "shape", "params", "non-zero", "sparsity", "MACs", "sparse MACs",
                    "dense B", "COO B", "CSR B", "CSC B", "energy nJ"):
            table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")

        def cells(d: dict[str, Any]) -> list[str]:
            return [f"{d['params']:,}", f"{d['nnz']:,}", f"{100 * d['sparsity']:.1f}%", f"{d['macs']:,}",
                    f"{d['sparse_macs']:,}"] + [f"{d[f + '_bytes']:,}" for f in FORMATS] + [f"{d['energy_pj'] / 1000:,.1f}"]

        for i, r in enumerate(self.layers):
            table.add_row(r.name or "(model)", r.type, "×".join(map(str, r.shape)), *cells(asdict(r)),
                          end_section=i == len(self.layers) - 1)
        table.add_row("total", "", "", *cells(self.totals), style="bold")
        return table


def _as_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise UserError(f"input_shape must be a sequence of ints like (1, 28, 28), got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise UserError(f"input_shape must be non-empty positive sizes without the batch dimension, got {shape}")
    return shape


@torch.no_grad()
def analyze(model: nn.Module, input_shape: tuple[int, ...], value_bits: int = 32, mac_type: str = "fp32",
            weight_format: str = "dense", weight_memory: str = "dram") -> ModelAnalysis:
    """Per-layer params, non-zeros, sparsity, MACs (dense and non-zero only), bytes in each format and an energy
    estimate (pJ): MACs of `mac_type` + one read of the `weight_format` ('dense' or 'csr') bytes from
    `weight_memory` ('dram' or 'sram'); see energy.py for the costs and their source."""
    shape = _as_shape(input_shape)
    check_mac_type(mac_type)
    dense_macs = count_macs(model, shape).layers
    sparse_macs = count_macs(model, shape, count_sparse=True).layers
    rows = []
    for name, m in weight_layers(model).items():
        c = count_layer(m, name)
        st = layer_storage(m.weight, value_bits)
        bias = dense_bytes(c.bias_params, BIAS_BITS)
        macs = dense_macs[name].macs if name in dense_macs else 0
        smacs = sparse_macs[name].macs if name in sparse_macs else 0
        nbytes = {f"{f}_bytes": st[f"{f}_bytes"] + bias for f in FORMATS}
        energy = layer_energy_pj(macs, smacs, nbytes["dense_bytes"], nbytes["csr_bytes"], mac_type, weight_format, weight_memory)
        rows.append(LayerRow(
            name=name, type=c.type, shape=c.weight_shape, params=c.params, nnz=c.nnz, sparsity=c.sparsity,
            weight_sparsity=c.weight_sparsity, macs=macs, sparse_macs=smacs, **nbytes, energy_pj=energy.total_pj,
        ))
    return ModelAnalysis(shape, value_bits, rows, mac_type, weight_format, weight_memory)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)  # no pyplot: no global state, always the Agg backend
    FigureCanvasAgg(fig)
    return fig


@torch.no_grad()
def weight_histogram(model: nn.Module, path: str | os.PathLike, layers: list[str] | None = None, bins: int = 100) -> Path:
    """PNG of the distribution of each layer's non-zero weights (Deep Compression Fig. 5 style), written atomically."""
    available = weight_layers(model)
    names = list(available) if layers is None else list(layers)
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(f"no weight layer named {', '.join(missing)}; the model has: {', '.join(available)}")
    if not names:
        raise UserError("the model has no layers with weights to plot")
    fig = _figure(figsize=(5, 2.2 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        w = available[name].weight.detach().flatten().float().cpu()
        w = w[w != 0]
        ax.hist(w.numpy(), bins=bins, color="tab:blue")
        ax.set_title(f"{name}: {w.numel():,} non-zero weights", fontsize=9)
        ax.set_ylabel("count")
    axes[-1].set_xlabel("weight value")
    return _save_figure(fig, path)


def sparsity_bar_plot(analysis: ModelAnalysis | dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG bar chart of weight sparsity (%) per layer, from an analysis or its to_dict(), written atomically."""
    rows = analysis.to_dict()["layers"] if isinstance(analysis, ModelAnalysis) else analysis.get("layers", [])
    if not rows:
        raise UserError("sparsity_bar_plot: the analysis has no layers")
    names = [r["name"] for r in rows]
    values = [100.0 * r["weight_sparsity"] for r in rows]
    fig = _figure(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, values, color="tab:orange")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("weight sparsity (%)")
    ax.tick_params(axis="x", labelrotation=45)
    return _save_figure(fig, path)
