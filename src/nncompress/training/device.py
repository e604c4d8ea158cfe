"""Where training runs: one device per process, picked from a spec ("auto", "cpu", "cuda", "cuda:N").

Under `torchrun` every rank drives its own GPU, cuda:LOCAL_RANK (LOCAL_RANK is the process's index on its
node), and the process group talks over nccl; on the CPU it uses gloo. nccl only moves CUDA tensors and
gloo is the CPU backend, so the backend follows the device.
"""
from __future__ import annotations

import os
import re

import torch
from torch import nn

from nncompress.core.errors import UserError

DEVICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def local_rank() -> int:
    """This process's index on its node, as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch.device a spec names; "auto" (or None) is cuda:LOCAL_RANK when a GPU is visible, else cpu.

    "cuda" alone also means this rank's GPU, cuda:LOCAL_RANK; "cuda:N" is GPU N. Asking for CUDA on a build or
    machine without it is a UserError rather than a late crash inside the first forward pass.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    m = _SPEC.match(text)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise UserError(f"unknown device '{spec}': use {DEVICES}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device '{spec}' requested but this PyTorch build has no CUDA / no GPU visible: use --device cpu")
    gpu = local_rank() if index is None else int(index)
    if gpu >= torch.cuda.device_count():
        raise UserError(f"device cuda:{gpu} requested but only {torch.cuda.device_count()} GPU(s) are visible: "
                        "start at most one process per GPU (torchrun --nproc-per-node) or pick another cuda:N")
    return torch.device("cuda", gpu)


def default_backend(device: torch.device) -> str:
    """The process-group backend for tensors on `device`: nccl for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def module_device(model: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (cpu for a module without tensors)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
