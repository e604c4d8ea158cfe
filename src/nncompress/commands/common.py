"""What most commands share: build a model for a dataset and load weights into it, with clear errors."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights
from nncompress.data import Dataset, load_dataset


def load_into(net: nn.Module, weights: str | Path, what: str) -> nn.Module:
    """Load a safetensors state dict into `net` (plain or weight-shared), or raise a one-line UserError."""
    state = load_weights(weights)
    if any(k.endswith(".centroids") for k in state):  # saved while weight-shared
        from nncompress.sharing import load_shared_state_dict

        return load_shared_state_dict(net, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"weights {weights} do not fit {what}: {str(e).splitlines()[0][:300]}") from None
    return net


def model_and_data(model: str, data: str, weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """Dataset + model built for its input shape and classes, with weights loaded when given."""
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}")
    ds = load_dataset(data, seed=seed)
    net = build_model(model, ds.input_shape, ds.num_classes)
    if weights is not None:
        load_into(net, weights, f"model '{model}' on {data}")
    return net, ds
