"""File writes that never leave half a file, and weight loading that never unpickles."""
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from nncompress.core.errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as safetensors (never pickle), atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or a torch file with weights_only=True; clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (pass an existing .safetensors file)")
    if path.suffix in {".pt", ".pth", ".bin"}:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols; the refusal below says all there is
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
            raise UserError(f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"weights file {path} is not a state dict of tensors")
        return obj
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read weights {path}: not a valid safetensors file ({str(e).splitlines()[0][:200]})") from None


def state_dict_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a model's state dict and loaded tensors, in words; None when they fit.

    Missing keys first, then unexpected ones, then shapes, each in the model's own key order, with how many
    keys differ in all, e.g. "key 'fc1.weight' has shape [300, 64] in the file, the model expects [300, 784] (1 of 6 keys differ)".
    """
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    n = len(missing) + len(extra) + len(shapes)
    if not n:
        return None
    tail = f" ({n} of {len(expected)} keys differ)"
    if missing:
        return f"the file lacks key '{missing[0]}' (shape {list(expected[missing[0]].shape)}){tail}"
    if extra:
        return f"the file has key '{extra[0]}' (shape {list(state[extra[0]].shape)}) the model does not{tail}"
    k = shapes[0]
    return f"key '{k}' has shape {list(state[k].shape)} in the file, the model expects {list(expected[k].shape)}{tail}"


def load_weights_into(module: torch.nn.Module, path: str | os.PathLike, what: str = "the model") -> torch.nn.Module:
    """Load weights from `path` into `module`, or raise one UserError naming the first mismatched key and shapes."""
    state = load_weights(path)
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise UserError(f"weights {path} do not fit {what}: {problem}; were they saved for another model, dataset or input shape?")
    module.load_state_dict(state, strict=True)
    return module
