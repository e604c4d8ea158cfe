"""Calibration and PTQ on the model's device: observers keep their state where the module lives, calibration
batches follow the model, and a quantized graph can be moved like any module. The GPU tests run where CUDA is."""
import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.quantization import quantize_static
from nncompress.quantization.graph import quantizers
from nncompress.quantization.mixed_precision import layer_sensitivity
from nncompress.quantization.observers import (
    EntropyObserver,
    MSEObserver,
    PercentileObserver,
)
from nncompress.quantization.qat import prepare_qat
from nncompress.training import TrainConfig, train

NO_CUDA = not torch.cuda.is_available()
HISTOGRAM_OBSERVERS = [PercentileObserver, MSEObserver, EntropyObserver]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", (1, 28, 28), 10).eval()


@pytest.mark.parametrize("cls", HISTOGRAM_OBSERVERS)
def test_histogram_state_is_updated_in_place(cls):
    """hist/amax/zero_count stay the registered buffers (so they stay on the module's device), and widening the
    range re-bins without losing counts: 4 + 4 values seen, 8 counted."""
    obs = cls(bits=8, bins=64)
    ids = {k: v.data_ptr() for k, v in obs.named_buffers() if k in ("hist", "amax", "zero_count")}
    obs(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    obs(torch.tensor([-3.0, 0.0, 2.0, 3.0]))  # |x| grows 1 → 3: old counts re-binned into the wider range
    assert {k: v.data_ptr() for k, v in obs.named_buffers() if k in ids} == ids
    assert float(obs.amax) == 3.0 and float(obs.hist.sum()) == 8.0 and float(obs.zero_count) == 2.0
    lo, hi = obs.clip_range()
    assert lo.device == hi.device == obs.hist.device and -3.0 <= float(lo) < 0.0 < float(hi) <= 3.0


def test_quantized_graphs_move_like_modules():
    """.to() walks every submodule through nn.Module._apply; a QuantLayer method of that name used to break it."""
    model, x = _model(), torch.randn(16, 1, 28, 28)
    gm = quantize_static(model, x, calibration="mse", num_batches=1)
    before = gm(x)
    assert gm.to(torch.device("cpu")) is gm and torch.equal(gm(x), before)
    qat = prepare_qat(model, x)
    assert torch.equal(qat.to("cpu").eval()(x), qat(x))


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("calibration", ["minmax", "percentile", "mse", "entropy"])
def test_static_calibration_on_cuda_matches_cpu(calibration):
    model, x = _model(), torch.randn(64, 1, 28, 28)
    cpu = quantize_static(model, x, calibration=calibration, num_batches=2)
    gpu = quantize_static(_model().cuda(), x, calibration=calibration, num_batches=2)  # calibration data stays on the CPU
    assert all(t.device.type == "cuda" for t in [*gpu.parameters(), *gpu.buffers()])
    qa, qb = quantizers(cpu), quantizers(gpu)
    first = next(n for n in qa if n.endswith("act_quant"))  # sees the raw input: the same histogram on both devices
    assert torch.equal(qa[first].scale, qb[first].scale.cpu()) and torch.equal(qa[first].zero_point, qb[first].zero_point.cpu())
    agree = (cpu(x).argmax(1) == gpu(x.cuda()).argmax(1).cpu()).float().mean()
    assert float(agree) >= 0.9


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", HISTOGRAM_OBSERVERS)
def test_histogram_observer_on_cuda_keeps_buffers_there(cls):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    cpu, gpu = cls(bits=8), cls(bits=8).cuda()
    for scale in (1.0, 3.0):  # the second batch widens the range
        cpu(x * scale)
        gpu((x * scale).cuda())
    assert all(b.device.type == "cuda" for b in gpu.buffers())
    assert torch.equal(cpu.hist, gpu.hist.cpu())
    (sa, za), (sb, zb) = cpu.qparams(), gpu.qparams()
    assert sb.device.type == "cuda" and torch.allclose(sa, sb.cpu()) and torch.equal(za, zb.cpu())


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_qat_prepares_and_trains_on_cuda():
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    gm = prepare_qat(_model().cuda(), x, weight_bits=4)  # LSQ steps initialised on the GPU
    assert all(t.device.type == "cuda" for t in [*gm.parameters(), *gm.buffers()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    hist = train(gm, loader, TrainConfig(epochs=1, lr=0.01, device="cuda", progress=False))
    assert torch.isfinite(torch.tensor(hist[0]["loss"]))


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_mixed_precision_sensitivity_on_cuda_matches_cpu():
    x = torch.randn(16, 1, 28, 28)
    cpu = layer_sensitivity(_model(), x, bits_options=(2, 8), num_batches=1)
    gpu = layer_sensitivity(_model().cuda(), x, bits_options=(2, 8), num_batches=1)
    for layer, by_bits in cpu.items():
        for b, kl in by_bits.items():
            assert gpu[layer][b] == pytest.approx(kl, rel=1e-2, abs=1e-5), (layer, b)
