"""Empirical bias correction on module-swapped models (no graph): the hand-worked shift, convergence of the
sweeps on a conv net, the saved model, and the errors."""
import copy
import warnings

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.eager_bias_correction import correct_biases_
from nncompress.quantization.persist import load_quantized, save_quantized_model
from nncompress.quantization.swap import StaticInt8Config, quantize_


def _quiet_quantize(model, config, data, nb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_(model, config, calib_data=data, num_batches=nb)


def test_single_layer_shift_is_rounding_error_times_input_mean():
    """y = w·x with x on the activation grid (integers 0..255: min-max gives scale 1, exact), so the only error is
    the weights': 2-bit per-tensor codes turn (0.5, 0.26) into (0.5, 0.5), ε = (0, 0.24). Inputs x2 ≡ 10, so the
    output mean moves by 0.24 · 10 = 2.4 and the corrected bias is 0.1 − 2.4 = −2.3."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 0.26]]))
        layer.bias.fill_(0.1)
    x1 = torch.randint(0, 256, (64, 1)).float()
    x1[0], x1[1] = 0.0, 255.0
    x = torch.cat([x1, torch.full((64, 1), 10.0)], 1)
    ref = copy.deepcopy(layer)
    q = _quiet_quantize(layer, StaticInt8Config(weight_bits=2, granularity="tensor"), [x], 1)
    assert torch.allclose(q.weight_q.dequantize(), torch.tensor([[0.5, 0.5]]))  # the grid the hand value assumes
    report = correct_biases_(q, ref, [x], 1, sweeps=1)
    assert q.bias.item() == pytest.approx(0.1 - 2.4, abs=1e-5)
    assert report["corrected"] == [""] and len(report["largest_correction_over_output_std_per_sweep"]) == 1
    with torch.no_grad():
        assert q(x).mean().item() == pytest.approx(ref(x).mean().item(), abs=1e-4)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.clamp(self.b1(self.c1(x)), 0, 6)
        x = torch.clamp(self.b2(self.c2(x)), 0, 6)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    net = _ConvNet()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(0.0, 1.0)
    return net.eval()


def test_sweeps_converge_and_remove_the_output_mean_shift(convnet):
    torch.manual_seed(1)
    calib = [torch.randn(16, 3, 12, 12) + 0.5 for _ in range(4)]
    held = torch.randn(64, 3, 12, 12) + 0.5
    cfg = dict(weight_bits=4, granularity="tensor")
    plain = _quiet_quantize(copy.deepcopy(convnet), StaticInt8Config(**cfg), calib, 4)
    corrected = _quiet_quantize(copy.deepcopy(convnet), StaticInt8Config(**cfg, bias_correction=True), calib, 4)
    residuals = corrected.bias_correction_report["largest_correction_over_output_std_per_sweep"]
    assert len(residuals) == 3 and residuals[-1] < residuals[0] / 3
    assert set(corrected.bias_correction_report["corrected"]) == {"c1", "c2", "fc"}
    with torch.no_grad():
        ref, p, c = convnet(held), plain(held), corrected(held)
    shift_plain = (p - ref).mean(0).abs().mean()
    shift_corrected = (c - ref).mean(0).abs().mean()
    assert shift_corrected < shift_plain / 3  # on held-out inputs, not only the calibration batches
    assert ((c - ref) ** 2).mean() < ((p - ref) ** 2).mean()


def test_corrected_model_saves_and_reloads_bit_identical(convnet, tmp_path):
    torch.manual_seed(2)
    calib = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    q = _quiet_quantize(copy.deepcopy(convnet), StaticInt8Config(bias_correction=True, bias_correction_sweeps=1), calib, 2)
    assert q.c1.bias is not None  # created: the float conv had none
    save_quantized_model(q, tmp_path / "q.safetensors")
    back = load_quantized(copy.deepcopy(convnet), tmp_path / "q.safetensors")
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


def test_bad_reference_and_options_are_one_line_errors(convnet):
    calib = [torch.randn(8, 3, 12, 12)]
    q = _quiet_quantize(copy.deepcopy(convnet), StaticInt8Config(), calib, 1)
    with pytest.raises(UserError, match="no float layer 'c1'"):
        correct_biases_(q, nn.Sequential(nn.Linear(2, 2)), calib, 1)
    with pytest.raises(UserError, match="sweeps"):
        correct_biases_(q, convnet, calib, 1, sweeps=0)
    with pytest.raises(UserError, match="bias_correction_sweeps"):
        StaticInt8Config(bias_correction=True, bias_correction_sweeps=0).validate()
    with pytest.raises(UserError, match="no quantized Linear/Conv"):
        correct_biases_(copy.deepcopy(convnet), convnet, calib, 1)


class _DeepChain(nn.Module):
    """Ten depthwise-separable conv + BN + ReLU6 blocks with BatchNorm gains up to 20×: where all-at-once (Jacobi)
    updates over-correct more with every block."""

    def __init__(self):
        super().__init__()
        blocks = []
        for _ in range(10):
            blocks += [nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                       nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def _exact_sequential(quantized, reference, batch):
    """The textbook procedure, one full pass per layer: measure layer l's output-mean shift with layers < l already
    corrected, correct it, go on."""
    from nncompress.quantization.modules import QuantizedConv, QuantizedLinear

    ref_mods = dict(reference.named_modules())
    for name, m in quantized.named_modules():
        if not isinstance(m, (QuantizedConv, QuantizedLinear)):
            continue
        dim = 1 if isinstance(m, QuantizedConv) else -1
        got = {}
        h1 = m.register_forward_hook(lambda _m, _a, out: got.__setitem__("q", out))
        h2 = ref_mods[name].register_forward_hook(lambda _m, _a, out: got.__setitem__("f", out))
        with torch.no_grad():
            quantized(batch), reference(batch)
        h1.remove(), h2.remove()
        mean = lambda t: t.double().movedim(dim, -1).reshape(-1, t.shape[dim]).mean(0)  # noqa: E731
        if m.bias is None:
            m.bias = torch.zeros(m.weight_q.codes.shape[0])
        m.bias -= (mean(got["q"]) - mean(got["f"])).float()


def test_one_sweep_over_one_batch_equals_the_exact_sequential_correction():
    torch.manual_seed(3)
    net = _DeepChain().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(1.0, 20.0)
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(32, 8, 10, 10)
    cfg = StaticInt8Config(weight_bits=4, granularity="tensor")
    ours = _quiet_quantize(copy.deepcopy(net), cfg, [x], 1)
    report = correct_biases_(ours, net, [x], 1, sweeps=2)
    exact = _quiet_quantize(copy.deepcopy(net), cfg, [x], 1)
    _exact_sequential(exact, net, x)
    for (name, a), (_, b) in zip(ours.named_buffers(), exact.named_buffers()):
        if name.endswith("bias"):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())), name
    first, second = report["largest_correction_over_output_std_per_sweep"]
    assert second < 1e-4 * first  # one batch: the first sweep is already exact
