"""Quantization: the math, calibration, post-training (dynamic, static, fp16/bf16), quantization-aware
training (STE, LSQ), mixed precision, accumulator overflow analysis, lowering to real int8 kernels (our eager
modules on torch._int_mm, ONNX Runtime, torchao), and module-swap quantization for models no tracer captures.

    gm = quantize_static(model, calib_loader, bits=8, calibration="mse",
                         reduce_range=not cpu_has_vnni())                      # simulated, fake-quantized
    int8 = to_int8_kernels(gm)                                                 # our int8 modules on torch._int_mm
    compare_with_simulation(gm, int8, x)                                       # max |error|, in output steps
    OnnxRuntimeModel(to_onnx_qdq(gm, x))                                       # QDQ ONNX with our scales, in ORT
    model = quantize_(model, StaticInt8Config("mse"), calib_data=loader)       # no graph: module swap, hooks calibrate
    save_quantized_model(model, "q.safetensors"); load_quantized(MyNet, "q.safetensors")   # bit-identical reload
    gm = ptq_ladder(model, calib_loader, weight_bits=4, granularity="tensor",  # fold BN → CLE (+ high-bias absorption)
                    bias_correction="empirical", adaround=True)               # → calibrate → AdaRound → bias correction
"""
from nncompress.quantization.adaround import AdaRoundConfig, adaround_weight, apply_adaround
from nncompress.quantization.backends import compare_with_simulation, cpu_has_vnni, to_int8_kernels, to_torchao
from nncompress.quantization.bias_correction import (
    analytic_bias_correction,
    clipped_gaussian_mean,
    empirical_bias_correction,
    relu_gaussian_mean,
)
from nncompress.quantization.equalization import (
    ChannelClamp,
    absorb_high_biases,
    batchnorm_statistics,
    cross_layer_equalization,
    equalize,
    find_layer_pairs,
)
from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer, fake_quantize_ste
from nncompress.quantization.fusion import fold_bn, fuse_conv_bn
from nncompress.quantization.graph import QuantConfig, QuantLayer, freeze, prepare, quantizers
from nncompress.quantization.ladder import ptq_ladder
from nncompress.quantization.measure import float_weight_bytes, quantized_weight_bytes
from nncompress.quantization.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from nncompress.quantization.onnx_qdq import OnnxRuntimeModel, save_onnx_qdq, to_onnx_float, to_onnx_qdq
from nncompress.quantization.pipeline import quantize_and_measure, quantized_state_dict, save_quantized
from nncompress.quantization.ptq import calibrate, quantize_dynamic, quantize_static, quantize_weights, to_reduced_precision
from nncompress.quantization.qat import convert_qat, prepare_qat, quantize_qat, train_qat
from nncompress.quantization.quantizer import (
    binarize,
    check_bits,
    compute_qparams,
    dequantize,
    fake_quantize,
    minmax_qparams,
    qrange,
    quantize,
    round_stochastic,
    ternarize,
)

__all__ = [
    "OBSERVERS", "EntropyObserver", "FakeQuantize", "LSQQuantizer", "MSEObserver", "MinMaxObserver",
    "MovingAverageMinMaxObserver", "Observer", "PercentileObserver", "QuantConfig", "QuantLayer", "binarize", "calibrate",
    "check_bits", "compare_with_simulation", "compute_qparams", "convert_qat", "cpu_has_vnni", "dequantize", "fake_quantize",
    "fake_quantize_ste", "float_weight_bytes", "fold_bn", "freeze", "fuse_conv_bn", "make_observer",
    "minmax_qparams", "prepare", "prepare_qat", "qrange", "quantize", "quantize_dynamic", "quantize_qat", "quantize_static",
    "quantize_weights", "quantized_weight_bytes", "quantizers", "round_stochastic", "ternarize", "to_int8_kernels", "to_torchao",
    "to_reduced_precision", "train_qat", "OnnxRuntimeModel", "save_onnx_qdq", "to_onnx_float", "to_onnx_qdq", "quantize_and_measure",
    "quantized_state_dict", "save_quantized",
    "AdaRoundConfig", "ChannelClamp", "absorb_high_biases", "adaround_weight", "analytic_bias_correction", "apply_adaround",
    "batchnorm_statistics", "clipped_gaussian_mean", "cross_layer_equalization", "empirical_bias_correction", "equalize",
    "find_layer_pairs", "ptq_ladder", "relu_gaussian_mean",
]
from nncompress.quantization.ristretto import (  # noqa: E402  Ristretto formats and bit trimming (issue 17)
    LayerBits, TrimResult, dynamic_fixed_point, minifloat, power_of_two, simulate, trim_bits,
)

