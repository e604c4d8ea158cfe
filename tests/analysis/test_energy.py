import pytest

import torch
from torch import nn

from nncompress.analysis import analyze, estimate_energy_pj, layer_energy_pj
from nncompress.core.errors import UserError


def test_horowitz_45nm_figures():
    # 1,000 fp32 MACs · (3.7 + 0.9) pJ = 4,600 pJ
    assert estimate_energy_pj(1000).total_pj == pytest.approx(4600)
    # 1,000 int8 MACs · (0.2 + 0.03) pJ = 230 pJ
    assert estimate_energy_pj(1000, mac_type="int8").total_pj == pytest.approx(230)
    # 4,000 bytes = 1,000 32-bit reads: SRAM 5,000 pJ, DRAM 640,000 pJ (128× more)
    e = estimate_energy_pj(0, sram_read_bytes=4000, dram_read_bytes=4000)
    assert (e.sram_pj, e.dram_pj) == (5000, 640_000)
    # a partial word costs a whole read: 5 bytes = 2 reads
    assert estimate_energy_pj(0, dram_read_bytes=5).dram_pj == 1280


def test_lenet300_dense_weights_from_dram():
    # 266,200 MACs · 4.6 pJ + 266,610 weights · 640 pJ = 1,224,520 + 170,630,400 pJ
    e = estimate_energy_pj(266_200, dram_read_bytes=266_610 * 4)
    assert e.compute_pj == pytest.approx(1_224_520)
    assert e.total_pj == pytest.approx(171_854_920)


def test_costs_are_overridable():
    e = estimate_energy_pj(10, sram_read_bytes=8, mult_pj=1.0, add_pj=0.5, sram_read_pj=2.0)
    assert e.compute_pj == pytest.approx(15) and e.sram_pj == pytest.approx(4)


def test_bad_input():
    with pytest.raises(UserError):
        estimate_energy_pj(1, mac_type="fp8")
    with pytest.raises(UserError):
        estimate_energy_pj(-1)


def test_all_arithmetic_types():
    # Horowitz: fp16 1.1 + 0.4; int32 3.1 + 0.1; bf16 = fp16 (assumption); int4 0.2·¼ + 0.03·½ = 0.065 (derived)
    for t, per_mac in {"fp16": 1.5, "bf16": 1.5, "int32": 3.2, "int4": 0.065}.items():
        assert estimate_energy_pj(100, mac_type=t).total_pj == pytest.approx(100 * per_mac)


def _linear_10_5() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 5))


def test_analyze_linear_10_to_5_by_hand():
    # 50 MACs · (3.7 + 0.9) pJ = 230 pJ; weights 50 + bias 5 at 32 bits = 220 bytes = 55 DRAM words · 640 = 35,200 pJ
    a = analyze(_linear_10_5(), (10,))
    assert a.layers[0].energy_pj == pytest.approx(230 + 35_200)
    assert a.totals["energy_pj"] == pytest.approx(35_430)
    assert a.to_dict()["layers"][0]["energy_pj"] == pytest.approx(35_430)
    assert a.to_dict()["energy_model"]["mac_type"] == "fp32"


def test_analyze_int8_sram_and_sparse_storage():
    m = _linear_10_5()
    # int8 values: 50 weight bytes + 20 bias bytes = 70 bytes = 18 words; 50 · 0.23 = 11.5 pJ
    a = analyze(m, (10,), value_bits=8, mac_type="int8")
    assert a.totals["energy_pj"] == pytest.approx(11.5 + 18 * 640)
    # the same from an 8 KB SRAM (70 bytes fit): 18 · 5 pJ
    a = analyze(m, (10,), value_bits=8, mac_type="int8", weight_memory="sram")
    assert a.totals["energy_pj"] == pytest.approx(11.5 + 18 * 5)
    with torch.no_grad():
        m[0].weight[:, 5:] = 0.0  # 25 non-zeros left
    # CSR, 32-bit values, 8-bit indices: 25·4 + (25 + 5 + 1)·1 = 131 bytes + 20 bias = 151 → 38 words; 25 MACs
    a = analyze(m, (10,), weight_format="csr")
    assert a.layers[0].csr_bytes == 151
    assert a.totals["energy_pj"] == pytest.approx(25 * 4.6 + 38 * 640)
    dense = analyze(m, (10,))
    assert dense.totals["energy_pj"] == pytest.approx(50 * 4.6 + 55 * 640)


def test_layer_energy_sram_sizes_and_errors():
    # 8 KB → 5 pJ, 32 KB → 10 pJ, 1 MB → 100 pJ per 32-bit read
    assert layer_energy_pj(0, 0, 8192, 0, weight_memory="sram").sram_pj == 2048 * 5
    assert layer_energy_pj(0, 0, 8196, 0, weight_memory="sram").sram_pj == 2049 * 10
    assert layer_energy_pj(0, 0, 40_000, 0, weight_memory="sram").sram_pj == 10_000 * 100
    for kw in ({"weight_memory": "sram"}, {"weight_format": "coo"}, {"weight_memory": "hbm"}):
        with pytest.raises(UserError):
            layer_energy_pj(0, 0, 2_000_000, 0, **kw)
    with pytest.raises(UserError):
        analyze(_linear_10_5(), (10,), mac_type="fp8")
