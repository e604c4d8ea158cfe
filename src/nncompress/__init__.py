"""nncompress: make trained PyTorch models small and fast."""
__version__ = "0.1.0"
