"""Which modules carry compressible weights."""
from torch import nn

COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def compressible_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = COMPRESSIBLE_TYPES) -> dict[str, nn.Module]:
    """Linear and convolution layers by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}
