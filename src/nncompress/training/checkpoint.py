"""Checkpoints that survive kill -9: model and optimizer tensors as safetensors, the rest as JSON.

Each checkpoint is written to a temporary folder and renamed into place (`ckpt-000007/`); only then does
`latest` point at it, so an interrupted write leaves the previous checkpoint intact. Nothing is pickled:
optimizer state is split into tensors (`state.<param index>.<key>`) and JSON (scalars, param groups).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_text, load_weights, save_weights


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict  # a torch optimizer state_dict
    state: dict  # JSON: the caller's bookkeeping (epoch, history, ...)
    tensors: dict[str, torch.Tensor]  # extra tensors (RNG state, ...)


def _split_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | os.PathLike, step: int, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    state: dict, tensors: dict[str, torch.Tensor] | None = None, keep: int = 1) -> Path:
    """Write checkpoint number `step` under `directory` and make it the latest; keep the newest `keep`."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"ckpt-{step:06d}", root / f".ckpt-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    save_weights(model_state, tmp / "model.safetensors")
    save_weights(opt_tensors, tmp / "optimizer.safetensors")
    save_weights(dict(tensors or {}), tmp / "tensors.safetensors")
    atomic_write_text(tmp / "state.json", json.dumps({"state": state, "optimizer": opt_meta}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(root.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The latest checkpoint under `directory`, or None when there is none."""
    root = Path(directory)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    try:
        meta = json.loads((path / "state.json").read_text())
        return Checkpoint(load_weights(path / "model.safetensors"), _join_optimizer(load_weights(path / "optimizer.safetensors"), meta["optimizer"]),
                          meta["state"], load_weights(path / "tensors.safetensors"))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({e}); delete {root} to start over") from None
