"""Sparse execution: make pruned layers run faster, not just store smaller.

`sparsify(model, example_input)` swaps each pruned nn.Linear / nn.Conv2d for a sparse-executing module
(torch CSR/BSR, scipy CSR, or a small C kernel) only where it is measured faster than dense on this machine
at the example's batch size and thread count, and runs a whole MLP chain as one fused C call where that is faster
still (`sparse.mlp`); `load_nnc_sparse` reads a .nnc file straight into such
layers, and `sparse_from_shared` turns one stored SharedTensor into a CSR tensor without a dense copy.
"""
from nncompress.sparse.mlp import FusedSparseMLP, MLPChain, find_mlp_chain, fused_modules, unfuse
from nncompress.sparse.modules import BASE_FORMATS, SparseConv2d, SparseLinear
from nncompress.sparse.nnc import csr_from_shared, load_nnc_sparse, sparse_from_shared
from nncompress.sparse.sparsify import DEFAULT_FORMATS, FusedChoice, LayerChoice, SparsifyReport, sparse_module_for, sparsify

__all__ = [
    "BASE_FORMATS",
    "DEFAULT_FORMATS",
    "FusedChoice",
    "FusedSparseMLP",
    "MLPChain",
    "LayerChoice",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyReport",
    "csr_from_shared",
    "find_mlp_chain",
    "fused_modules",
    "load_nnc_sparse",
    "sparse_from_shared",
    "sparse_module_for",
    "sparsify",
    "unfuse",
]
