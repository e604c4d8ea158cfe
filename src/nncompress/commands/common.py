"""What most commands share: build a model for a dataset and load weights into it, with clear errors."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nncompress.core.errors import UserError

if TYPE_CHECKING:  # torch loads on first use, not when the CLI starts (--help and usage errors stay fast)
    from torch import nn

    from nncompress.data import Dataset


def load_into(net: nn.Module, weights: str | Path, what: str) -> nn.Module:
    """Load a safetensors state dict into `net` (plain or weight-shared), or raise a one-line UserError."""
    from nncompress.core.io import load_weights

    state = load_weights(weights)
    if any(k.endswith(".centroids") for k in state):  # saved while weight-shared
        from nncompress.sharing import load_shared_state_dict

        return load_shared_state_dict(net, state)
    from nncompress.core.io import state_dict_mismatch

    problem = state_dict_mismatch(net.state_dict(), state)  # names the first mismatched key and both shapes
    if problem:
        raise UserError(f"weights {weights} do not fit {what}: {problem}; were they saved for another model or dataset?")
    net.load_state_dict(state, strict=True)
    return net


def model_and_data(model: str, data: str, weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """Dataset + model built for its input shape and classes, with weights loaded when given."""
    from nncompress.architectures import build_model
    from nncompress.data import load_dataset

    if weights is not None and not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}")
    ds = load_dataset(data, seed=seed)
    net = build_model(model, ds.input_shape, ds.num_classes)
    if weights is not None:
        load_into(net, weights, f"model '{model}' on {data}")
    return net, ds


# ---- checks every command runs on its options before any data loads or any training starts ----------------------
# Bad input must fail in the first second with one line that names the option and the fix, never after an hour of
# training (an unwritable --out used to surface only when the weights were saved).

def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (where a new file or folder would be created)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable_under(path: Path, option: str, shown: Path | None = None) -> None:
    """Files can be created at `path` (or inside it, for a folder): the nearest existing ancestor is a writable folder.

    Writability is probed by creating and removing a temp file, not by permission bits: root ignores the bits,
    while a read-only mount or an immutable folder still refuses.
    """
    base = _nearest_existing(path)
    path = shown or path  # the path the user typed, in the message
    if not base.is_dir():
        raise UserError(f"{option} {path}: {base} is a file, not a folder; choose a path whose parent folders are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nncompress-probe.", dir=base)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write in {base} ({e.strerror or type(e).__name__}); "
                        "choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """An output folder: absent (it will be created) or an existing, writable folder; never an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is an existing file, but a folder is expected; pass a folder path")
    _check_creatable_under(path, option)
    return path


def check_out_file(path: str | Path | None, option: str = "--out") -> Path | None:
    """An output file: absent or an existing file (replaced atomically), in a writable folder; never a folder."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder, but a file is expected; pass a file path inside it")
    if str(path).endswith(("/", os.sep)):
        raise UserError(f"{option} {path} ends with a slash, but a file is expected")
    _check_creatable_under(path.parent, option, shown=path)
    return path


def check_in_file(path: str | Path | None, option: str, what: str = "file") -> Path | None:
    """An input file that exists, is a regular file and can be read."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; pass the {what} itself")
    if not path.is_file():
        raise UserError(f"{option}: {what} not found: {path} (check the path)")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option}: cannot read {path} (permission denied)")
    return path


def check_int(value: int | None, option: str, lo: int | None = None, hi: int | None = None) -> int | None:
    """An integer option inside [lo, hi] (either bound optional); None passes (the option was not given)."""
    if value is None:
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            rng = f">= {lo}"
        elif lo is None:
            rng = f"<= {hi}"
        else:
            rng = f"in {lo}..{hi}"
        raise UserError(f"{option} must be {rng}, got {value}")
    return value


def check_float(value: float | None, option: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> float | None:
    """A finite float option inside its interval; NaN and ±inf are refused (typer parses 'nan' and 'inf')."""
    if value is None:
        return None
    ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi is None else "]"
        rng = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise UserError(f"{option} must be a finite number in {rng}, got {value}")
    return value


def check_lr(value: float, option: str = "--lr") -> float:
    """A learning rate: finite and > 0 (10 is already absurd; above it is refused as a typo)."""
    return check_float(value, option, 0.0, 10.0, lo_open=True)


def check_seed(value: int, option: str = "--seed") -> int:
    """Seeds feed numpy, which takes 0..2**32-1."""
    return check_int(value, option, 0, 2**32 - 1)


def check_model(name: str, option: str = "--model") -> str:
    """A registered model name, or the user's own as package.module:factory / path/to/file.py:factory (its module
    imported and the factory found, not called), checked before any data loads."""
    from nncompress.core.model_ref import check_model_ref

    return check_model_ref(name, option)


def check_data(name: str, option: str = "--data") -> str:
    """A bundled dataset name, an existing .npz file, an image folder (root/<class>/<image>) or .npz shards (a folder
    or a glob); their contents are checked when they load."""
    from nncompress.data import DATASETS

    if name in DATASETS:
        return name
    path = Path(name)
    if path.is_dir() or any(ch in name for ch in "*?["):
        return name  # image folder or .npz shards: load_dataset refuses an empty or malformed one with one line
    if path.suffix.lower() != ".npz" and not path.exists():
        raise UserError(f"{option}: unknown dataset '{name}': use one of {', '.join(DATASETS)}, a path to an .npz file, "
                        "an image folder (root/<class>/<image>.jpg) or .npz shards")
    check_in_file(path, option, "data file")
    return name


def check_device(spec: str | None, option: str = "--device") -> str | None:
    """A device spec that resolves on this machine (None: the recipe's own, else auto)."""
    if spec is None:
        return None
    from nncompress.training.device import resolve_device

    try:
        resolve_device(spec)
    except UserError as e:
        if option == "--device":  # resolve_device's message already names the device and the --device fix
            raise
        raise UserError(f"{option}: {e}") from None
    return spec
