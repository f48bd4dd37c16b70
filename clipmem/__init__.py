"""clipmem: measure which image-caption pairs a CLIP model memorized (CLIPMem) and explore them in a browser.

Layers, top to bottom (import-linter checks them in CI; docs/architecture.md):

    clipmem.cli        the composition root: the `clipmem` command
    clipmem.frontend   the Streamlit dashboard (talks to the backend over HTTP only)
    clipmem.backend    database, ingest and the FastAPI service (no torch)
    clipmem.scoring    datasets, split plans, models f and g, scores: everything that touches tensors
"""

__version__ = "0.1.0"
