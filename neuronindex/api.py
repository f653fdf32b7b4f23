"""The Python API: `idx = neuronindex.open(DIR)`.

Every capability is a method returning data: `Result` objects (rows with `.rows()`, `.df()`,
`.arrow()`, iteration, and an HTML table with NF thumbnails in notebooks) or `Neuron` objects.
The CLI and the HTTP service call these and only format.
"""
from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from neuronindex.checks import check_k, unit_kinds
from neuronindex.data import load_image
from neuronindex.errors import (
    DataError,
    ModelError,
    NotFoundError,
    QueryTimeout,
    UsageError,
)
from neuronindex.formats import to_table
from neuronindex.query import categories, compare, maps, units
from neuronindex.query import sql as guarded
from neuronindex.query.export import dump, export
from neuronindex.query.pictures import concept_overlay, context, reconstruction
from neuronindex.query.reader import SUMMARY_COLUMNS, Reader
from neuronindex.query.search import Vocabulary, compile_query, parse, search
from neuronindex.query.sql import schema

# a neuron's top and bottom lists (bottom entries have no NF weight)
_LIST_SQL = ("SELECT t.rank, t.activation, {extra}i.path AS image, c.name AS class, t.y, t.x, t.box_x0, t.box_y0, "
             "t.box_x1, t.box_y1 FROM {table} t JOIN images i ON i.id = t.image_id "
             "LEFT JOIN classes c ON c.id = i.class_id WHERE t.neuron_id = ?")
TOPK_SQL = _LIST_SQL.format(table="topk", extra="t.norm_activation, t.in_nf, ")
BOTTOMK_SQL = _LIST_SQL.format(table="bottomk", extra="")


class Result:
    """Rows of a query, with conversions."""
    def __init__(self, rows: list[dict], columns: list[str] | None = None, **meta):
        self._rows = rows
        self.columns = columns or (list(rows[0]) if rows else [])
        self.meta = meta
        self._index = meta.pop("index", None)

    def rows(self) -> list[dict]:
        return self._rows

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, i):
        return self._rows[i]

    def df(self):
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is optional
            raise ImportError("Result.df() needs pandas: pip install pandas") from None
        return pd.DataFrame(self._rows, columns=self.columns)

    def arrow(self):
        return pa.Table.from_pylist(self._rows)

    def __repr__(self):
        return to_table(self._rows[:20], self.columns) + (f"... {len(self)} rows\n" if len(self) > 20 else "")

    def _repr_html_(self):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in (["nf"] if self._has_nf() else []) + self.columns)
        body = []
        for r in self._rows[:200]:
            cells = []
            if self._has_nf():
                png = self._index.nf_png(r["key"]) if r.get("key") else None
                src = f"data:image/png;base64,{base64.b64encode(png).decode()}" if png else ""
                cells.append(f'<td><img src="{src}" width="48" style="image-rendering:pixelated"></td>')
            cells += [f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in self.columns]
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def _has_nf(self):
        return self._index is not None and "key" in self.columns


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


