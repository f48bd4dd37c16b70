"""Image-caption sources. Every source yields a `PairDataset`."""

from clipmem.scoring.data.base import PairDataset, load_dataset

__all__ = ["PairDataset", "load_dataset"]
