"""`torch.export`: the model as an ExportedProgram (an ATen graph + weights), saved as .pt2 for ahead-of-time
runtimes (AOTInductor, ExecuTorch). Masks and shared codebooks are baked in first; the batch axis is dynamic."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.export.onnx import _plain_copy


def export_program(model: nn.Module, example_input: torch.Tensor, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """torch.export.export of a plain (un-parametrized) copy of `model` in eval mode."""
    net = _plain_copy(model)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    x = example_input if example_input.shape[0] > 1 or not dynamic_batch else example_input.repeat(2, *[1] * (example_input.dim() - 1))
    try:
        return torch.export.export(net, (x,), dynamic_shapes=shapes)
    except Exception as e:  # noqa: BLE001 - report which model failed, in one line
        raise UserError(f"torch.export of {type(model).__name__} failed: {str(e).splitlines()[0][:300]}") from None


def save_program(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export and write a .pt2 archive (temp file + rename); reload with torch.export.load(path).module()."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.export.save(export_program(model, example_input), tmp)
    os.replace(tmp, path)
    return path
