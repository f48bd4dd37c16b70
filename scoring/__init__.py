"""clipmem scoring: datasets, split plans, reference models f and g, CLIPMem scores, utility."""

__version__ = "0.1.0"
