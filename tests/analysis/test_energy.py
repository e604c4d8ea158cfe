import pytest

from nncompress.analysis import estimate_energy_pj
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
        estimate_energy_pj(1, mac_type="fp16")
    with pytest.raises(UserError):
        estimate_energy_pj(-1)
