"""2-D maps of a run's embeddings, computed once at ingest.

Each model's image and text embeddings are projected into one plane (fit on both
modalities together), so a pair's image and caption can be compared on the same map.
"""

from __future__ import annotations

import numpy as np

from clipmem.scoring.errors import ClipmemError

PCA_FIT_ROWS = 50_000   # the projection is fit on a seeded sample this large; every point is projected
UMAP_FIT_ROWS = 20_000   # UMAP is fit on a smaller sample and the rest is placed with its transform


def check_map_method(method: str) -> None:
    """Fail before any work when the method cannot run here."""
    if method not in ("pca", "umap"):
        raise ClipmemError(f"map method '{method}' is not known (use pca or umap)")
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise ClipmemError("map method umap needs the umap-learn package (pip install umap-learn); "
                               "or use pca") from None


def project(image: np.ndarray, text: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) map coordinates of the image and the text embeddings of one model."""
    both = np.concatenate([image, text]).astype(np.float32, copy=False)
    rng = np.random.default_rng(seed)
    if method == "pca":
        coords = _pca(both, rng)
    else:
        check_map_method(method)
        coords = _umap(both, rng, seed)
    return coords[: len(image)], coords[len(image):]


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size, replace=False)) if n > size else np.arange(n)


def _pca(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fit = x[_sample(len(x), PCA_FIT_ROWS, rng)]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[:2]
    # SVD's signs are arbitrary: make each axis's largest component positive so a run always looks the same
    axes = axes * np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])[:, None]
    out = np.empty((len(x), 2), dtype=np.float64)
    for start in range(0, len(x), 262_144):
        out[start:start + 262_144] = (x[start:start + 262_144] - mean) @ axes.T
    return out


def _umap(x: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
    import umap

    fit_rows = _sample(len(x), UMAP_FIT_ROWS, rng)
    reducer = umap.UMAP(n_components=2, random_state=seed, metric="cosine")
    out = np.empty((len(x), 2), dtype=np.float64)
    out[fit_rows] = reducer.fit_transform(x[fit_rows])
    rest = np.setdiff1d(np.arange(len(x)), fit_rows)
    if len(rest):
        out[rest] = reducer.transform(x[rest])
    return out
