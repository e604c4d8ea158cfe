"""The post-training quantization ladder: each rung fixes the error the previous one leaves, with no
retraining (Nagel et al. 2019, DFQ; Nagel et al. 2020, AdaRound; Nagel et al. 2021, "A White Paper on
Neural Network Quantization", §4's standard PTQ pipeline):

    fold BN → cross-layer equalization (+ high-bias absorption) → calibrate activation ranges
            → AdaRound the weights → bias correction

Why this order: equalization needs BN folded and the BN statistics to absorb biases; AdaRound needs the
activation quantizers in place to see the inputs the quantized model will really give each layer; bias
correction comes last so it removes whatever mean shift the final weights still carry. Activation ranges
are calibrated once, after CLE and before the weight rungs (which move each output by at most the weight
error); weights stay on the grid `quantize_static`'s weight quantizers recompute, so `to_int8_kernels`,
`to_onnx_qdq` and `save_quantized` take the result as they take any static graph.

Measured (tests/quantization/test_ptq_ladder.py, a MobileNetV2-like net, one epoch on mnist5k, fp32 85.4 %):
per-tensor W8A8 with depthwise ranges spread over 100×: min-max 56.0 %, bias correction 63.0 %, CLE 85.5 %,
CLE + bias correction 85.6 %; W4A8 per channel: round-to-nearest 81.8 %, AdaRound 85.0 %.
"""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.adaround import AdaRoundConfig, apply_adaround
from nncompress.quantization.bias_correction import analytic_bias_correction, empirical_bias_correction
from nncompress.quantization.equalization import RELU6_MODES, absorb_high_biases, batchnorm_statistics, cross_layer_equalization
from nncompress.quantization.fusion import fuse_conv_bn
from nncompress.quantization.ptq import quantize_static

BIAS_CORRECTIONS = ("empirical", "analytic", None)


def ptq_ladder(model: nn.Module, calib_data, weight_bits: int = 8, act_bits: int = 8, granularity: str = "tensor",
               calibration: str = "minmax", num_batches: int = 8, cle: bool = True, high_bias_absorption: bool = True,
               relu6: str = "clamp", bias_correction: str | None = "empirical", adaround: bool = False,
               adaround_config: AdaRoundConfig | None = None, asymmetric: bool = True, keep_first_last: bool = False,
               reduce_range: bool = False) -> fx.GraphModule:
    """Static PTQ with the DFQ/AdaRound rungs; returns the simulated quantized graph (the model is not modified).

    granularity: weight scales per "tensor" (where CLE matters most) or per "channel".
    cle / high_bias_absorption / relu6: see `equalization` (relu6="clamp", the default, keeps the function
        exact with per-channel clip bounds; "replace" swaps ReLU6 for ReLU in the equalized pairs, as the paper
        does; "skip" leaves those pairs).
    bias_correction: "empirical" (measured on calib_data), "analytic" (data-free, from BN statistics) or None.
    adaround: learn weight rounding (`adaround_config`, `asymmetric` reconstruction) instead of nearest.
    keep_first_last / reduce_range: as in `quantize_static` (the CLI passes them so the ladder's graph lowers to
        the same int8 kernels a plain static graph does; the rungs skip the layers left in float).

    The graph carries `ptq_ladder_report`: equalized pairs, absorbed layers, AdaRound errors, corrected layers."""
    if bias_correction not in BIAS_CORRECTIONS:
        raise UserError(f"unknown bias correction '{bias_correction}': use 'empirical', 'analytic' or None")
    if relu6 not in RELU6_MODES:
        raise UserError(f"unknown relu6 handling '{relu6}': use one of {', '.join(RELU6_MODES)}")
    stats = batchnorm_statistics(model)
    fused = fuse_conv_bn(model)
    report: dict = {"equalized_pairs": [], "absorbed": [], "adaround": {}, "bias_corrected": []}
    pairs = None
    if cle:
        pairs = cross_layer_equalization(fused, relu6=relu6, stats=stats)
        report["equalized_pairs"] = [(p.first, p.second) for p in pairs if not p.notes]
        if high_bias_absorption and stats:
            report["absorbed"] = sorted(absorb_high_biases(fused, stats, pairs))
    gm = quantize_static(fused, calib_data, bits=weight_bits, granularity=granularity, calibration=calibration,
                         num_batches=num_batches, act_bits=act_bits, keep_first_last=keep_first_last, reduce_range=reduce_range)
    if adaround:
        report["adaround"] = apply_adaround(gm, fused, calib_data, num_batches, asymmetric=asymmetric, config=adaround_config)
    if bias_correction == "empirical":
        report["bias_corrected"] = sorted(empirical_bias_correction(gm, calib_data, num_batches))
    elif bias_correction == "analytic":
        report["bias_corrected"] = sorted(analytic_bias_correction(gm, fused, stats))
    gm.ptq_ladder_report = report
    return gm