__all__ += ["LayerBits", "TrimResult", "dynamic_fixed_point", "minifloat", "power_of_two", "simulate", "trim_bits"]
from nncompress.quantization.pact import PACT, pact, pact_alphas, pact_l2, replace_relu_with_pact  # noqa: E402  issue 17
from nncompress.quantization.widening import WidenResult, widen  # noqa: E402  WRPN widening (issue 17)

__all__ += ["PACT", "WidenResult", "pact", "pact_alphas", "pact_l2", "replace_relu_with_pact", "widen"]
from nncompress.quantization.weight_only import (  # noqa: E402  LLM weight-only quantization (issue 15)
    GroupQuantizedWeight, WeightOnlyLinear, matmul_nbits_model, mse_clip_ratios, pack_codes, quantize_rtn,
    quantize_weight_only, unpack_codes, weight_only_bytes,
)
from nncompress.quantization.gptq import gptq, gptq_quantize  # noqa: E402  GPTQ (issue 15)
from nncompress.quantization.awq import InputScaled, awq, awq_clip_search, awq_scale_search  # noqa: E402  AWQ (issue 15)
from nncompress.quantization.smoothquant import (  # noqa: E402  SmoothQuant W8A8, int8 KV cache (issue 15)
    KVCacheInt8, W8A8Linear, kv_cache_int8, quantize_w8a8, search_alpha, smooth, smoothing_scales, smoothquant,
)

__all__ += [
    "GroupQuantizedWeight", "WeightOnlyLinear", "matmul_nbits_model", "mse_clip_ratios", "pack_codes", "quantize_rtn",
    "quantize_weight_only", "unpack_codes", "weight_only_bytes", "gptq", "gptq_quantize", "InputScaled", "awq",
    "awq_clip_search", "awq_scale_search", "KVCacheInt8", "W8A8Linear", "kv_cache_int8", "quantize_w8a8", "search_alpha",
    "smooth", "smoothing_scales", "smoothquant",
]
from nncompress.quantization.modules import (  # noqa: E402  eager int8 modules (issues 13, 14)
    QuantizedConv, QuantizedEmbedding, QuantizedLinear, QuantizedWeight, pack_signed_int4, unpack_signed_int4,
)
from nncompress.quantization.swap import (  # noqa: E402  module-swap quantization, no graph (issue 13)
    DynamicInt8Config, StaticInt8Config, WeightOnlyConfig, quantize_, quantized_modules, weight_storage_bytes,
)

__all__ += ["DynamicInt8Config", "QuantizedConv", "QuantizedEmbedding", "QuantizedLinear", "QuantizedWeight", "StaticInt8Config",
            "WeightOnlyConfig", "pack_signed_int4", "quantize_", "quantized_modules", "unpack_signed_int4", "weight_storage_bytes"]
from nncompress.quantization.persist import load_quantized, save_quantized_model  # noqa: E402  safetensors + JSON layout
from nncompress.quantization.recurrent import QuantizedRNN  # noqa: E402  int8 LSTM/GRU for the swap path

__all__ += ["QuantizedRNN", "load_quantized", "save_quantized_model"]
from nncompress.quantization.onnx_swap import is_swap_quantized, to_onnx_int8  # noqa: E402  int8 ONNX of swapped models (issues 13/14)

__all__ += ["is_swap_quantized", "to_onnx_int8"]

from nncompress.quantization.rnn_int8 import lstm_to_onnx, quantize_lstm_dynamic  # noqa: E402  LSTM int8 on ORT (issue 17)

__all__ += ["lstm_to_onnx", "quantize_lstm_dynamic"]

from nncompress.quantization.qat_swap import prepare_qat_swap  # noqa: E402  QAT by module swap, no graph (issue 13)

__all__ += ["prepare_qat_swap"]
