"""The JSON API under /api: each route calls the Python API (neuronindex.api.Index) once, on a
worker thread through `common.answer` (its own cursor, a bounded pool, answers cached per version)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from neuronindex.checks import parse_box
from neuronindex.errors import NotFoundError, UsageError
from neuronindex.formats import plain
from neuronindex.query.export import EXPORT_FORMATS
from neuronindex.report import figure_names, hierarchy_pngs, map_png, render_figures
from neuronindex.service.common import (
    answer,
    answer_key,
    decode_upload,
    encode_json,
    error,
    json_rows,
    neuron_payload,
    png_bytes,
)
from neuronindex.settings import rows

router = APIRouter(prefix="/api")
PNG = "image/png"


# ------------------------------------------------------------------ JSON API
@router.get("/models")
async def api_models(request: Request):
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.models().rows())})

@router.get("/layers")
async def api_layers(request: Request, model: str | None = None):
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.layers(model).rows())})

@router.get("/summary")
async def api_summary(request: Request):
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.summary().rows())})

@router.get("/dictionaries")
async def api_dictionaries(request: Request, model: str | None = None):
    """Learned dictionaries (NMF, SAE) against neurons and SVD directions, per layer (`Index.dictionaries`),
    and every fit (`fits`: R^2, active atoms, baselines)."""
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.dictionaries(model).rows()),
                                              "fits": json_rows(idx.dictionary_fits(model).rows())})

@router.get("/settings")
def api_settings():
    """Every threshold and default (the settings table)."""
    return {"ok": True, "rows": json_rows(rows())}

@router.get("/status")
def api_status(request: Request):
    """The service itself: the index version served, its answer cache, and the worker pools."""
    state = request.app.state
    version = state.live.acquire()
    try:
        cache = version.answers
        return {"ok": True, "version": version.tag, "answers": {"entries": len(cache), "bytes": cache.used,
                                                                  "hits": cache.hits, "misses": cache.misses},
                "pools": {p.name: {"threads": p.threads, "queue": p.queue, "pending": p.pending}
                          for p in (state.light, state.heavy)}}
    finally:
        state.live.release(version)

@router.get("/search")
async def api_search(request: Request, q: str = Query(..., description="property search, e.g. `red conv4`")):
    return await answer(request, lambda idx: {"ok": True, "query": q, "rows": json_rows(idx.search(q).rows())})

@router.get("/explain")
async def api_explain(request: Request, q: str):
    def make(idx):
        sql, params = idx.explain(q)
        return {"ok": True, "sql": sql, "params": plain(params)}
    return await answer(request, make)

@router.get("/report/{model}/{figure}.png")
async def api_figure(request: Request, model: str, figure: str):

    def draw(idx):  # every figure of the model is drawn at once; each is cached under its own URL
        idx.model_row(model)
        names = figure_names(idx, model)  # cheap: an unknown name is a 404 before anything is drawn
        if figure not in names:
            raise NotFoundError(f"no figure {figure!r} for model {model!r}; figures: {', '.join(names)}")
        figures = render_figures(idx, model) if idx.layers(model).rows() else {}
        for name, data in figures.items():
            idx.version.answers.put(answer_key(f"/api/report/{model}/{name}.png"), data)
        if figure not in figures:
            raise NotFoundError(f"no figure {figure!r} for model {model!r}; figures: {', '.join(figures) or 'none'}")
        return figures[figure]
    return await answer(request, draw, media=PNG, heavy=True)

@router.post("/sql")
async def api_sql(request: Request, body: dict):
    query = body.get("sql") if isinstance(body, dict) else None
    if not isinstance(query, str):
        raise UsageError('send {"sql": "SELECT ..."}')
    try:
        asked = int(body.get("max_rows", 1000))
    except (TypeError, ValueError, OverflowError):
        raise UsageError("max_rows must be a whole number") from None
    cap = max(1, min(asked, request.app.state.settings.sql_max_rows))  # the server's cap holds whatever the body asks

    def make(idx):  # the time limit runs from the parse to the last byte of JSON
        result = idx.sql(query, max_rows=cap)
        return encode_json({"ok": True, "columns": result.columns, "truncated": result.meta["truncated"],
                            "rows": result.rows()}, result.meta["deadline"])
    return await answer(request, make, cache=False)

@router.get("/neurons/{key:path}/nf.png")
async def api_nf(request: Request, key: str):
    def make(idx):
        data = idx.nf_png(key)
        if data is None:
            idx.neuron(key)  # an unknown key: its own message, with suggestions
            raise NotFoundError(f"neuron {key} has no Neuron Feature")
        return data
    return await answer(request, make, media=PNG)

@router.get("/neurons/{key:path}/crops.png")
async def api_sprite(request: Request, key: str):
    return await answer(request, lambda idx: idx.sprite_png(key), media=PNG)

@router.get("/neurons/{key:path}/crops/{rank}.png")
async def api_crop(request: Request, key: str, rank: int):
    return await answer(request, lambda idx: png_bytes(idx.crop(key, rank)), media=PNG, heavy=True)

@router.get("/neurons/{key:path}/bottom/{rank}.png")
async def api_bottom_crop(request: Request, key: str, rank: int):
    return await answer(request, lambda idx: png_bytes(idx.crop(key, rank, "bottom")), media=PNG, heavy=True)

@router.get("/neurons/{key:path}/context/{rank}.png")
async def api_context(request: Request, key: str, rank: int, side: str = "top"):
    """The rank-th top (or bottom) image whole, the unit's heatmap over it and its field boxed."""
    return await answer(request, lambda idx: png_bytes(idx.context(key, rank, side)), media=PNG, heavy=True)

