"""Image-caption sources. Every source yields a `PairDataset` (base); `sources.load_dataset` opens one by kind."""
