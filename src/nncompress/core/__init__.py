"""Small shared helpers every method may use: errors, atomic file writes, layer discovery, seeding."""
from importlib import import_module

from nncompress.core.errors import UserError

# The rest load on first use (PEP 562): importing `nncompress.core.errors` must not import torch, so the CLI
# can answer --help and usage errors without paying torch's multi-second import.
_LAZY = {"atomic_write_bytes": "io", "atomic_write_text": "io", "load_weights": "io", "save_weights": "io",
         "compressible_layers": "layers", "seed_everything": "seed"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"nncompress.core.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nncompress.core' has no attribute {name!r}")


__all__ = [
    "UserError",
    "atomic_write_bytes",
    "atomic_write_text",
    "compressible_layers",
    "load_weights",
    "save_weights",
    "seed_everything",
]