class Neuron:
    def __init__(self, index: "Index", row: dict):
        self.index = index
        self.row = row
        self.key = row["key"]
        self.id = row["id"]

    def __repr__(self):
        return f"<Neuron {self.key}>"

    def topk(self) -> Result:
        return self.index.query(TOPK_SQL + " ORDER BY t.rank", [self.id])

    def bottomk(self) -> Result:
        """The images with the lowest activation (Zhang (CS231n)): for a neuron the lowest spatial maxima
        (location: the argmax in that image); for a direction the lowest values of its map (the argmin)."""
        return self.index.query(BOTTOMK_SQL + " ORDER BY t.rank", [self.id])

    def lists(self) -> tuple[list[dict], list[dict]]:
        """topk() and bottomk() rows from one query (what a neuron page shows)."""
        rows = self.index.query(f"SELECT 'top' AS side, * FROM ({TOPK_SQL}) UNION ALL BY NAME "
                                f"SELECT 'bottom' AS side, * FROM ({BOTTOMK_SQL}) ORDER BY side DESC, rank",
                                [self.id, self.id]).rows()
        top = [{k: v for k, v in r.items() if k != "side"} for r in rows if r["side"] == "top"]
        bottom = [{k: v for k, v in r.items() if k not in ("side", "norm_activation", "in_nf")}
                  for r in rows if r["side"] == "bottom"]
        return top, bottom

    def concepts(self) -> Result:
        """The unit's best concepts by IoU from `neuronindex dissect` (Network Dissection, Bau et al.
        2017): concept, category, source, iou, rank, its threshold, and `label` (rank 1 above the
        dissection's IoU threshold)."""
        return self.index.query(
            "SELECT c.name AS concept, c.category, c.source, u.iou, u.rank, u.threshold, "
            "(u.rank = 1 AND u.iou > d.iou_threshold) AS label FROM unit_concepts u JOIN concepts c ON c.id = u.concept_id "
            "JOIN dissections d ON d.id = u.dissection_id WHERE u.neuron_id = ? ORDER BY c.source, u.rank", [self.id])

    def labels(self) -> dict:
        """What names the unit: its classes (share, rank, in the set, leaf), colour names with their
        shares, and its layer's pre-activation node."""
        named = self.index.query(
            "SELECT 'class' AS what, c.name, nc.share, nc.rank, nc.in_set, nc.is_leaf FROM neuron_classes nc "
            "JOIN classes c ON c.id = nc.class_id WHERE nc.neuron_id = ? UNION ALL "
            "SELECT 'colour', name, share, NULL, NULL, NULL FROM neuron_colors WHERE neuron_id = ? "
            "UNION ALL SELECT 'layer', pre_activation, NULL, NULL, NULL, NULL FROM layers WHERE id = "
            "(SELECT layer_id FROM neurons WHERE id = ?) ORDER BY what, is_leaf DESC, share DESC", [self.id] * 3).rows()
        return {"classes": [{k: r[k] for k in ("name", "share", "rank", "in_set", "is_leaf")} for r in named
                            if r["what"] == "class"],
                "colours": [{"name": r["name"], "share": r["share"]} for r in named if r["what"] == "colour"],
                "pre_activation": next((r["name"] for r in named if r["what"] == "layer"), None)}

    def direction(self) -> dict | None:
        """A direction's vector and spectrum figures (None for a neuron)."""
        return self.index.direction_row(self.id)

    def nf_png(self) -> bytes | None:
        return self.index.nf_png(self.key)

    def visualizations(self) -> Result:
        """Its activation-maximisation images (`neuronindex visualize`): objective, ratio to a_max,
        trace, parameters; the PNGs through `viz_image` / Index.viz_png."""
        return self.index.visualizations(target=self.key)

    def viz_image(self, objective: str | None = None):
        """Its optimised image as a PIL image (the unit objective's when both are stored)."""
        return Image.open(io.BytesIO(self.index.viz_png(self.key, objective)))

    def nf_image(self):
        """The Neuron Feature as a PIL RGBA image (alpha 0 where no crop saw the pixel)."""
        png = self.nf_png()
        if png is None:
            raise NotFoundError(f"neuron {self.key} has no Neuron Feature (dead, or pass 2 did not run)")
        return Image.open(io.BytesIO(png))

    def sprite_png(self) -> bytes:
        """The top crops side by side, as stored (PNG bytes)."""
        return self.index.sprite_png(self.key)

    def sprite_image(self):
        return Image.open(io.BytesIO(self.sprite_png()))

    def crop(self, rank: int, side: str = "top"):
        """The receptive-field crop of the rank-th top (or bottom) image (see Index.crop)."""
        return self.index.crop(self.key, rank, side)

    def context(self, rank: int = 1, side: str = "top"):
        """The rank-th top (or bottom) image whole, with this unit's heatmap and field (see Index.context)."""
        return self.index.context(self.key, rank, side)

    def concept_overlay(self, concept: str | None = None, n: int = 4):
        """Its top concept images with the concept's mask and its thresholded map (see Index.concept_overlay)."""
        return self.index.concept_overlay(self.key, concept, n)

    def reconstruction(self, rank: int = 1, side: str = "top", rule: str = "deconvnet", whole: bool = False):
        """The deconvnet reconstruction of its activation on the rank-th image (see Index.reconstruction)."""
        return self.index.reconstruction(self.key, rank, side, rule, whole)

    def distribution(self) -> dict:
        """Its activation histogram over the dataset and per-class mean activations (see Index.distribution)."""
        return self.index.distribution(self.key)

    def picture(self):
        """The NF above its top crops, as one PIL image (what `neuronindex show` writes)."""
        sprite = self.sprite_image().convert("RGB")
        thumb = sprite.height
        n = sprite.width // thumb
        shown = max(32, thumb * 2)
        size = max(96, shown * 2)
        cols = min(n, 6)
        rows_ = (n + cols - 1) // cols
        pad = 4
        width = max(size, cols * (shown + pad)) + 2 * pad
        height = size + 24 + rows_ * (shown + pad) + 2 * pad
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        try:
            nf = self.nf_image()
            bg = Image.new("RGBA", nf.size, (200, 200, 200, 255))
            nf = Image.alpha_composite(bg, nf).convert("RGB").resize((size, size), Image.NEAREST)
            canvas.paste(nf, (pad, pad))
        except NotFoundError:
            pass
        ImageDraw.Draw(canvas).text((pad, size + pad + 4), f"{self.key}  NF of {self.row.get('nf_n') or 0} crops", fill=(0, 0, 0))
        for i in range(n):
            crop = sprite.crop((i * thumb, 0, (i + 1) * thumb, thumb)).resize((shown, shown), Image.NEAREST)
            r, c = divmod(i, cols)
            canvas.paste(crop, (pad + c * (shown + pad), size + 24 + pad + r * (shown + pad)))
        return canvas


