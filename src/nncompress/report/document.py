"""A compression report as one self-contained HTML file (figures inlined as base64 PNG) and its Markdown twin.

Sections: summary, per-stage sizes and ratios (original / compressed), per-layer table, accuracy-vs-size
Pareto plot, weight histograms before/after, training history, sensitivity curves (when given), environment.
Energy: the analysis package's estimate (Horowitz ISSCC 2014, 45 nm; fp32 MACs + one read of each layer's
stored weights from DRAM), before (dense fp32) and after (each layer in the format its bytes are counted in).
"""
from __future__ import annotations

import base64
import html
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from nncompress.analysis import analyze
from nncompress.core.io import atomic_write_text
from nncompress.core.layers import compressible_layers
from nncompress.report import plots


def environment() -> dict[str, str]:
    """Versions and threads the numbers were measured with."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": str(os.cpu_count()),
           "torch_threads": str(torch.get_num_threads())}
    for pkg in ("torch", "numpy", "onnx", "onnxruntime", "nncompress"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    return env


@dataclass
class Report:
    title: str
    summary: dict[str, str]
    stages: list[dict]  # stage, bytes, ratio, top1
    layers: list[dict]  # name, shape, params, nnz_before, nnz_after, sparsity_after, csr_bytes_after
    figures: dict[str, bytes] = field(default_factory=dict)  # caption → PNG
    sensitivity: dict | None = None  # the curves behind the sensitivity figure
    env: dict[str, str] = field(default_factory=environment)

    def _tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        stages = [[s["stage"], f"{s['bytes']:,}", f"{s['ratio']:.2f}×", f"{s['top1']:.2f}"] for s in self.stages]
        layers = [[r["name"], r["shape"], f"{r['params']:,}", f"{r['nnz_before']:,}", f"{r['nnz_after']:,}",
                   f"{100 * r['sparsity_after']:.1f}%", f"{r['bytes_after']:,}",
                   "" if r.get("energy_after_pj") is None else f"{r['energy_after_pj'] / 1000:,.1f}"] for r in self.layers]
        return [("Stages (ratio = original / compressed bytes)", ["stage", "bytes", "ratio", "top-1 (%)"], stages),
                ("Layers", ["layer", "weight shape", "weights", "non-zero before", "non-zero after", "sparsity after",
                            "bytes after", "energy after (nJ, est.)"], layers)]

    def to_html(self) -> str:
        e = html.escape
        parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(self.title)}</title><style>"
                 "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
                 "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
                 "</style></head><body>", f"<h1>{e(self.title)}</h1>", "<ul>"]
        parts += [f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in self.summary.items()] + ["</ul>"]
        for caption, head, rows in self._tables():
            parts.append(f"<h2>{e(caption)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        for caption, png in self.figures.items():
            parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        parts.append("<h2>Environment</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in self.env.items()))
        parts.append("</table></body></html>")
        return "\n".join(parts)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""] + [f"- **{k}**: {v}" for k, v in self.summary.items()] + [""]
        for caption, head, rows in self._tables():
            lines += [f"## {caption}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        for caption, png in self.figures.items():
            lines += [f"## {caption}", "", f"![{caption}](data:image/png;base64,{base64.b64encode(png).decode()})", ""]
        lines += ["## Environment", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.env.items()]
        return "\n".join(lines) + "\n"

    def write(self, html_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> list[Path]:
        """Write the HTML (and Markdown) atomically; returns the paths."""
        out = [atomic_write_text(html_path, self.to_html())]
        if markdown_path is not None:
            out.append(atomic_write_text(markdown_path, self.to_markdown()))
        return out


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in compressible_layers(model).items()}


def build_report(before: nn.Module, after: nn.Module, input_shape: tuple[int, ...], top1_before: float, top1_after: float, *,
                 title: str = "nncompress report", value_bits: int = 32, history: list[dict] | None = None,
                 sensitivity: dict | None = None, extra: dict[str, str] | None = None) -> Report:
    """Compare two models layer by layer. `value_bits`: bits per stored weight after compression (32 unless
    quantized or shared). Stage bytes: dense fp32 before; after as dense fp32, as CSR fp32, and as CSR at
    `value_bits` (each layer in the smaller of dense and CSR). `sensitivity`: a SensitivityResult.to_dict()."""
    a_before, a_after32 = analyze(before, input_shape), analyze(after, input_shape)
    a_after = analyze(after, input_shape, value_bits) if value_bits != 32 else a_after32
    csr_energy = {r.name: r.energy_pj for r in analyze(after, input_shape, value_bits, weight_format="csr").layers}
    dense_before = a_before.totals["dense_bytes"]

    def best(a) -> int:
        return sum(min(r.dense_bytes, r.csr_bytes) for r in a.layers)

    stages = [("before: dense fp32", dense_before, top1_before), ("after: dense fp32", a_after32.totals["dense_bytes"], top1_after),
              ("after: sparse (CSR) fp32", best(a_after32), top1_after)]
    if value_bits != 32:
        stages.append((f"after: sparse (CSR) {value_bits}-bit values", best(a_after), top1_after))
    stage_rows = [{"stage": s, "bytes": b, "ratio": dense_before / max(b, 1), "top1": t} for s, b, t in stages]
    before_rows = {r.name: r for r in a_before.layers}
    layers = []
    for r in a_after.layers:
        name = r.name.removesuffix(".layer")  # a QAT graph wraps each layer
        rb = before_rows.get(name, before_rows.get(r.name))
        layers.append({"name": name, "shape": "×".join(map(str, r.shape)), "params": rb.params if rb else r.params,
                       "nnz_before": rb.nnz if rb else r.params, "nnz_after": r.nnz, "sparsity_after": r.weight_sparsity,
                       "bytes_after": min(r.dense_bytes, r.csr_bytes),
                       "energy_after_pj": r.energy_pj if r.dense_bytes <= r.csr_bytes else csr_energy[r.name]})
    wb = _weights(before)
    wa = {k.removesuffix(".layer"): v for k, v in _weights(after).items()}
    figures = {"Accuracy vs size": plots.pareto_png([s["stage"] for s in stage_rows], [s["bytes"] / 1024 for s in stage_rows],
                                                    [s["top1"] for s in stage_rows]),
               "Weight histograms (non-zero weights)": plots.histograms_png(wb, wa)}
    if history:
        figures["Training history"] = plots.history_png(history)
    if sensitivity:
        figures["Pruning sensitivity"] = plots.sensitivity_png(sensitivity["levels"], sensitivity["metrics"], sensitivity["baseline"])
    summary = {"top-1 before → after": f"{top1_before:.2f}% → {top1_after:.2f}%",
               "compression": f"{stage_rows[-1]['ratio']:.1f}× ({dense_before:,} → {stage_rows[-1]['bytes']:,} bytes)",
               "weight sparsity": f"{100 * a_after.totals['sparsity']:.1f}%",
               "energy estimate (45 nm, fp32 MACs, weights from DRAM)":
                   f"{a_before.totals['energy_pj'] / 1e6:,.3f} µJ → {sum(r['energy_after_pj'] for r in layers) / 1e6:,.3f} µJ",
               **(extra or {})}
    return Report(title, summary, stage_rows, layers, figures, sensitivity=sensitivity)
