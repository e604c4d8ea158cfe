"""A rough energy ESTIMATE from MAC and memory-access counts (not a measurement).

Per-operation costs are Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
Fig. 1.1.9 (45 nm, 0.9 V), the table Han et al. (EIE, ISCA 2016; Deep Compression, ICLR 2016) build on:
  multiply / add, pJ:  32-bit float 3.7 / 0.9;  16-bit float 1.1 / 0.4;  32-bit int 3.1 / 0.1;  8-bit int 0.2 / 0.03
  32-bit SRAM read:    8 KB 5 pJ,  32 KB 10 pJ,  1 MB 100 pJ
  DRAM:                1.3–2.6 nJ per 64-bit access; we use the commonly quoted 640 pJ per 32-bit word
                       (Han et al., "Learning both weights and connections", NIPS 2015, Fig. 1, after Horowitz).
The fp32/int32 and 8 KB SRAM figures were checked against a secondary reproduction of the table (Front. Neurol.
2022, PMC8934428, Table 3: float32 add 0.9 / mult 3.7, int32 add 0.1 / mult 3.1, 32-bit 8 KB cache read 5 pJ).
Two types are not in the table; stated assumptions:
  bf16: the fp16 costs (1.1 / 0.4 pJ). Same 16-bit width and data movement; its 8-bit significand multiplier
        is smaller than fp16's 11-bit one, so this is an upper bound.
  int4: derived from int8 by the usual scaling of integer arithmetic with width b: an array multiplier ∝ b²,
        a ripple adder ∝ b, so mult 0.2·(4/8)² = 0.05 pJ, add 0.03·(4/8) = 0.015 pJ.

  energy_pj = macs · (mult_pj + add_pj) + ceil(sram_read_bytes / 4) · sram_read_pj + ceil(dram_read_bytes / 4) · dram_read_pj

Memory is read in 32-bit words. It ignores control, writes, activations' traffic, data movement inside the
datapath and any newer process node: use it to compare models (e.g. why Deep Compression wants weights to fit
in SRAM, a 128× cheaper read than DRAM), never as a number for a real chip. Every cost is an overridable parameter.

`layer_energy_pj` applies it to one layer the way `analyze` does: its MACs (only the non-zero weights' MACs when
the weights are stored sparse, as EIE executes them) plus one read of the layer's stored weight bytes (dense at
`value_bits`, or CSR) from DRAM, or from the smallest SRAM of the table that holds them when `weight_memory`
is "sram" — the weights' storage format is what changes the bytes read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nncompress.core.errors import UserError

# (multiply pJ, add pJ) per MAC, Horowitz ISSCC 2014, 45 nm; bf16 and int4: assumptions above
MAC_COSTS_PJ: dict[str, tuple[float, float]] = {
    "fp32": (3.7, 0.9),
    "fp16": (1.1, 0.4),
    "bf16": (1.1, 0.4),
    "int32": (3.1, 0.1),
    "int8": (0.2, 0.03),
    "int4": (0.05, 0.015),
}
# 32-bit SRAM read cost by array size (bytes → pJ), Horowitz ISSCC 2014
SRAM_READ_32BIT_PJ_BY_SIZE: tuple[tuple[int, float], ...] = ((8 * 1024, 5.0), (32 * 1024, 10.0), (1024 * 1024, 100.0))
SRAM_READ_32BIT_PJ = 5.0
DRAM_READ_32BIT_PJ = 640.0
WEIGHT_FORMATS = ("dense", "csr")
WEIGHT_MEMORIES = ("dram", "sram")


@dataclass(frozen=True)
class EnergyEstimate:
    compute_pj: float
    sram_pj: float
    dram_pj: float

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.sram_pj + self.dram_pj


def check_mac_type(mac_type: str) -> str:
    if mac_type not in MAC_COSTS_PJ:
        raise UserError(f"unknown mac_type '{mac_type}': use one of {', '.join(MAC_COSTS_PJ)}")
    return mac_type


def sram_read_pj_for(nbytes: int) -> float:
    """Cost of one 32-bit read from the smallest SRAM of Horowitz's table (8 KB, 32 KB, 1 MB) holding `nbytes`."""
    for size, pj in SRAM_READ_32BIT_PJ_BY_SIZE:
        if nbytes <= size:
            return pj
    raise UserError(f"{nbytes:,} bytes do not fit the largest SRAM of the energy table (1 MB): use weight_memory='dram'")


def estimate_energy_pj(
    macs: int,
    sram_read_bytes: int = 0,
    dram_read_bytes: int = 0,
    mac_type: str = "fp32",
    mult_pj: float | None = None,
    add_pj: float | None = None,
    sram_read_pj: float = SRAM_READ_32BIT_PJ,
    dram_read_pj: float = DRAM_READ_32BIT_PJ,
) -> EnergyEstimate:
    """Estimate (see module docstring) for `macs` MACs of `mac_type` (fp32, fp16, bf16, int32, int8, int4) and the bytes read.

    mult_pj / add_pj override the per-MAC costs of `mac_type`; sram_read_pj / dram_read_pj the cost of one 32-bit read.
    """
    check_mac_type(mac_type)
    if min(macs, sram_read_bytes, dram_read_bytes) < 0:
        raise UserError("macs and byte counts must be >= 0")
    default_mult, default_add = MAC_COSTS_PJ[mac_type]
    mac_pj = (default_mult if mult_pj is None else mult_pj) + (default_add if add_pj is None else add_pj)
    return EnergyEstimate(
        compute_pj=macs * mac_pj,
        sram_pj=math.ceil(sram_read_bytes / 4) * sram_read_pj,
        dram_pj=math.ceil(dram_read_bytes / 4) * dram_read_pj,
    )


def layer_energy_pj(macs: int, sparse_macs: int, dense_bytes: int, csr_bytes: int, mac_type: str = "fp32",
                    weight_format: str = "dense", weight_memory: str = "dram") -> EnergyEstimate:
    """One layer: `macs` (dense) or `sparse_macs` (weight_format 'csr': zeros skipped) plus one read of the
    stored weight bytes (`dense_bytes` or `csr_bytes`) from DRAM or from the smallest SRAM holding them."""
    if weight_format not in WEIGHT_FORMATS:
        raise UserError(f"unknown weight format '{weight_format}': use one of {', '.join(WEIGHT_FORMATS)}")
    if weight_memory not in WEIGHT_MEMORIES:
        raise UserError(f"unknown weight memory '{weight_memory}': use one of {', '.join(WEIGHT_MEMORIES)}")
    sparse = weight_format == "csr"
    nbytes = csr_bytes if sparse else dense_bytes
    ops = sparse_macs if sparse else macs
    if weight_memory == "sram":
        return estimate_energy_pj(ops, sram_read_bytes=nbytes, mac_type=mac_type, sram_read_pj=sram_read_pj_for(nbytes))
    return estimate_energy_pj(ops, dram_read_bytes=nbytes, mac_type=mac_type)