class Index(Reader):
    """An opened index directory (read-only): the facade. Every answer is a `Result` or a `Neuron`.

    One Index holds one DuckDB connection; a thread that is not the opener's takes its own with
    `view()` (the service gives every request one), sharing the loaded models, vectors and caches
    (see `neuronindex.query.reader.Reader`, what the jobs open).
    """

    def query(self, sql: str, params=None) -> Result:
        """The library's own queries: no guard, no row cap, no time limit. User SQL goes through `sql`."""
        columns, rows = self.fetch(sql, params)
        return Result(rows, columns)

    def models(self) -> Result:
        return Result(self.model_list(), ["id", "name", "spec", "weights", "num_parameters", "images", "n_images",
                                          "finished_at"])

    def layers(self, model: str | None = None) -> Result:
        return Result(self.layer_list(model), ["id", "model", "name", "node", "alias", "aliases", "kind", "channels",
                                               "map_h", "map_w", "rf_size", "rf_stride", "rf_offset", "sparsity"])

    def neuron(self, key: str) -> Neuron:
        return Neuron(self, self.neuron_row(key))

    def directions(self, layer: str | None = None) -> Result:
        """The directions (Zhang (CS231n)) of every layer, or of one (its name, or MODEL/LAYER), in layer
        order then by kind and rank: key, kind, filter, singular value, explained share, top class."""
        where, params = "", []
        if layer:
            model, _, name = layer.rpartition("/")
            where = "WHERE l.name = ?" + (" AND m.name = ?" if model else "")
            params = [name] + ([model] if model else [])
        return self.query(
            "SELECT n.key, m.name AS model, l.name AS layer, d.kind, d.name, d.filter, d.pooling, d.singular_value, "
            "d.explained, d.variance, n.act_max, n.act_min, tc.name AS top_class, n.class_index, n.color_index "
            "FROM directions d JOIN neurons n ON n.id = d.neuron_id JOIN layers l ON l.id = d.layer_id "
            f"JOIN models m ON m.id = l.model_id LEFT JOIN classes tc ON tc.id = n.top_class_id {where} "
            "ORDER BY m.id, l.position, n.channel", params)

    def summary(self, model: str | None = None) -> Result:
        """Per model and layer: neurons, dead, weak, mean alpha, share colour selective (alpha >=
        color_threshold, of the neurons with an alpha), mean gamma, share class selective (gamma >=
        class_selective), mean M, mean CSI, sparsity, mean AUC. The one summary the CLI, the
        report, the gallery and the demo show."""
        return Result(self.summary_rows(model), SUMMARY_COLUMNS)

    # ------------------------------------------------------------------ queries
    def sql(self, query: str, params=None, time_limit: float | None = None, max_rows: int | None = None) -> Result:
        """Guarded read-only SQL (see neuronindex.query.sql); `.meta['truncated']` flags the row cap."""
        r = guarded.run_sql(self.con, query, params, time_limit=time_limit or self.settings.sql_time_limit,
                            max_rows=max_rows or self.settings.sql_max_rows, max_length=self.settings.sql_max_length)
        return Result(r.rows, r.columns, truncated=r.truncated, elapsed=r.elapsed, **r.extra)

    def search(self, text: str, time_limit: float | None = None) -> Result:
        """The property search language, e.g. `red conv4`, `dog layer3 gamma>=0.6`; stopped with a
        QueryTimeout past `time_limit` seconds (default: the search_time_limit setting)."""

        rows, sql, params = search(self.con, text, self._vocabulary(), time_limit, self.settings)
        return Result(rows, list(rows[0]) if rows else None, sql=sql, params=params, index=self)

    def explain(self, text: str) -> tuple[str, list]:
        """The parameterised SQL a search compiles to, and its parameters."""
        vocab = self._vocabulary()
        sql, params, _ = compile_query(parse(text, vocab, self.settings), vocab, self.settings)
        return sql, params

    def export(self, text: str, fmt: str, path, context: bool = True, time_limit: float | None = None) -> int:
        """Write the ranked result of a search as csv, json, jsonl, parquet or an html contact sheet
        (with context: each neuron's first top images whole with its heatmap, behind a toggle;
        left out, with a note on stderr, when the model cannot be loaded here). The whole export
        stops with a QueryTimeout past `time_limit` seconds (default: export_time_limit)."""

        limit = self.settings.export_time_limit if time_limit is None else time_limit
        deadline = time.perf_counter() + limit
        rows = self.search(text, min(limit, self.settings.search_time_limit)).rows()
        make = None
        if context and fmt == "html":
            def make(key, rank):
                if time.perf_counter() > deadline:
                    raise QueryTimeout(f"the export took longer than its {limit:g} s time limit; narrow the search "
                                       "(limit:N) or leave out the whole images (--no-context, &context=false)")
                try:
                    buf = io.BytesIO()
                    self.context(key, rank).save(buf, "PNG")
                    return buf.getvalue()
                except (NotFoundError, DataError):  # fewer top images than the sheet shows; an image moved
                    return None
        try:
            return export(self.con, rows, fmt, path, f"neuronindex: {text}", make)
        except (OSError, ModelError) as exc:
            if make is None:
                raise
            import sys

            print(f"note: the contact sheet has no context view: the model could not be loaded ({exc})", file=sys.stderr)
            return export(self.con, rows, fmt, path, f"neuronindex: {text}")

    def dump(self, folder) -> list[str]:
        return dump(self.con, folder)

    def schema(self) -> Result:
        return Result(schema(self.con))

    # ------------------------------------------------------------------ vectors
    def similar(self, key: str, k: int = 20, space: str = "prototype", kind: str | None = None) -> Result:
        """Neurons nearest to a neuron: `prototype` (same layer) or `signature` (any layer of its model).
        Each row says its unit `kind` (channel, or a direction: svd, random, user); `kind` keeps one
        (`channel`, `direction` for every direction kind)."""

        if space not in ("prototype", "signature"):
            raise UsageError(f"unknown space {space!r}; use prototype or signature")
        check_k(k)
        kinds = unit_kinds(kind)
        n = self.neuron(key)
        group_col = "model_id" if space == "signature" else "layer_id"
        row = self.con.execute(f"SELECT vector, {group_col} FROM embeddings WHERE space = ? AND neuron_id = ?",
                               [space, n.id]).fetchone()
        if row is None:
            raise NotFoundError(f"neuron {key} has no {space} vector (dead, or the index has no embeddings)")

        wanted = k + 1 if kinds is None else CANDIDATES * (k + 1)
        hits = [h for h in self.vectors.search(space, row[1], np.array(row[0]), wanted, self.con)
                if h[0] != n.id]
        return self._with_neurons(self._keep(hits, k, kinds), space)

    def nearest(self, image, box=None, layer: str | None = None, k: int = 20, mode: str = "embedding",
                space: str = "prototype", model: str | None = None, kind: str | None = None,
                per_unit: bool = True) -> Result:
        """Neurons (or stored patches) nearest to an image patch.

        The image is shown to the model as in ingest; the unit of each layer whose receptive field
        is centred nearest the box centre (the centre unit without a box) gives the query.
        `embedding`: its feature vector, searched in the prototype (or patch) space with FAISS.
        `response`: exact; every neuron's activation at that unit relative to its own a_max.
        Rows say their unit `kind`; `kind` keeps one (`channel`, `direction`). In the patch space
        each unit comes once, with its nearest crop and `crops`, how many of its crops were among
        the nearest (`per_unit=False`: every crop). Inputs are checked before the model is loaded.
        """
        import torch

        if mode not in ("embedding", "response"):
            raise UsageError(f"unknown mode {mode!r}; use embedding or response")
        if space not in ("prototype", "patch"):
            raise UsageError(f"unknown space {space!r}; use prototype or patch")
        check_k(k)
        kinds = unit_kinds(kind)
        if box is not None and not all(np.isfinite(float(v)) for v in box):
            raise UsageError("the box needs four finite numbers x0,y0,x1,y1 in image pixels")
        # the cheap checks first: a missing image or a box outside it is told before the model loads
        pil = image if hasattr(image, "size") and hasattr(image, "mode") else load_image(image)
        pil = pil.convert("RGB")
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (x1 > x0 and y1 > y0):
                raise UsageError("the box needs x0 < x1 and y0 < y1")
            iw, ih = pil.size
            if x1 <= 0 or y1 <= 0 or x0 >= iw or y0 >= ih:
                raise UsageError(f"the box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {iw}x{ih} image; "
                                 "give x0,y0,x1,y1 in the image's pixels")
        net = self.network(model, layer)
        loaded, extractor, layers, forward_lock = net.loaded, net.extractor, net.layers, net.lock
        pre = loaded.preprocessing
        h, w = pre.input_size
        if box is not None:
            x0, y0, x1, y1 = pre.map_box((x0, y0, x1, y1), pil.size)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        else:
            cx, cy = w / 2, h / 2
        grouped = space == "patch" and per_unit and mode == "embedding"
        wanted = k if kinds is None and not grouped else CANDIDATES * k  # room for what filtering drops
        batch = torch.from_numpy(np.asarray(pre.geometric(pil), dtype=np.uint8).copy())[None]
        with forward_lock:  # one forward at a time per extractor: it keeps the maps it returns
            maps = extractor(batch)
        hits = []
        for lay in layers:
            y = _unit(cy, lay["rf_offset"], lay["rf_size"], lay["rf_stride"], lay["map_h"])
            x = _unit(cx, lay["rf_offset"], lay["rf_size"], lay["rf_stride"], lay["map_w"])
            vector = maps[lay["node"]][0, :, y, x].cpu().numpy()
            if mode == "response":
                ids, amax = zip(*self.con.execute("SELECT id, act_max FROM neurons WHERE layer_id = ? AND kind = 'channel' "
                                                  "ORDER BY channel",
                                                  [lay["id"]]).fetchall())
                amax = np.array([a if a and a > 0 else np.nan for a in amax], dtype=float)
                score = vector / amax
                hits += [(int(i), 0, float(s)) for i, s in zip(ids, score) if np.isfinite(s)]
            else:
                hits += self.vectors.search(space, lay["id"], vector, wanted, self.con)
        hits.sort(key=lambda t: -t[2])
        return self._with_neurons(self._keep(hits, k, kinds, grouped), space if mode == "embedding" else "response")

    def _keep(self, hits, k: int, kinds: tuple[str, ...] | None, per_unit: bool = False) -> list[tuple]:
        """The first k hits (nearest first) of the wanted unit kinds; per_unit: one per unit (its
        nearest), with the number of its hits among the candidates as a fourth element."""
        if kinds is not None and hits:
            kind_of = dict(self.con.execute("SELECT id, kind FROM neurons WHERE id IN (SELECT unnest(?))",
                                            [sorted({h[0] for h in hits})]).fetchall())
            hits = [h for h in hits if kind_of.get(h[0]) in kinds]
        if not per_unit:
            return hits[:k]
        first: dict[int, list] = {}
        for h in hits:
            if h[0] in first:
                first[h[0]][3] += 1
            else:
                first[h[0]] = [h[0], h[1], h[2], 1]
        return [tuple(v) for v in list(first.values())[:k]]

    def _with_neurons(self, hits, space: str) -> Result:
        """Join (neuron_id, rank, score) hits back to neuron rows (and the crop, for patches), in one query."""
        if not hits:
            return Result([], ["score", "key"], index=self)
        cols = ["key", "kind", "model", "layer", "channel", "color_index", "color_label", "class_index", "top_class",
                "csi", "act_max"]
        found = self.con.execute(
            f"SELECT h.pos, {', '.join('v.' + c for c in cols)}, i.path, t.box_x0, t.box_y0, t.box_x1, t.box_y1 "
            "FROM (SELECT unnest(?) AS id, unnest(?) AS rank, unnest(?) AS pos) h JOIN neuron_search v ON v.id = h.id "
            "LEFT JOIN topk t ON t.neuron_id = h.id AND t.rank = h.rank LEFT JOIN images i ON i.id = t.image_id "
            "ORDER BY h.pos", [[h[0] for h in hits], [h[1] for h in hits], list(range(len(hits)))]).fetchall()
        rows = []
        for r in found:
            neuron_id, rank, score = hits[r[0]][:3]
            out = {"score": score, **dict(zip(cols, r[1:1 + len(cols)]))}
            if space == "patch":
                out.update(rank=rank, image=r[1 + len(cols)], box=list(r[2 + len(cols):]))
                if len(hits[r[0]]) > 3:
                    out["crops"] = hits[r[0]][3]
            rows.append(out)
        return Result(rows, list(rows[0]), index=self)

    def _vocabulary(self):
        if self._shared.vocab is None:
            self._shared.vocab = Vocabulary.load(self.con)
        return self._shared.vocab

    def crop(self, key: str, rank: int, side: str = "top"):
        """The receptive-field crop of the rank-th top (or bottom) image, cut from the image as the
        model saw it (grey where the field leaves the image); the whole image where a bottom entry
        has no location."""

        table = {"top": "topk", "bottom": "bottomk"}[side]
        row = self.con.execute(
            f"SELECT i.path, d.source, t.box_x0, t.box_y0, t.box_x1, t.box_y1, m.preprocessing FROM {table} t "
            "JOIN images i ON i.id = t.image_id JOIN datasets d ON d.id = i.dataset_id "
            "JOIN neurons n ON n.id = t.neuron_id JOIN models m ON m.id = n.model_id "
            "WHERE n.key = ? AND t.rank = ?", [key, rank]).fetchone()
        if row is None:
            self.neuron(key)  # an unknown key: its own message, with suggestions
            raise NotFoundError(f"neuron {key} has no rank {rank} {side} image")
        path, source, x0, y0, x1, y1, pre = row
        # the image as the model saw it, decoded once per opened index (top lists share images)
        seen = self.seen(path, source, pre)
        if x0 is None:
            return Image.fromarray(seen)
        h, w = seen.shape[:2]
        out = np.full((y1 - y0, x1 - x0, 3), 128, np.uint8)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if sy1 > sy0 and sx1 > sx0:
            out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = seen[sy0:sy1, sx0:sx1]
        return Image.fromarray(out)

    def context(self, key: str, rank: int = 1, side: str = "top"):
        """The rank-th top (or bottom) image of a unit whole, as the model saw it, with the unit's
        activation map over it as a heatmap (aligned by the receptive field; colour = activation /
        a_max) and its field at the stored location boxed: a PIL RGB image (query.pictures.context)."""

        return context(self, key, rank, side)

    def concept_overlay(self, key: str, concept: str | None = None, n: int = 4):
        """Network Dissection's picture of a unit: its top `n` images of the dissection with
        `concept` (default: its best), the concept's mask tinted cyan and the unit's map
        thresholded at T (upsampled by its receptive field) outlined in yellow: a PIL RGB strip
        (query.pictures.concept_overlay)."""
        return concept_overlay(self, key, concept, n)

    def reconstruction(self, key: str, rank: int = 1, side: str = "top", rule: str = "deconvnet", whole: bool = False):
        """The unit's activation on its rank-th image projected back to pixels (Yu et al. 2014; Zeiler &
        Fergus's deconvnet, or rule='guided' / 'backprop'), cropped to the receptive field unless
        whole: a PIL RGB image, grey = 0 (query.pictures.reconstruction)."""

        return reconstruction(self, key, rank, side, rule, whole)

    def distribution(self, key: str) -> dict:
        """A unit's activation distribution: `histogram` (the activation_histograms row: equal bins,
        density, share of zeros; None when pass 1 streamed none) and `classes` (per class, the mean
        activation over its images, highest first; mean_spatial with --spatial-means)."""
        n = self.neuron(key)
        hist = self.query("SELECT n_images, density, share_zero, edges, counts, bucket_values, bucket_counts "
                          "FROM activation_histograms WHERE neuron_id = ?", [n.id]).rows()
        classes = self.query("SELECT c.name AS class, cm.mean_activation, cm.mean_spatial, cm.n_images FROM class_means cm "
                             "JOIN classes c ON c.id = cm.class_id WHERE cm.neuron_id = ? AND cm.n_images > 0 "
                             "ORDER BY cm.mean_activation DESC, c.name", [n.id]).rows()
        return {"key": n.key, "act_max": n.row.get("act_max"), "histogram": hist[0] if hist else None, "classes": classes}

    def sprite_png(self, key: str) -> bytes:
        """A neuron's top crops side by side, as stored (one query; NotFoundError names what is missing)."""
        row = self.con.execute("SELECT f.sprite_png FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id "
                               "WHERE n.key = ?", [key]).fetchone()
        if not row or row[0] is None:
            self.neuron(key)  # an unknown key: its own message, with suggestions
            raise NotFoundError(f"neuron {key} has no crops stored")
        return row[0]

    def visualizations(self, model: str | None = None, target: str | None = None, kind: str | None = None) -> Result:
        """Stored activation-maximisation images without their PNG bytes (`neuronindex visualize`):
        of one target (a neuron key, class:NAME), of a model, or of a kind (neurons, classes)."""
        where, args = [], []
        if model is not None:
            where.append("m.name = ?")
            args.append(model)
        if target is not None:
            where.append("v.target = ?")
            args.append(target)
        if kind == "neurons":
            where.append("v.neuron_id IS NOT NULL")
        elif kind == "classes":
            where.append("v.objective IN ('class', 'prob')")
        sql = ("SELECT v.id, m.name AS model, v.target, v.objective, v.start, v.width, v.height, v.box_x0, v.box_y0, "
               "v.box_x1, v.box_y1, v.trace, v.trace_steps, v.objective_value, v.activation, v.activation_ratio, "
               "v.color_index, v.hue, v.predicted, v.probability, v.flip_step, v.steps, v.seed, v.parameters, "
               "v.seconds, v.created FROM visualizations v JOIN models m ON m.id = v.model_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY v.model_id, v.neuron_id, v.id")
        return self.query(sql, args)

    def viz_png(self, target: str, objective: str | None = None, start: str | None = None, diff: bool = False) -> bytes:
        """The PNG of a target's optimised image (a neuron key or class:NAME); the unit objective's
        when a neuron has both, unless `objective` says; `diff`: the difference image of a run from
        a start image."""
        row = self.con.execute(
            f"SELECT {'diff_png' if diff else 'image_png'} FROM visualizations WHERE target = ? "
            "AND (? IS NULL OR objective = ?) AND start IS NOT DISTINCT FROM ? "
            "ORDER BY objective = 'unit' DESC, id DESC LIMIT 1", [target, objective, objective, start]).fetchone()
        if not row or row[0] is None:
            if "/" in target and not target.startswith("class:"):
                self.neuron(target)  # an unknown key: its own message, with suggestions
            raise NotFoundError(f"no optimised image of {target}" + (f" ({objective})" if objective else "")
                                + "; make it with `neuronindex visualize INDEX`")
        return row[0]

    def viz_png_by_id(self, viz_id: int, diff: bool = False) -> bytes:
        row = self.con.execute(f"SELECT {'diff_png' if diff else 'image_png'} FROM visualizations WHERE id = ?",
                               [viz_id]).fetchone()
        if not row or row[0] is None:
            raise NotFoundError(f"no stored {'difference ' if diff else ''}image with id {viz_id}")
        return row[0]

    def categories(self, model: str | None = None, layer: str | None = None, pooling: str | None = None) -> Result:
        """The stored category hierarchy (Dai 2020, Algorithm 1): its classes in dendrogram order with
        their minimum-spanning-tree degree and eccentricity. Meta: layer, pooling, centre, hub, the
        WordNet scores, and `nodes` (every merge: node, parent, height, size)."""

        h = categories.stored(self.con, model, layer, pooling)
        keep = ("model", "layer", "pooling", "n_classes", "centre", "hub", "wordnet_correlation", "wordnet_baseline",
                "wordnet_sibling_auc", "wordnet_classes", "created")
        return Result(categories.classes_of(self.con, h), index=self, nodes=categories.nodes_of(self.con, h),
                      **{k: h[k] for k in keep})

    def nearest_classes(self, name: str, k: int = 5, model: str | None = None, layer: str | None = None,
                        pooling: str | None = None) -> Result:
        """The k classes nearest to a class by category distance (1 - cosine of the class means)."""
        h = categories.stored(self.con, model, layer, pooling)
        return Result(categories.nearest_classes(self.con, h, name, k), index=self, layer=h["layer"],
                      pooling=h["pooling"])

    def subtree(self, name: str, up: int = 1, model: str | None = None, layer: str | None = None,
                pooling: str | None = None) -> Result:
        """The classes under the node `up` merges above a class (up=1: its sibling branch)."""
        h = categories.stored(self.con, model, layer, pooling)
        node, under = categories.subtree(self.con, h, name, up)
        return Result([{"class": r["class"], "leaf_order": r["leaf_order"]} for r in under], index=self,
                      height=node["height"], node=node["node"], layer=h["layer"], pooling=h["pooling"])

    def prediction_tree(self, class_name: str, layer: str | None = None, model: str | None = None,
                        pooling: str = "max") -> Result:
        """A stored filter prediction tree (Dai 2020, Algorithm 2; `neuronindex tree`): its nodes,
        leaves (images) first, each merge with its critical filter's neuron key, the root last."""

        t, nodes = categories.stored_tree(self.con, class_name, layer, model, pooling)
        return Result(nodes, index=self, **{k: t[k] for k in ("model", "layer", "class", "pooling", "n_images",
                                                               "class_images", "n_filters", "root", "created")})

    def map(self, layer: str, space: str = "neurons", model: str | None = None) -> Result:
        """A stored representation map (`neuronindex map`): one row per point with x, y in [0, 1] and
        its neuron (and crop); meta: method, parameters, seed, and `stale` when the embeddings changed."""

        if model is None:
            model = self.only_model()
        m = maps.points(self, model, layer, space)
        rows = [dict(zip(m["columns"], r)) for r in m.pop("rows")]
        m.pop("columns")
        return Result(rows, index=self, **m)

    def compare(self, a: str, b: str) -> Result:
        """Two models side by side (Yu et al. 2014): per-layer summary rows aligned by relative depth (rows:
        depth, a, b), and in meta the layer-by-layer similarity over their shared probe images
        (`similarity`: matrix of mean best correlations; None when they share too few images, with
        `problem` saying why). See neuronindex.compare."""

        rows = compare.layers(self, a, b)
        try:
            similarity, problem = compare.layer_similarity(self, a, b), None
        except (UsageError, NotFoundError) as exc:
            similarity, problem = None, exc.message
        return Result(rows, ["depth", "a", "b"], index=self, a=a, b=b, similarity=similarity, problem=problem)

    def matches(self, key: str, other: str, k: int = 10, layer: str | None = None) -> Result:
        """The neurons of model `other` (one layer, or all) whose activations over the probe images
        both models saw correlate best with neuron `key`'s (Pearson; see neuronindex.compare)."""

        m = compare.matches(self, key, other, k, layer)
        rows = m.pop("rows")
        return Result(rows, ["key", "layer", "channel", "correlation", "dead"], index=self, **m)

    def dissections(self, model: str | None = None) -> Result:
        """Per dissected layer and concept set: units, interpretable units (best IoU above the
        threshold), images, quantile, IoU threshold, seconds."""
        return self.query(
            "SELECT m.name AS model, l.name AS layer, d.source, d.n_images, d.quantile, d.iou_threshold, "
            "(SELECT count(*) FROM neurons n WHERE n.layer_id = l.id AND n.kind = 'channel') AS units, "
            "(SELECT count(*) FROM unit_concepts u WHERE u.dissection_id = d.id AND u.rank = 1 "
            "AND u.iou > d.iou_threshold) AS interpretable, d.seconds FROM dissections d JOIN layers l ON "
            "l.id = d.layer_id JOIN models m ON m.id = d.model_id WHERE (? IS NULL OR m.name = ?) "
            "ORDER BY m.id, l.position, d.source", [model, model])

    def detectors(self, model: str | None = None, source: str | None = None) -> Result:
        """Network Dissection's summary figure, per dissected layer, concept set and category: the
        units labelled with a concept of the category (best IoU above the threshold) and the
        unique detectors (distinct concepts that label at least one unit), with those concepts."""
        return self.query(
            "SELECT m.name AS model, l.name AS layer, d.source, c.category, count(*) AS units, "
            "count(DISTINCT c.id) AS unique_detectors, string_agg(DISTINCT c.name, ', ' ORDER BY c.name) AS concepts "
            "FROM unit_concepts u JOIN dissections d ON d.id = u.dissection_id JOIN concepts c ON c.id = u.concept_id "
            "JOIN layers l ON l.id = d.layer_id JOIN models m ON m.id = d.model_id WHERE u.rank = 1 AND "
            "u.iou > d.iou_threshold AND (? IS NULL OR m.name = ?) AND (? IS NULL OR d.source = ?) "
            "GROUP BY m.id, m.name, l.position, l.name, d.source, c.category ORDER BY m.id, l.position, d.source, "
            "c.category", [model, model, source, source])

    def dictionaries(self, model: str | None = None, k: int = 20) -> Result:
        """Per layer with learned dictionaries, neurons vs SVD directions vs NMF vs SAE atoms: class
        purity (top_class_share, class_index, csi), colour (color_index, color_selective), redundancy
        (overlap of top-k image sets) and reconstruction R^2 for the same number of units (see
        query/units.py for each definition)."""
        return Result(units.comparison(self.con, model, k, self.settings.color_threshold),
                      ["model", "layer", "kind", "units", "top_class_share", "class_index", "csi", "color_index",
                       "color_selective", "redundancy", "r2", "l0"])

    def dictionary_fits(self, model: str | None = None) -> Result:
        """Every fitted dictionary: model, layer, kind, atoms, samples, R^2 (own codes, the indexed
        maps'), mean active atoms, baselines for as many units, seconds."""
        return self.query(
            "SELECT m.name AS model, l.name AS layer, d.kind, d.atoms, d.samples, d.r2, d.r2_map, d.l0, d.clipped, "
            "d.r2_neurons, d.r2_pca, d.seconds FROM dictionaries d JOIN layers l ON l.id = d.layer_id "
            "JOIN models m ON m.id = l.model_id WHERE (? IS NULL OR m.name = ?) ORDER BY m.id, l.position, d.kind",
            [model, model])

    def trees(self, model: str | None = None) -> Result:
        """Every stored prediction tree (of one model): model, layer, class, pooling, images, filters."""
        return Result(categories.trees(self.con, model), index=self)

    def hierarchies(self, model: str) -> Result:
        """The category hierarchies stored for a model: layer and pooling, in layer order."""
        return self.query("SELECT l.name AS layer, h.pooling FROM hierarchies h JOIN layers l ON l.id = h.layer_id "
                          "JOIN models m ON m.id = h.model_id WHERE m.name = ? ORDER BY l.position, h.pooling", [model])

    def nearest_class_names(self, model: str, layer: str, pooling: str, k: int = 3) -> dict[str, list[str]]:
        """For every class of a stored hierarchy, its k nearest classes as 'name distance' strings."""
        rows = self.query(
            "SELECT a.name AS class, list(b.name || ' ' || printf('%.3f', d.distance) ORDER BY d.distance)[1:?] AS near "
            "FROM class_distances d JOIN classes a ON a.id = d.class_a JOIN classes b ON b.id = d.class_b "
            "JOIN hierarchies h ON h.id = d.hierarchy_id JOIN layers l ON l.id = h.layer_id JOIN models m ON "
            "m.id = h.model_id WHERE m.name = ? AND l.name = ? AND h.pooling = ? GROUP BY a.name",
            [k, model, layer, pooling]).rows()
        return {r["class"]: r["near"] for r in rows}

    def stored_maps(self, model: str, layer: str | None = None) -> Result:
        """The representation maps stored for a model (or one layer of it): layer name and space."""
        return self.query("SELECT l.name AS layer, p.space FROM maps p JOIN layers l ON l.id = p.layer_id JOIN models m "
                          "ON m.id = p.model_id WHERE m.name = ? AND (? IS NULL OR l.name = ?) ORDER BY l.position, "
                          "p.space", [model, layer, layer])

    def visualized(self, model: str, layer: str) -> dict[str, int]:
        """The units of a layer with an optimised image: key -> the widest image's width."""
        rows = self.query("SELECT target, max(width) AS width FROM visualizations v JOIN neurons n ON n.id = v.neuron_id "
                          "JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = l.model_id WHERE m.name = ? AND "
                          "l.name = ? GROUP BY target", [model, layer]).rows()
        return {r["target"]: r["width"] for r in rows}

    def nf_png(self, key: str) -> bytes | None:
        row = self.con.execute("SELECT f.nf_png FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id "
                               "WHERE n.key = ?", [key]).fetchone()
        return row[0] if row else None


CANDIDATES = 20  # nearest neighbours fetched per result when results are filtered by kind or grouped by unit


def _unit(centre: float, offset, size, stride, length: int) -> int:
    """The unit whose receptive field is centred nearest `centre` (input pixels) along one axis."""
    if offset is None or not stride:
        return length // 2
    return int(min(max(round((centre - (offset + size / 2)) / stride), 0), length - 1))
