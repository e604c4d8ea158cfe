"""Storage side of Deep Compression: Huffman coding, relative indices, sparse formats, the .nnc container."""
from nncompress.encoding.container import (
    FORMAT_VERSION,
    MAGIC,
    READ_VERSIONS,
    CompressedModel,
    NNCReader,
    NNCWriter,
    SharedTensor,
    StreamInfo,
    TensorInfo,
    load_nnc,
    open_nnc,
    open_nnc_writer,
    read_nnc,
    save_nnc,
    size_breakdown,
    stream_stats,
    write_nnc,
)
from nncompress.encoding.errors import CorruptFileError
from nncompress.encoding.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    entropy_bits,
    expected_bits,
    validate_lengths,
)
from nncompress.encoding.relative_index import (
    DEFAULT_GAP_BITS_CONV,
    DEFAULT_GAP_BITS_FC,
    count_entries,
    from_relative,
    to_relative,
)
from nncompress.encoding.sparse import COO, CSC, CSR, as_matrix, to_coo, to_csc, to_csr, to_dense

__all__ = [
    "COO",
    "CSC",
    "CSR",
    "DEFAULT_GAP_BITS_CONV",
    "DEFAULT_GAP_BITS_FC",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CODE_LENGTH",
    "READ_VERSIONS",
    "CompressedModel",
    "NNCReader",
    "NNCWriter",
    "StreamInfo",
    "TensorInfo",
    "open_nnc",
    "open_nnc_writer",
    "stream_stats",
    "CorruptFileError",
    "SharedTensor",
    "as_matrix",
    "canonical_codes",
    "code_lengths",
    "count_entries",
    "decode",
    "encode",
    "entropy_bits",
    "expected_bits",
    "from_relative",
    "load_nnc",
    "read_nnc",
    "save_nnc",
    "size_breakdown",
    "to_coo",
    "to_csc",
    "to_csr",
    "to_dense",
    "to_relative",
    "validate_lengths",
    "write_nnc",
]

# rANS coder and entropy report (issue 16): modules exported, names kept namespaced to avoid clashing
# with huffman's encode/decode above.
from nncompress.encoding import entropy, rans, streams  # noqa: E402

__all__ += ["entropy", "rans", "streams"]