@router.get("/neurons/{key:path}/concepts.png")
async def api_concept_overlay(request: Request, key: str, concept: str | None = None, n: int = 4):
    """The unit's top concept images: the concept's mask tinted, its thresholded map outlined."""
    return await answer(request, lambda idx: png_bytes(idx.concept_overlay(key, concept, n)), media=PNG, heavy=True)

@router.get("/neurons/{key:path}/deconv/{rank}.png")
async def api_deconv(request: Request, key: str, rank: int, side: str = "top", rule: str = "deconvnet",
                     whole: bool = False):
    """The unit's activation on the rank-th image projected back to pixels (Yu et al. 2014): rule deconvnet
    (Zeiler & Fergus), guided (guided backpropagation) or backprop; the receptive field unless whole."""
    return await answer(request, lambda idx: png_bytes(idx.reconstruction(key, rank, side, rule, whole)), media=PNG,
                        heavy=True)

@router.get("/neurons/{key:path}/distribution")
async def api_distribution(request: Request, key: str):
    """The unit's activation histogram over the dataset, its activation density and per-class means."""
    return await answer(request, lambda idx: {"ok": True, **{k: plain(v) if k != "classes" else json_rows(v)
                                                            for k, v in idx.distribution(key).items()}})

@router.get("/neurons/{key:path}/viz.png")
async def api_viz(request: Request, key: str, objective: str | None = None):
    """The neuron's optimised image (activation maximisation; `neuronindex visualize`)."""
    return await answer(request, lambda idx: idx.viz_png(key, objective), media=PNG)

@router.get("/visualizations")
async def api_visualizations(request: Request, model: str | None = None, target: str | None = None,
                             kind: str | None = None):
    """Stored optimised images (without pixels; each row's PNG is at /api/visualizations/{id}.png)."""
    if kind not in (None, "neurons", "classes"):
        raise UsageError(f"unknown kind {kind!r}; use neurons or classes")
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.visualizations(model, target, kind).rows())})

@router.get("/visualizations/{viz_id}.png")
async def api_visualization_png(request: Request, viz_id: int, diff: bool = False):
    return await answer(request, lambda idx: idx.viz_png_by_id(viz_id, diff), media=PNG)

def _result(r) -> dict:
    """A Result as JSON: its meta beside its rows."""
    meta = {k: (json_rows(v) if isinstance(v, list) and v and isinstance(v[0], dict) else plain(v))
            for k, v in r.meta.items()}
    return {"ok": True, **meta, "rows": json_rows(r.rows())}

@router.get("/categories")
async def api_categories(request: Request, model: str | None = None, layer: str | None = None,
                         pooling: str | None = None):
    """The category hierarchy (Dai 2020, Algorithm 1): classes in dendrogram order, merges, centre, WordNet scores."""
    return await answer(request, lambda idx: _result(idx.categories(model, layer, pooling)))

@router.get("/categories/nearest")
async def api_nearest_classes(request: Request, class_name: str = Query(..., alias="class"), k: int = 5,
                              model: str | None = None, layer: str | None = None, pooling: str | None = None):
    return await answer(request, lambda idx: _result(idx.nearest_classes(class_name, k, model, layer, pooling)))

@router.get("/categories/subtree")
async def api_subtree(request: Request, class_name: str = Query(..., alias="class"), up: int = 1,
                      model: str | None = None, layer: str | None = None, pooling: str | None = None):
    return await answer(request, lambda idx: _result(idx.subtree(class_name, up, model, layer, pooling)))

