"""`Reader`: one index directory opened for reading, below the facade.

It holds the DuckDB connection and what every thread's view of the index shares (loaded models
with their extractors, datasets, decoded images, FAISS indexes, the search vocabulary), and
answers the lookups the jobs, the on-demand pictures and the facade all need: models and layers,
a layer by any of its names, a network tapped at some layers, an image as the model saw it.
Rows come back as plain dicts; the facade (`neuronindex.api.Index`, a Reader) wraps them.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from neuronindex import store
from neuronindex.cache import LRU
from neuronindex.data import load_image, open_source
from neuronindex.errors import LayerError, NotFoundError, UsageError, did_you_mean
from neuronindex.nets.extract import Extractor
from neuronindex.nets.layers import stored_names
from neuronindex.nets.models import Preprocessing, load_model
from neuronindex.settings import Settings
from neuronindex.store.directory import IndexDirectory
from neuronindex.store.vectors import VectorStore

MODEL_SQL = ("SELECT m.id, m.name, m.spec, m.weights, m.num_parameters, d.source AS images, d.n_images, i.finished_at "
             "FROM models m LEFT JOIN ingests i ON i.model_id = m.id LEFT JOIN datasets d ON d.id = i.dataset_id "
             "ORDER BY m.id")
# a neuron's row: every column of neuron_view (statistics and every selectivity index) and its field
NEURON_COLUMNS = "v.*, n.rf_h, n.rf_w, n.rf_y0, n.rf_x0"
SUMMARY_COLUMNS = ["model", "layer", "alias", "neurons", "dead", "weak", "mean_alpha", "colour_selective", "mean_gamma",
                   "class_selective", "mean_m", "mean_csi", "sparsity", "mean_auc", "directions"]
LAYER_SQL = ("SELECT l.id, m.name AS model, l.name, l.node, l.alias, l.aliases, l.kind, l.channels, l.map_h, l.map_w, "
             "l.rf_size, l.rf_stride, l.rf_offset, l.sparsity FROM layers l JOIN models m ON m.id = l.model_id")


@dataclass(frozen=True)
class Network:
    """A stored model loaded and tapped at some of its layers: `extractor` returns their maps;
    `lock` serialises forwards through it (an extractor keeps the maps it returns)."""
    loaded: object
    extractor: Extractor
    layers: list[dict]
    lock: threading.Lock


class Shared:
    """What every thread's view of one opened index shares. The index is read-only, so nothing
    here goes stale while it is open."""

    def __init__(self, directory: IndexDirectory, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()  # loading a model takes seconds: not under `lock`
        self.networks: dict = {}
        self.datasets: dict = {}
        self.vocab = None
        self.vectors = VectorStore(directory)  # reads nothing until a space is searched
        self.images = LRU(settings.image_cache * 1024 * 1024)


class Reader:
    """An opened index directory (read-only). One Reader holds one DuckDB connection; a thread
    that is not the opener's takes its own with `view()`, sharing models, vectors and caches."""

    def __init__(self, path: str | os.PathLike, memory_limit: str | None = None, temp_limit: str | None = None,
                 threads: int | None = None, settings: Settings | None = None):
        """memory_limit / temp_limit: DuckDB's memory and spill limits for this reader (sizes like
        '2GB'; defaults: the reader_memory_limit and reader_temp_limit settings); threads: DuckDB
        threads per query (default: every core); settings: the limits and defaults this reader
        uses (default: the settings table's defaults)."""
        self.directory = IndexDirectory(path)
        self.path = self.directory.path
        self.settings = settings or Settings()
        self.con = store.connect(self.directory, memory_limit, temp_limit, threads)
        self._shared = Shared(self.directory, self.settings)

    def view(self):
        """This index on a new DuckDB cursor, for another thread; close it when done (the
        opener's connection stays open)."""
        other = object.__new__(type(self))
        other.directory, other.path, other.settings, other._shared = (self.directory, self.path, self.settings,
                                                                      self._shared)
        other.con = store.cursor(self.con)
        return other

    def close(self):
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- rows
    def fetch(self, sql: str, params=None) -> tuple[list[str], list[dict]]:
        """The library's own queries (no guard, no row cap, no time limit): (columns, rows as dicts)."""
        cur = self.con.execute(sql, params or [])
        columns = [d[0] for d in cur.description]
        return columns, [dict(zip(columns, r)) for r in cur.fetchall()]

    def rows(self, sql: str, params=None) -> list[dict]:
        return self.fetch(sql, params)[1]

    def model_list(self) -> list[dict]:
        return self.rows(MODEL_SQL)

    def layer_list(self, model: str | None = None) -> list[dict]:
        if model:
            return self.rows(LAYER_SQL + " WHERE m.name = ? ORDER BY l.model_id, l.position", [model])
        return self.rows(LAYER_SQL + " ORDER BY l.model_id, l.position")

    def model_row(self, name: str) -> dict:
        """The `models` row of a model of this index (an unknown name: NotFoundError with suggestions)."""
        models = self.model_list()
        found = [m for m in models if m["name"] == name]
        if not found:
            raise NotFoundError(f"no model {name!r} in this index{did_you_mean(name, [m['name'] for m in models])}")
        return found[0]

    def only_model(self) -> str:
        """The name of the index's one model (several: UsageError naming them)."""
        names = list(dict.fromkeys(m["name"] for m in self.model_list()))
        if len(names) != 1:
            raise UsageError(f"this index holds {len(names)} models; name one ({', '.join(names)})")
        return names[0]

    def layer_rows(self, model: str, layer: str) -> list[dict]:
        """The stored layers of `model` that answer to `layer` (name, node or alias: layers.stored_names);
        none: LayerError with suggestions."""
        rows = self.layer_list(model)
        chosen = [r for r in rows if layer in stored_names(r)]
        if not chosen:
            raise LayerError(f"unknown layer {layer!r} of {model}{did_you_mean(layer, [r['name'] for r in rows])}")
        return chosen

    def neuron_row(self, key: str) -> dict:
        """A unit's row (neuron_view's columns and its field); an unknown key: NotFoundError with
        the nearest keys."""
        rows = self.rows(f"SELECT {NEURON_COLUMNS} FROM neuron_search v JOIN neurons n ON n.id = v.id WHERE v.key = ?",
                         [key])
        if not rows:
            raise NotFoundError(f"no neuron {key!r} in this index{self._suggest_key(key)}; keys are model/layer/channel")
        return rows[0]

    def _suggest_key(self, key: str) -> str:
        prefix = key.rsplit("/", 1)[0]
        keys = [r[0] for r in self.con.execute("SELECT key FROM neurons WHERE starts_with(key, ?) LIMIT 5000",
                                               [prefix]).fetchall()]
        if not keys:
            keys = [r[0] for r in self.con.execute("SELECT DISTINCT m.name || '/' || l.name || '/0' FROM layers l "
                                                   "JOIN models m ON m.id = l.model_id").fetchall()]
        return did_you_mean(key, keys)

    def direction_row(self, neuron_id: int) -> dict | None:
        """A direction's stored vector, weights and spectrum figures (None for a channel)."""
        rows = self.rows("SELECT kind, name, ordinal, filter, pooling, variance, explained, singular_value, n_images, "
                         "pooled_var, vector, weights, \"offset\" FROM directions WHERE neuron_id = ?", [neuron_id])
        return rows[0] if rows else None

    def summary_rows(self, model: str | None = None) -> list[dict]:
        """Per model and layer (channels only): neurons, dead, weak, mean alpha, share colour selective,
        mean gamma, share class selective, mean M, mean CSI, sparsity, mean AUC, directions."""
        where = "AND v.model = ?" if model else ""
        return self.rows(
            "SELECT v.model, v.layer, any_value(l.alias) AS alias, count(*) AS neurons, sum(v.dead::INT) AS dead, "
            "sum(v.weak::INT) AS weak, avg(v.color_index) AS mean_alpha, "
            "avg((v.color_index >= ?)::INT) AS colour_selective, avg(v.class_index) AS mean_gamma, "
            "avg((v.class_index >= ?)::INT) AS class_selective, avg(v.class_m) AS mean_m, avg(v.csi) AS mean_csi, "
            "any_value(l.sparsity) AS sparsity, avg(v.auc) AS mean_auc, "
            "any_value((SELECT count(*) FROM directions d WHERE d.layer_id = l.id)) AS directions "
            "FROM neuron_search v JOIN models m ON m.name = v.model JOIN layers l ON l.name = v.layer AND l.model_id = m.id "
            f"WHERE v.kind = 'channel' {where} GROUP BY v.model, v.layer, m.id, l.position ORDER BY m.id, l.position",
            [self.settings.color_threshold, self.settings.class_selective, *([model] if model else [])])

    # ---------------------------------------------------------------- networks and images
    def network(self, model: str | None, layer: str | None) -> Network:
        """The model loaded once per opened index and tapped at one layer (`all` or None: every
        stored layer), whichever thread asks first."""
        if model is None:
            models = self.model_list()
            if len({m["name"] for m in models}) != 1:
                raise UsageError("this index has several models; choose one with --model "
                                 f"({', '.join(m['name'] for m in models)})")
            model = models[0]["name"]
        self.model_row(model)
        rows = self.layer_list(model) if layer in (None, "all") else self.layer_rows(model, layer)
        shared = self._shared
        key = (model, tuple(r["node"] for r in rows))
        with shared.model_lock:
            if key not in shared.networks:
                spec, weights, pre = self.con.execute("SELECT spec, weights, preprocessing FROM models WHERE name = ?",
                                                      [model]).fetchone()
                loaded = load_model(spec, weights, Preprocessing.from_json(pre), model)
                shared.networks[key] = Network(loaded, Extractor(loaded, [r["node"] for r in rows]), rows,
                                               threading.Lock())
        return shared.networks[key]

    def derived_network(self, key: tuple, make):
        """A variant of a loaded network (for example one whose ReLUs follow a backward rule),
        made once per opened index by `make()`."""
        shared = self._shared
        with shared.model_lock:
            if key not in shared.networks:
                shared.networks[key] = make()
        return shared.networks[key]

    def load_image(self, path: str, source: str):
        """An image of the index as a PIL RGB image: files directly by their stored path; torchvision
        datasets through the dataset object, opened once per index."""
        if not path.startswith("torchvision:"):
            return load_image(path)
        with self._shared.lock:
            if source not in self._shared.datasets:
                self._shared.datasets[source] = open_source(source)
            images = self._shared.datasets[source]
        return images.load(images.images[int(path.rsplit("/", 1)[1])])

    def seen(self, path: str, source: str, preprocessing: str) -> np.ndarray:
        """The image as the model saw it, (H, W, 3) uint8, decoded once per opened index."""
        return self._shared.images.get_or_make(
            (path, source, preprocessing),
            lambda: np.asarray(Preprocessing.from_json(preprocessing).geometric(self.load_image(path, source))))

    def cached(self, key: tuple, make):
        """A value made once per opened index and kept in its byte-bounded cache (maps of an image)."""
        return self._shared.images.get_or_make(key, make)

    @property
    def vectors(self) -> VectorStore:
        return self._shared.vectors
