"""Which modules carry compressible weights."""
import torch
from torch import nn

COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def compressible_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = COMPRESSIBLE_TYPES) -> dict[str, nn.Module]:
    """Linear and convolution layers by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain (un-parametrized) copy of `model` would have: effective tensors under plain names.

    Pruning masks and weight sharing are parametrizations; their internals (`.parametrizations.<t>.original`,
    masks, codebooks) are replaced by the tensor they compute. Nothing is modified (no deepcopy +
    remove_parametrizations, which would edit the parametrized class the original shares).
    """
    from torch.nn.utils import parametrize

    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k and not k.startswith("parametrizations.")}
    with torch.no_grad():
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                prefix = f"{name}." if name else ""
                for tensor_name in module.parametrizations.keys():
                    state[prefix + tensor_name] = getattr(module, tensor_name).detach().clone()
    return state
