import pytest
import torch
from torch import nn

from nncompress.quantization import (LSQQuantizer, QuantLayer, compare_with_simulation, convert_qat, prepare_qat, quantize_weights,
                                     to_int8_kernels, train_qat)
from nncompress.quantization.fusion import fold_bn
from nncompress.data import make_loaders
from nncompress.training import evaluate


def test_qat_bn_folding_eval_equals_folded_conv(trained_net, digits):
    gm = prepare_qat(trained_net, digits.x_train[:64], weight_bits=8, method="ste")
    ql = gm.get_submodule("conv1")
    assert isinstance(ql, QuantLayer) and ql.bn is not None and ql.relu
    ql.eval()
    w, b = fold_bn(trained_net.conv1.weight, trained_net.conv1.bias, trained_net.bn1)
    assert torch.allclose(ql.folded()[0], w) and torch.allclose(ql.folded()[1], b)


def test_qat_training_mode_uses_batch_statistics(trained_net, digits):
    gm = prepare_qat(trained_net, digits.x_train[:64], weight_bits=8, method="ste")
    ql = gm.get_submodule("conv1").train()
    before = ql.bn.running_mean.clone()
    x = torch.randn(16, 1, 8, 8) * 3 + 1
    ql(x)
    assert not torch.allclose(before, ql.bn.running_mean)  # BN statistics still train


@pytest.mark.parametrize("method", ["lsq", "ste"])
def test_2bit_qat_recovers_accuracy(trained_net, digits, method):
    train_loader, test_loader = make_loaders(digits, batch_size=64, seed=0)  # fresh: independent of test order
    fp32 = evaluate(trained_net, test_loader)
    ptq = evaluate(quantize_weights(trained_net, digits.x_train[:64], bits=2), test_loader)
    gm = prepare_qat(trained_net, digits.x_train[:64], weight_bits=2, method=method)
    assert sum(isinstance(m, LSQQuantizer) for m in gm.modules()) == (7 if method == "lsq" else 0)
    train_qat(gm, train_loader, epochs=4, progress=False)  # 2 epochs left LSQ 8.6 pp short after the float64 data normalisation
    qat = evaluate(convert_qat(gm), test_loader)
    assert qat > ptq + 5  # 2-bit weights: fine-tuning through the quantizer beats rounding after training
    assert qat >= fp32 - 8.0


def test_qat_model_lowers_to_int8_kernels(trained_net, loaders, digits):
    gm = prepare_qat(trained_net, digits.x_train[:64], weight_bits=4, method="lsq")
    train_qat(gm, loaders[0], epochs=1, progress=False)
    gm = convert_qat(gm)
    real = to_int8_kernels(gm)
    cmp = compare_with_simulation(gm, real, digits.x_test[:256])
    assert cmp["max_abs_error"] <= cmp["output_step"] * 1.001


def test_qat_default_lr_is_small():
    import inspect

    from nncompress.quantization.qat import DEFAULT_QAT_LR

    assert inspect.signature(train_qat).parameters["lr"].default == DEFAULT_QAT_LR <= 0.01
    assert isinstance(nn.Module(), nn.Module)
