"""A rough energy ESTIMATE from MAC and memory-access counts (not a measurement).

Per-operation costs are Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V:
  32-bit float MAC = mult 3.7 pJ + add 0.9 pJ = 4.6 pJ;   8-bit int MAC = mult 0.2 pJ + add 0.03 pJ = 0.23 pJ;
  32-bit SRAM read (8 KB cache) = 5 pJ;                   32-bit DRAM read = 640 pJ.
  energy_pj = macs · (mult_pj + add_pj) + ceil(sram_read_bytes / 4) · sram_read_pj + ceil(dram_read_bytes / 4) · dram_read_pj
Memory is read in 32-bit words. It ignores control, writes, data movement inside the datapath and any
newer process node: use it to compare models (e.g. why Deep Compression wants weights to fit in SRAM,
a 128× cheaper read than DRAM), never as a number for a real chip. Every cost is an overridable parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nncompress.core.errors import UserError

# (multiply pJ, add pJ) per MAC, Horowitz ISSCC 2014, 45 nm
MAC_COSTS_PJ: dict[str, tuple[float, float]] = {"fp32": (3.7, 0.9), "int8": (0.2, 0.03)}
SRAM_READ_32BIT_PJ = 5.0
DRAM_READ_32BIT_PJ = 640.0


@dataclass(frozen=True)
class EnergyEstimate:
    compute_pj: float
    sram_pj: float
    dram_pj: float

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.sram_pj + self.dram_pj


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
    """Estimate (see module docstring) for `macs` MACs of `mac_type` ('fp32' or 'int8') and the bytes read.

    mult_pj / add_pj override the per-MAC costs of `mac_type`; sram_read_pj / dram_read_pj the cost of one 32-bit read.
    """
    if mac_type not in MAC_COSTS_PJ:
        raise UserError(f"unknown mac_type '{mac_type}': use one of {', '.join(MAC_COSTS_PJ)}")
    if min(macs, sram_read_bytes, dram_read_bytes) < 0:
        raise UserError("macs and byte counts must be >= 0")
    default_mult, default_add = MAC_COSTS_PJ[mac_type]
    mac_pj = (default_mult if mult_pj is None else mult_pj) + (default_add if add_pj is None else add_pj)
    return EnergyEstimate(
        compute_pj=macs * mac_pj,
        sram_pj=math.ceil(sram_read_bytes / 4) * sram_read_pj,
        dram_pj=math.ceil(dram_read_bytes / 4) * dram_read_pj,
    )
