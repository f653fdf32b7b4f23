"""neuronindex: index what every neuron of a trained CNN responds to, then query it.

Heavy dependencies (torch, faiss) are imported lazily by the modules that need them, so
importing this package and running queries start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

from neuronindex.errors import NeuronIndexError  # noqa: E402

__all__ = ["__version__", "NeuronIndexError", "open"]


def open(path, **kwargs):  # noqa: A001 - the natural name: neuronindex.open(DIR)
    """Open an index directory for querying; see :class:`neuronindex.api.Index`."""
    from neuronindex.api import Index

    return Index(path, **kwargs)
