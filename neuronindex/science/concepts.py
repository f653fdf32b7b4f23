"""Concept masks computed from pixels, for Network Dissection (Bau et al., CVPR 2017).

Colour concepts on any image set: every pixel is named by the project's colour-naming model
(`colornames`, the 11 basic terms of Berlin & Kay), as Broden's colour category was made by
naming pixels, so any ingest can be dissected for colour without annotations. Concept ids are
1..11 in `COLOUR_CONCEPTS` order (0: no concept), all in one category, `colour`.
"""
from __future__ import annotations

import numpy as np

from neuronindex.science import colornames

COLOUR_CATEGORY = "colour"
COLOUR_CONCEPTS = colornames.TERMS  # concept id i + 1 is TERMS[i]


def colour_labels(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 colour-concept ids (1..11): each pixel's most probable
    basic colour term."""
    rgb = np.asarray(pixels, dtype=np.float64) / 255.0
    return colornames.probabilities(rgb).argmax(-1).astype(np.int64) + 1
