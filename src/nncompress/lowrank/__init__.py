"""Low-rank factorization: truncated SVD for Linear, Tucker-2, CP (TensorLy) and spatially separable for Conv2d, ranks by energy,
cost ratio or EVBMF, modules replaced in place with per-layer reconstruction error."""
from nncompress.lowrank.decompose import (
    LowRank,
    cp_conv,
    reconstruct_weight,
    relative_error,
    separable_conv,
    separable_matrix,
    svd_linear,
    tucker2_conv,
)
from nncompress.lowrank.factorize import (
    METHODS,
    FactorizationReport,
    LayerFactorization,
    factorize,
    load_factorized,
    lowrank_spec,
    restructure,
    save_factorized,
)
from nncompress.lowrank.rank import budget_rank, energy_rank, evbmf_rank, unfold

__all__ = [
    "METHODS",
    "FactorizationReport",
    "LayerFactorization",
    "LowRank",
    "budget_rank",
    "cp_conv",
    "energy_rank",
    "evbmf_rank",
    "factorize",
    "load_factorized",
    "lowrank_spec",
    "reconstruct_weight",
    "relative_error",
    "restructure",
    "separable_conv",
    "separable_matrix",
    "save_factorized",
    "svd_linear",
    "tucker2_conv",
    "unfold",
]
