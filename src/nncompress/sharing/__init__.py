"""k-means weight sharing with centroid fine-tuning (Han, Mao, Dally, Deep Compression, ICLR 2016)."""
from nncompress.sharing.kmeans import INITS, init_centroids, kmeans_1d
from nncompress.sharing.shared_weight import (
    DEFAULT_BITS,
    SharedWeight,
    SharingInfo,
    finalize_sharing,
    get_codebook,
    load_shared_state_dict,
    share_weights,
    shared_layers,
)

__all__ = [
    "DEFAULT_BITS",
    "INITS",
    "SharedWeight",
    "SharingInfo",
    "finalize_sharing",
    "get_codebook",
    "init_centroids",
    "kmeans_1d",
    "load_shared_state_dict",
    "share_weights",
    "shared_layers",
]

from nncompress.sharing.kmeans import kmeans_1d_weighted  # noqa: E402  k-means on distinct values (issue 16)
from nncompress.sharing.shared_weight import share_weights_inplace  # noqa: E402

__all__ += ["kmeans_1d_weighted", "share_weights_inplace"]
