"""Small shared helpers every method may use: errors, atomic file writes, layer discovery, seeding."""
from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes, atomic_write_text, load_weights, save_weights
from nncompress.core.layers import compressible_layers
from nncompress.core.seed import seed_everything

__all__ = [
    "UserError",
    "atomic_write_bytes",
    "atomic_write_text",
    "compressible_layers",
    "load_weights",
    "save_weights",
    "seed_everything",
]
