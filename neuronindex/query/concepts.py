"""Concept images as a model sees them, with their masks at the dissection's resolution: the
colour concepts of the model's own images, or a concept folder (`conceptsets`). Shared by
`neuronindex dissect` and the pictures that show a unit's map over a concept's mask."""
from __future__ import annotations

from functools import cached_property

import numpy as np
from PIL import Image

from neuronindex.conceptsets import ConceptSet, open_concepts
from neuronindex.errors import NotFoundError
from neuronindex.nets.models import Preprocessing
from neuronindex.query.reader import Reader
from neuronindex.science.concepts import COLOUR_CATEGORY, COLOUR_CONCEPTS, colour_labels


def mask_size(input_size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The masks' resolution: the input's, scaled down so its longer side is at most `longest`."""
    h, w = input_size
    s = min(1.0, longest / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def concept_source(idx: Reader, model_id: int, pre: str, spec: str, limit: int | None = None):
    """`colour`, or a folder with a concept set."""
    return ColourConcepts(idx, model_id, pre, limit) if spec == "colour" else FolderConcepts(
        idx.cached(("concept set", spec), lambda: open_concepts(spec)), pre, limit)


class ColourConcepts:
    """Colour concepts on the model's own images (no files)."""

    def __init__(self, idx: Reader, model_id: int, pre: str, limit: int | None):
        self.model_id, self.limit = model_id, limit
        self.source, self.names, self.categories = "colour", list(COLOUR_CONCEPTS), [COLOUR_CATEGORY]
        self.concept_categories = [COLOUR_CATEGORY] * len(COLOUR_CONCEPTS)
        self.category_of = np.zeros(len(COLOUR_CONCEPTS) + 1, dtype=np.int64)
        self.idx, self.pre = idx, pre

    @cached_property
    def items(self) -> list[tuple[str, str]]:
        rows = self.idx.rows("SELECT i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id JOIN ingests g "
                             "ON g.dataset_id = d.id WHERE g.model_id = ? AND i.problem IS NULL ORDER BY i.id",
                             [self.model_id])
        return [(r["path"], r["source"]) for r in rows][:self.limit or None]

    @staticmethod
    def key(item) -> tuple[str, str]:
        """(path, dataset source) as `dissection_images` stores it."""
        return item

    @staticmethod
    def find(path: str, source: str):
        return path, source

    def load(self, item, size):
        seen = self.idx.seen(item[0], item[1], self.pre)
        small = seen if seen.shape[:2] == size else np.asarray(Image.fromarray(seen).resize((size[1], size[0]), Image.BOX))
        return seen, {0: [colour_labels(small)]}


class FolderConcepts:
    """A concept set on disk, seen through the model's preprocessing."""

    def __init__(self, concepts: ConceptSet, pre: str, limit: int | None):
        self.set, self.items = concepts, concepts.images[:limit or None]
        self.source, self.names, self.categories = concepts.source, concepts.names, concepts.categories
        self.concept_categories, self.category_of = concepts.concept_categories, concepts.category_of()
        self.pre = Preprocessing.from_json(pre)

    @staticmethod
    def key(item) -> tuple[str, str]:
        return item.path, ""

    @cached_property
    def _by_path(self) -> dict:
        return {i.path: i for i in self.set.images}

    def find(self, path: str, source: str):
        if path not in self._by_path:
            raise NotFoundError(f"{path} is no longer in the concept set {self.source}")
        return self._by_path[path]

    def load(self, item, size):
        image = self.set.image(item)
        seen = np.asarray(self.pre.geometric(image))
        return seen, self.set.labels(item, image.size, self.pre.geometric, size)


