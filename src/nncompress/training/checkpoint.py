"""Checkpoints that survive kill -9: model and optimizer tensors as safetensors, the rest as JSON.

Each checkpoint is written to a temporary folder and renamed into place (`ckpt-000007/`); only then does
`latest` point at it, so an interrupted write leaves the previous checkpoint intact. Nothing is pickled:
optimizer state is split into tensors (`state.<param index>.<key>`) and JSON (scalars, param groups).
"""
from __future__ import annotations

import json
import os
import re
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


_CKPT_NAME = re.compile(r"ckpt-\d{6,}")


def clean_interrupted(directory: str | os.PathLike) -> list[str]:
    """Remove what a kill during `save_checkpoint` can leave: `.ckpt-*.tmp` folders and atomic-write temp files."""
    root = Path(directory)
    removed = []
    if not root.is_dir():
        return removed
    for stale in list(root.glob(".ckpt-*.tmp")) + list(root.glob(".latest.*.tmp")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale.name)
    return removed


def _fail(path: Path, root: Path, why: str) -> UserError:
    return UserError(f"checkpoint {path} is unreadable ({why}); delete {root} to start over, or run without --resume")


def load_checkpoint(directory: str | os.PathLike, state_keys: tuple[str, ...] = (), tensor_keys: tuple[str, ...] = ()) -> Checkpoint | None:
    """The latest checkpoint under `directory`, or None when there is none.

    A corrupted or foreign checkpoint raises one UserError naming the file and how to recover; the
    caller may name the `state` keys and extra tensors it needs, so their absence is that error too.
    Leftovers of a write that was killed (`.ckpt-*.tmp`) are removed first.
    """
    root = Path(directory)
    clean_interrupted(root)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(pointer, root, f"{type(e).__name__}") from None
    if not _CKPT_NAME.fullmatch(name):
        raise _fail(pointer, root, f"'latest' names {name[:60]!r}, not a ckpt-NNNNNN folder")
    path = root / name
    if not path.is_dir():
        raise _fail(path, root, "the folder 'latest' points to is missing")
    try:
        raw = (path / "state.json").read_bytes()
        if len(raw) > 256 << 20:
            raise ValueError(f"state.json is {len(raw)} bytes")
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict) or not isinstance(meta.get("optimizer"), dict):
            raise ValueError("state.json is not a checkpoint's (no 'state' and 'optimizer' objects)")
        opt = meta["optimizer"]
        if not isinstance(opt.get("scalars"), dict) or not isinstance(opt.get("param_groups"), list):
            raise ValueError("state.json has no optimizer scalars and param groups")
        missing = [k for k in state_keys if k not in meta["state"]]
        if missing:
            raise ValueError(f"state.json lacks {missing[0]!r}: written by another program or version")
        model = load_weights(path / "model.safetensors")
        optimizer = _join_optimizer(load_weights(path / "optimizer.safetensors"), opt)
        tensors = load_weights(path / "tensors.safetensors")
        missing = [k for k in tensor_keys if k not in tensors]
        if missing:
            raise ValueError(f"tensors.safetensors lacks {missing[0]!r}")
        return Checkpoint(model, optimizer, meta["state"], tensors)
    except UserError as e:  # load_weights: already one line, naming the file
        raise _fail(path, root, str(e)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise _fail(path, root, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
