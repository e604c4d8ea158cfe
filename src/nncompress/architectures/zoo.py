"""The model zoo's published figures and the side-by-side check of our counts against them.

Counts are ours (`summary.count_params`, `summary.count_macs`: conv/linear MACs of one image, all trainable
parameters including BatchNorm γ, β). Each reference says where it comes from; where a paper rounds coarser
than 1% (V3-Large "5.4 M" for 5.48 M) we compare against the reference implementation's exact count and keep
the paper's figure alongside.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.architectures.summary import count_macs, count_params, layer_costs
from nncompress.core.errors import UserError


@dataclass(frozen=True)
class Reference:
    model: str  # key in MODELS
    params: float
    macs: float
    source: str
    paper: str = ""  # the paper's own (rounded) figures, if different from the reference
    kwargs: dict = field(default_factory=dict)
    in_shape: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000


REFERENCES: dict[str, Reference] = {r_name: r for r_name, r in [
    ("mobilenet_v1_1.0", Reference("mobilenet_v1", 4.24e6, 569e6, "TF-slim MobileNet_v1_1.0_224 table",
                                   "Howard et al. 2017 Table 8: 4.2 M, 569 M")),
    ("mobilenet_v1_0.25", Reference("mobilenet_v1", 0.47e6, 41e6, "TF-slim MobileNet_v1_0.25_224 table",
                                    kwargs={"width_mult": 0.25})),
    ("mobilenet_v2_1.0", Reference("mobilenet_v2", 3_504_872, 300e6, "torchvision mobilenet_v2 (exact count); MACs: paper",
                                   "Sandler et al. 2018 Table 4: 3.4 M, 300 M (TF-slim 3.47 M counts no BatchNorm)")),
    ("mobilenet_v3_large", Reference("mobilenet_v3_large", 5_483_032, 217e6,
                                     "torchvision/Keras count; MACs: TF-slim mobilenet_v3_large_1.0_224 table",
                                     "Howard et al. 2019 Table 3: 5.4 M, 219 M")),
    ("mobilenet_v3_small", Reference("mobilenet_v3_small", 2_542_856, 56e6, "torchvision/Keras count; MACs: paper",
                                     "Howard et al. 2019 Table 3: 2.5 M, 56 M")),
    ("shufflenet_v1_g3", Reference("shufflenet_v1", 1.87e6, 137e6, "MMPretrain ShuffleNetV1 1.0x g=3 params; MACs: paper Table 1",
                                   "Zhang et al. 2018 Table 1: 137 MFLOPs (g = 3); Table 2 rounds 1× to 140", {"groups": 3})),
    ("shufflenet_v2_1.0", Reference("shufflenet_v2", 2_278_604, 146e6, "torchvision shufflenet_v2_x1_0; MACs: paper",
                                    "Ma et al. 2018 Table 5: 2.3 M, 146 M")),
    ("squeezenet1_0", Reference("squeezenet1_0", 1_248_424, 820e6, "torchvision squeezenet1_0 (0.82 GFLOPS)",
                                "Iandola et al. 2016: 1.25 M")),
    ("squeezenet1_1", Reference("squeezenet1_1", 1_235_496, 350e6, "torchvision squeezenet1_1 (0.35 GFLOPS)",
                                "SqueezeNet v1.1 README: 1.24 M, 2.4x less computation than 1.0")),
    ("inception_v3", Reference("inception_v3", 27_161_264, 5.71e9, "torchvision inception_v3 (with aux head, 299×299)",
                               "Szegedy et al. 2016", {"aux_logits": True}, (3, 299, 299))),
]}


def model_summary(model: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """Per-layer and total parameters and MACs of `model` for one input of shape `in_shape` (C, H, W)."""
    layers = layer_costs(model, in_shape)
    return {
        "in_shape": list(in_shape),
        "params": count_params(model),
        "macs": sum(r.macs for r in layers),
        "layers": [{"name": r.name, "type": r.kind, "out_shape": list(r.out_shape), "params": r.params, "macs": r.macs}
                   for r in layers],
    }


def compare_published(names: list[str] | None = None) -> list[dict]:
    """Build each reference model at its ImageNet size and compare our counts with the published ones.

    Each row: ours, published, and the relative errors (ours / published − 1).
    """
    from nncompress.architectures import build_model

    rows = []
    for name in names or list(REFERENCES):
        if name not in REFERENCES:
            raise UserError(f"no published figures for '{name}': choose one of {', '.join(REFERENCES)}")
        ref = REFERENCES[name]
        with torch.device("meta"):  # counts need shapes only
            model = build_model(ref.model, ref.in_shape, ref.num_classes, **ref.kwargs)
        params, macs = count_params(model), count_macs(model, ref.in_shape)
        rows.append({"name": name, "in_shape": list(ref.in_shape), "params": params, "macs": macs,
                     "published_params": ref.params, "published_macs": ref.macs,
                     "params_error": params / ref.params - 1, "macs_error": macs / ref.macs - 1,
                     "source": ref.source, "paper": ref.paper})
    return rows


def zoo_list() -> list[dict]:
    """Every registered model: its name, the first line of its docstring, and any published reference figures."""
    from nncompress.architectures import MODELS

    refs: dict[str, list[str]] = {}
    for key, ref in REFERENCES.items():
        refs.setdefault(ref.model, []).append(key)
    rows = []
    for name, builder in MODELS.items():
        doc = (builder.__doc__ or sys.modules[builder.__module__].__doc__ or "").strip().splitlines()
        rows.append({"name": name, "description": doc[0] if doc else "", "references": refs.get(name, [])})
    return rows


def zoo_summary(name: str, in_shape: tuple[int, ...] | None = None, num_classes: int = 1000, **kwargs) -> dict:
    """Per-layer parameters and MACs of model `name` (built on the meta device: no memory, no compute).

    `in_shape` defaults to the model's ImageNet size (3×299×299 for Inception V3, else 3×224×224). The published
    reference is attached when the configuration is one the zoo has figures for.
    """
    from nncompress.architectures import build_model

    if in_shape is None:
        in_shape = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise UserError(f"input shape must be C×H×W with positive sizes, got {'x'.join(map(str, in_shape))}")
    try:
        with torch.device("meta"):
            model = build_model(name, tuple(in_shape), num_classes, **kwargs)
        result = model_summary(model, tuple(in_shape))
    except (TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot build {name} for input {'x'.join(map(str, in_shape))}: {str(e).splitlines()[0][:200]}") from None
    result.update({"name": name, "num_classes": num_classes, "kwargs": kwargs, "reference": None})
    for key, ref in REFERENCES.items():
        if (ref.model, dict(ref.kwargs), tuple(ref.in_shape), ref.num_classes) == (name, kwargs, tuple(in_shape), num_classes):
            result["reference"] = {"name": key, "params": ref.params, "macs": ref.macs, "source": ref.source,
                                   "paper": ref.paper}
    return result
