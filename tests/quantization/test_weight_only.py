"""Weight-only RTN: hand-worked codes, exact packing and byte counts, the module, the int4 and ORT kernels."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.weight_only import (
    GroupQuantizedWeight,
    WeightOnlyLinear,
    matmul_nbits_model,
    mse_clip_ratios,
    ort_session,
    pack_codes,
    pack_int4,
    quantize_rtn,
    quantize_weight_only,
    unpack_codes,
    unpack_int4,
    weight_only_bytes,
)


def fp16(v: float) -> float:
    return float(torch.tensor(v).half().float())


def test_pack_int4_lower_nibble_first_and_odd_length():
    codes = torch.tensor([[1, 2, 15, 0, 7]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x0F, 0x07]]          # (2<<4)|1, (0<<4)|15, pad 0 above 7
    assert torch.equal(unpack_int4(packed, 5), codes)
    with pytest.raises(UserError):
        pack_int4(torch.tensor([16]))


def test_pack_3bit_little_endian_stream_by_hand():
    # 5 = 101, 3 = 011, 7 = 111 (LSB first): stream 1 0 1 | 1 1 0 | 1 1 1 → byte0 = 0b11011101, byte1 = 0b1
    packed = pack_codes(torch.tensor([5, 3, 7]), 3)
    assert packed.tolist() == [0b11011101, 0b00000001]
    assert unpack_codes(packed, 3, 3).tolist() == [5, 3, 7]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (7, 37), generator=g).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (7, -(-37 * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, 37), codes)


def test_rtn_asymmetric_groups_hand_worked():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.1, 0.2, 0.3, 1.5]])
    q = quantize_rtn(w, bits=4, group_size=4, symmetric=False)
    # group 1: lo=-1, hi=0.5, s=1.5/15=0.1 → fp16, z=round(1/s)=10 ; group 2: lo=0, hi=1.5, s=0.1, z=0
    s = fp16(0.1)
    assert q.scales.float().tolist() == [[s, s]]
    assert q.zeros.tolist() == [[10, 0]]
    assert q.codes.tolist() == [[0, 5, 10, 15, 1, 2, 3, 15]]
    expected = torch.tensor([[-10, -5, 0, 5, 1, 2, 3, 15]]) * s
    assert torch.allclose(q.dequantize(), expected)


def test_rtn_symmetric_groups_hand_worked():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.1, 0.2, 0.3, 1.5]])
    q = quantize_rtn(w, bits=4, group_size=4, symmetric=True)
    s1, s2 = fp16(1 / 7), fp16(1.5 / 7)                     # max|w| / (2^(b-1) - 1)
    assert q.zeros is None
    assert torch.allclose(q.scales.float(), torch.tensor([[s1, s2]]))
    # group 1: -7, -3.5→-4, 0, 3.5→4 (+8) ; group 2: 0.47→0, 0.93→1, 1.40→1, 7.0→7 (+8)
    assert q.codes.tolist() == [[1, 4, 8, 12, 8, 9, 9, 15]]


def test_per_channel_and_group_checks():
    w = torch.randn(3, 12)
    assert quantize_rtn(w, 8, None).scales.shape == (3, 1)
    with pytest.raises(UserError, match="does not divide"):
        quantize_rtn(w, 4, 8)
    with pytest.raises(UserError, match="bits"):
        quantize_rtn(w, 1, 4)
    with pytest.raises(UserError, match="NaN"):
        quantize_rtn(torch.full((2, 4), float("nan")), 4, 4)


def test_exact_bytes_by_hand():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    # 4-bit g32 asym: codes 64·64 = 4096, scales 64·4·2 = 512, zeros 64·⌈4·4/8⌉ = 128
    assert quantize_rtn(w, 4, 32).nbytes == 4096 + 512 + 128
    assert quantize_rtn(w, 4, 32, symmetric=True).nbytes == 4096 + 512
    # 3-bit g32: codes 64·⌈128·3/8⌉ = 3072, zeros 64·⌈4·3/8⌉ = 128
    assert quantize_rtn(w, 3, 32).nbytes == 3072 + 512 + 128
    assert quantize_rtn(w, 8, None, symmetric=True).nbytes == 64 * 128 + 64 * 2


def test_weight_only_bytes_of_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 8, bias=False))
    quantize_weight_only(model, bits=4, group_size=32, symmetric=True, layers=["0"])
    # layer 0: codes 32·32 + scales 32·2·2 + fp32 bias 32·4; LayerNorm 2·32·4; layer 3 fp32 8·32·4
    assert weight_only_bytes(model) == 32 * 32 + 32 * 2 * 2 + 32 * 4 + 2 * 32 * 4 + 8 * 32 * 4


def test_mse_clipping_never_worse_and_helps_heavy_tails():
    torch.manual_seed(1)
    w = torch.distributions.Laplace(0.0, 1.0).sample((64, 128))
    w[:, 0] = 12.0                                          # one outlier per row stretches the range
    r = mse_clip_ratios(w, bits=3, group_size=128)
    assert r.shape == (64, 1) and bool((r < 1).all())
    plain = (quantize_rtn(w, 3, 128).dequantize() - w).pow(2).sum()
    clipped = (quantize_rtn(w, 3, 128, clip_ratio="mse").dequantize() - w).pow(2).sum()
    assert clipped < 0.9 * plain


def test_module_forward_state_and_int4_kernel():
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    q = quantize_rtn(lin.weight, 4, 32)
    mod = WeightOnlyLinear(q, lin.bias)
    assert mod.packed.dtype == torch.uint8 and mod.packed.shape == (48, 64)
    assert mod.scales.dtype == torch.float16
    x = torch.randn(3, 5, 128)
    ref = x @ q.dequantize().t() + lin.bias
    assert torch.allclose(mod(x), ref, atol=1e-5)
    assert set(mod.state_dict()) == {"packed", "scales", "zeros", "bias"}
    fast = WeightOnlyLinear(q, lin.bias, kernel="int4")
    assert torch.allclose(fast(x), ref, atol=1e-4)
    with pytest.raises(UserError, match="int4"):
        WeightOnlyLinear(quantize_rtn(lin.weight, 8, 32), kernel="int4")
    cached = WeightOnlyLinear(q, lin.bias, kernel="cached")
    assert torch.allclose(cached(x), ref, atol=1e-5)
    other = WeightOnlyLinear(quantize_rtn(torch.randn(48, 128), 4, 32), lin.bias)
    cached.load_state_dict(other.state_dict())                   # new codes: the cached float weight is rebuilt
    assert torch.allclose(cached(x), other(x), atol=1e-5)


def test_onnxruntime_matmul_nbits_matches_dequantized_weights():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    lin = nn.Linear(128, 40)
    for sym in (False, True):
        mod = WeightOnlyLinear(quantize_rtn(lin.weight, 4, 32, symmetric=sym), lin.bias)
        x = torch.randn(6, 128)
        y = ort_session(matmul_nbits_model(mod)).run(None, {"X": x.numpy()})[0]
        assert torch.allclose(torch.from_numpy(y), mod(x), atol=1e-4)
        fast = WeightOnlyLinear(quantize_rtn(lin.weight, 4, 32, symmetric=sym), lin.bias, kernel="ort")
        x3 = torch.randn(2, 3, 128)
        assert torch.allclose(fast(x3), mod(x3), atol=1e-4)
    with pytest.raises(UserError, match="MatMulNBits"):
        WeightOnlyLinear(quantize_rtn(lin.weight, 3, 32), kernel="ort")


def test_quantized_weight_dequantize_with_group_index():
    codes = torch.tensor([[0, 15, 8, 8]], dtype=torch.uint8)
    qw = GroupQuantizedWeight(codes, torch.tensor([[1.0, 0.5]]).half(), None, 4, 2, torch.tensor([1, 0, 0, 1], dtype=torch.int32))
    # symmetric zero 8; column groups 1, 0, 0, 1 → scales 0.5, 1, 1, 0.5
    assert qw.dequantize().tolist() == [[-4.0, 7.0, 0.0, 0.0]]
    assert qw.nbytes == 2 + 2 * 2 + 4 * 4
