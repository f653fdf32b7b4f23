"""2-D layouts of embedding vectors for representation maps (Yu et al. 2014): t-SNE (scikit-learn,
Barnes-Hut, PCA initialisation) or UMAP (the `umap` extra) of L2-normalised vectors, scaled to [0, 1]
keeping the aspect."""
from __future__ import annotations

import warnings

import numpy as np

from neuronindex.errors import UsageError
from neuronindex.settings import default

METHODS = ("tsne", "umap")


def layout(vectors: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float | None = None,
           neighbors: int | None = None) -> tuple[np.ndarray, dict]:
    """((n, 2) coordinates in [0, 1], the parameters used) of a map of the rows of `vectors`."""
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}; use tsne or umap")
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 4:  # too few points for a neighbourhood: a line in the given order
        return _scaled(np.column_stack([np.arange(n, dtype=float), np.zeros(n)])), {"method": "line"}
    if method == "tsne":
        from sklearn.manifold import TSNE

        p = float(perplexity if perplexity is not None else default("map_perplexity"))
        if p <= 0:
            raise UsageError(f"--perplexity must be above 0, not {p:g}")
        asked, p = p, min(p, (n - 1) / 3)  # scikit-learn needs perplexity < n; a third keeps it local
        params = {"method": "tsne", "asked": asked, "perplexity": p, "init": "pca", "learning_rate": "auto",
                  "max_iter": 1000, "angle": 0.5}
        model = TSNE(n_components=2, perplexity=p, init="pca", learning_rate="auto", random_state=seed,
                     n_jobs=-1, max_iter=1000, angle=0.5)
        xy = model.fit_transform(x)
        params["kl_divergence"] = float(model.kl_divergence_)
    else:
        try:
            import umap
        except ImportError:
            raise UsageError("UMAP maps need the umap extra: pip install 'neuronindex[umap]' (or use --method tsne)") \
                from None
        k = int(neighbors if neighbors is not None else default("map_neighbors"))
        if k < 2:
            raise UsageError(f"--neighbors must be at least 2, not {k}")
        asked, k = k, min(k, n - 1)
        params = {"method": "umap", "asked": asked, "n_neighbors": k, "min_dist": 0.1, "init": "spectral"}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xy = umap.UMAP(n_neighbors=k, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(x)
        if any("Spectral initialisation failed" in str(w.message) for w in caught):
            # disconnected neighbourhoods (identical crops of one image under several neurons):
            # UMAP falls back to a random start, which the parameters record instead of a warning
            params["init"] = "random (the spectral start failed)"
    return _scaled(np.asarray(xy, dtype=float)), params


def _scaled(xy: np.ndarray) -> np.ndarray:
    """Into [0, 1] with one scale for both axes, centred on the shorter one."""
    lo, hi = xy.min(0), xy.max(0)
    span = float((hi - lo).max()) or 1.0
    out = (xy - lo) / span
    return out + (1 - (hi - lo) / span) / 2
