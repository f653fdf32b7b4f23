"""Colour names: the 11 basic terms of Berlin & Kay with a probability per colour.

In:  RGB colours in [0, 1] (any leading shape). Out: P(term | colour) for the terms of `TERMS`.

The model is fitted to real named colour samples: the XKCD colour survey's names that matplotlib
ships (`matplotlib._color_data.XKCD_COLORS`, 949 names, each the colour that survey takers most
often gave that name). A name counts when its head word (the last word: `sky blue`, `dark grey`,
`greenish blue`) is a basic term; that gives 569 samples over the 11 terms (`gray` = grey). The
model is a multinomial logistic regression (scikit-learn) on the degree-2 polynomial features of
the sample's CIELAB coordinates (D65), so P varies smoothly across term boundaries as human
naming does, rather than jumping at the midpoint between two keyword colours. Held-out agreement
(5-fold, `validate()`) is 90.5%. Black and white have only two survey samples each, so they
are weighted up (CLASS_WEIGHT); they remain the least certain terms.

For speed the fitted model is tabulated once on a 32 x 32 x 32 RGB grid; a colour takes the
probabilities of its grid cell (cells are 8 levels wide, far below naming boundaries).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

TERMS = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
ACHROMATIC = ("black", "white", "grey")
CHROMATIC = tuple(t for t in TERMS if t not in ACHROMATIC)
GRID = 32
REGULARISATION = 1.0  # LogisticRegression's C
# black and white have two survey samples each (few compound names end in them); weighted 20x,
# about what balanced class weights give them, so the model does not fold them into grey
CLASS_WEIGHT = {0: 20.0, 1: 20.0}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> CIELAB (D65)."""
    rgb = np.asarray(rgb, dtype=float)
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def survey_samples() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(RGB in [0, 1] (n, 3), term index (n,), survey name) for XKCD names headed by a basic term."""
    from matplotlib._color_data import XKCD_COLORS
    from matplotlib.colors import to_rgb

    rgb, term, names = [], [], []
    for key, value in sorted(XKCD_COLORS.items()):
        name = key.split(":", 1)[1]
        head = re.split(r"[\s/-]+", name.strip())[-1]
        head = "grey" if head == "gray" else head
        if head in TERMS:
            rgb.append(to_rgb(value))
            term.append(TERMS.index(head))
            names.append(name)
    return np.array(rgb), np.array(term), names


def _model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    return make_pipeline(StandardScaler(), PolynomialFeatures(2), LogisticRegression(C=REGULARISATION, max_iter=10_000,
                                                                                       class_weight=CLASS_WEIGHT))


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """(GRID, GRID, GRID, 11) float32: P(term | RGB cell centre)."""
    rgb, term, _ = survey_samples()
    model = _model().fit(srgb_to_lab(rgb), term)
    centres = (np.arange(GRID) + 0.5) / GRID
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    proba = np.zeros((len(grid), len(TERMS)), dtype=np.float32)
    proba[:, model.classes_] = model.predict_proba(srgb_to_lab(grid))
    return proba.reshape(GRID, GRID, GRID, len(TERMS))


def probabilities(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 11) P(term), rows summing to 1."""
    cell = np.clip((np.asarray(rgb, dtype=float) * GRID).astype(np.int64), 0, GRID - 1)
    return _table()[cell[..., 0], cell[..., 1], cell[..., 2]]


def name(rgb) -> str:
    """The most probable term for one RGB colour in [0, 1]."""
    return TERMS[int(probabilities(np.asarray(rgb, dtype=float)).argmax())]


def chromatic_name(rgb) -> str:
    """The most probable chromatic term (used for hues, which are chromatic by definition)."""
    p = probabilities(np.asarray(rgb, dtype=float))
    return CHROMATIC[int(p[[TERMS.index(t) for t in CHROMATIC]].argmax())]


def validate(folds: int = 5, seed: int = 0) -> float:
    """Share of survey samples whose name the model predicts when fitted on the other folds."""
    from sklearn.model_selection import KFold

    rgb, term, _ = survey_samples()
    lab = srgb_to_lab(rgb)
    right = 0
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(lab):
        right += int((_model().fit(lab[train], term[train]).predict(lab[test]) == term[test]).sum())
    return right / len(term)
