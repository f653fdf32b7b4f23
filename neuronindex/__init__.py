"""neuronindex: index what every neuron of a trained CNN responds to, then query it.

Heavy dependencies (torch, faiss) are imported lazily by the modules that need them, so
importing this package and running queries start fast.
"""
from __future__ import annotations

from neuronindex.api import Index
from neuronindex.errors import NeuronIndexError
from neuronindex.version import __version__

__all__ = ["__version__", "NeuronIndexError", "open"]


def open(path, **kwargs):  # noqa: A001 - the natural name: neuronindex.open(DIR)
    """Open an index directory for querying; see :class:`neuronindex.api.Index`."""
    return Index(path, **kwargs)