@router.get("/categories/{figure}.png")
async def api_categories_png(request: Request, figure: str, model: str | None = None, layer: str | None = None,
                             pooling: str | None = None):
    """The dendrogram or the minimum spanning tree, drawn."""
    if figure not in ("dendrogram", "mst"):
        raise NotFoundError(f"no figure {figure!r}; use dendrogram.png or mst.png")
    return await answer(request, lambda idx: hierarchy_pngs(idx, model, layer, pooling)[figure], media=PNG, heavy=True)

@router.get("/trees/{model}/{layer}/{class_name}")
async def api_tree(request: Request, model: str, layer: str, class_name: str, pooling: str = "max"):
    """A stored filter prediction tree (Dai 2020, Algorithm 2; `neuronindex tree` builds it)."""
    return await answer(request, lambda idx: _result(idx.prediction_tree(class_name, layer, model, pooling)))

@router.get("/maps/{model}/{layer}")
async def api_map(request: Request, model: str, layer: str, space: str = "neurons"):
    """A stored representation map (Yu et al. 2014; `neuronindex map` makes it): x, y in [0, 1] per point."""
    return await answer(request, lambda idx: _result(idx.map(layer, space, model)))

@router.get("/maps/{model}/{layer}/map.png")
async def api_map_png(request: Request, model: str, layer: str, space: str = "neurons", color: str = "colour"):

    return await answer(request, lambda idx: map_png(idx, model, layer, space, color), media=PNG, heavy=True)

@router.get("/compare")
async def api_compare(request: Request, a: str, b: str):
    """Two models side by side: per-layer rows aligned by relative depth, layer-by-layer similarity."""
    return await answer(request, lambda idx: _result(idx.compare(a, b)), heavy=True)

@router.get("/compare/matches")
async def api_matches(request: Request, neuron: str, other: str, k: int = 10, layer: str | None = None):
    """The neurons of model `other` whose activations correlate best with `neuron`'s on the shared probe images."""
    return await answer(request, lambda idx: _result(idx.matches(neuron, other, k, layer)))

@router.get("/neurons/{key:path}/concepts")
async def api_concepts(request: Request, key: str):
    """The unit's best concepts by IoU (Network Dissection; `neuronindex dissect`)."""
    return await answer(request, lambda idx: {"ok": True, "key": key, "rows": json_rows(idx.neuron(key).concepts().rows())})


@router.get("/neurons/{key:path}/similar")
async def api_similar(request: Request, key: str, k: int = 12, space: str = "prototype", kind: str = "all"):
    return await answer(request, lambda idx: {"ok": True, "rows": json_rows(idx.similar(key, k, space, kind).rows())})

@router.get("/neurons/{key:path}")
async def api_neuron(request: Request, key: str):
    return await answer(request, lambda idx: neuron_payload(idx, key))

@router.post("/nearest")
async def api_nearest(request: Request, image: UploadFile = File(...), box: str | None = Form(None), layer: str = Form("all"),
                      k: int = Form(20), mode: str = Form("embedding"), space: str = Form("prototype"),
                      model: str | None = Form(None), kind: str = Form("all"), all_crops: bool = Form(False)):
    limit = request.app.state.max_upload
    data = await image.read(limit + 1)
    if len(data) > limit:
        return error(413, f"upload larger than the {limit // (1024 * 1024)} MB limit")
    parsed = parse_box(box)

    def make(idx):  # decoding and the model's forward run on a heavy worker, not the event loop
        pil, (sx, sy) = decode_upload(data, request.app.state.settings)
        box = None
        if parsed is not None:  # in the upload's own pixels, checked against its own size
            x0, y0, x1, y1 = parsed
            w, h = round(pil.size[0] / sx), round(pil.size[1] / sy)
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise UsageError(f"the box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {w}x{h} image; "
                                 "give x0,y0,x1,y1 in the image's pixels")
            box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        rows = idx.nearest(pil, box, layer, k, mode, space, model, kind=kind, per_unit=not all_crops).rows()
        return {"ok": True, "rows": json_rows(rows)}
    return await answer(request, make, heavy=True, cache=False)

EXPORT_MEDIA = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson",
                "parquet": "application/vnd.apache.parquet", "html": "text/html"}

@router.get("/export")
async def api_export(request: Request, q: str, format: str = "csv", context: bool = True):

    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")

    def make(idx):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"export.{format}"
            idx.export(q, format, out, context=context)
            return out.read_bytes()
    # an HTML sheet with whole images runs the model: the heavy pool, so exports never hold the
    # threads that answer searches and pages (a full pool answers 503; the export_time_limit, 408)
    return await answer(request, make, media=EXPORT_MEDIA[format], heavy=format == "html" and context,
                        headers={"Content-Disposition": f'attachment; filename="neurons.{format}"'})
