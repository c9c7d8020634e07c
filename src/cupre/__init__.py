"""cupre: Cross-domain Unsupervised Pre-training for few-shot cell instance segmentation."""

__version__ = "0.1.0"
