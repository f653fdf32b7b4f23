"""The JSON API under /api: each route calls the Python API (neuronindex.api.Index) once."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..api import parse_box
from ..errors import NotFoundError, UsageError
from ..formats import _plain
from ..settings import default
from .common import decode_upload, error, json_rows, neuron_payload, png, run

router = APIRouter(prefix="/api")


# ------------------------------------------------------------------ JSON API
@router.get("/models")
def api_models(request: Request):
    return json_rows(run(request, lambda idx: idx.models().rows()))

@router.get("/layers")
def api_layers(request: Request, model: str | None = None):
    return json_rows(run(request, lambda idx: idx.layers(model).rows()))

@router.get("/summary")
def api_summary(request: Request):
    return json_rows(run(request, lambda idx: idx.summary().rows()))

@router.get("/settings")
def api_settings(request: Request):
    """Every threshold and default (the settings table)."""
    from ..settings import rows

    return json_rows(rows())

@router.get("/search")
def api_search(request: Request, q: str = Query(..., description="property search, e.g. `red conv4`")):
    return {"ok": True, "query": q, "rows": json_rows(run(request, lambda idx: idx.search(q).rows()))}

@router.get("/explain")
def api_explain(request: Request, q: str):
    sql, params = run(request, lambda idx: idx.explain(q))
    return {"ok": True, "sql": sql, "params": _plain(params)}

figure_cache: dict = {}

@router.get("/report/{model}/{figure}.png")
def api_figure(request: Request, model: str, figure: str):
    from ..report import render_figures

    def draw(idx):
        cache = request.app.state.figure_cache
        key = (request.app.state.live._stamp, model)
        if key not in cache:
            cache.clear()
            cache[key] = render_figures(idx, model)
        return cache[key]
    figures = run(request, lambda idx: draw(idx) if idx.layers(model).rows() else {})
    if figure not in figures:
        raise NotFoundError(f"no figure {figure!r} for model {model!r}; figures: {', '.join(figures) or 'none'}")
    return Response(figures[figure], media_type="image/png")

@router.post("/sql")
def api_sql(request: Request, body: dict):
    query = body.get("sql") if isinstance(body, dict) else None
    if not isinstance(query, str):
        raise UsageError('send {"sql": "SELECT ..."}')
    try:
        asked = int(body.get("max_rows", 1000))
    except (TypeError, ValueError):
        raise UsageError("max_rows must be a whole number") from None
    cap = max(1, min(asked, default("sql_max_rows")))  # the server's cap holds whatever the body asks
    result = run(request, lambda idx: idx.sql(query, max_rows=cap))
    return {"ok": True, "columns": result.columns, "rows": json_rows(result.rows()), "truncated": result.meta["truncated"]}

@router.get("/neurons/{key:path}/nf.png")
def api_nf(request: Request, key: str):
    data = run(request, lambda idx: idx.neuron(key).nf_png())
    if data is None:
        raise NotFoundError(f"neuron {key} has no Neuron Feature")
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

@router.get("/neurons/{key:path}/crops.png")
def api_sprite(request: Request, key: str):
    data = run(request, lambda idx: idx.neuron(key).sprite_png())
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

@router.get("/neurons/{key:path}/crops/{rank}.png")
def api_crop(request: Request, key: str, rank: int):
    img = run(request, lambda idx: idx.neuron(key).crop(rank))
    return png(img)

@router.get("/neurons/{key:path}/bottom/{rank}.png")
def api_bottom_crop(request: Request, key: str, rank: int):
    img = run(request, lambda idx: idx.neuron(key).crop(rank, "bottom"))
    return png(img)

@router.get("/neurons/{key:path}/similar")
def api_similar(request: Request, key: str, k: int = 12, space: str = "prototype"):
    return {"ok": True, "rows": json_rows(run(request, lambda idx: idx.similar(key, k, space).rows()))}

@router.get("/neurons/{key:path}")
def api_neuron(request: Request, key: str):
    return run(request, lambda idx: neuron_payload(idx, key))

@router.post("/nearest")
async def api_nearest(request: Request, image: UploadFile = File(...), box: str | None = Form(None), layer: str = Form("all"),
                      k: int = Form(20), mode: str = Form("embedding"), space: str = Form("prototype"),
                      model: str | None = Form(None)):
    limit = request.app.state.max_upload
    data = await image.read(limit + 1)
    if len(data) > limit:
        return error(413, f"upload larger than the {limit // (1024 * 1024)} MB limit")
    parsed = parse_box(box)

    def answer():  # decoding and the model's forward run on a worker thread, not the event loop
        pil = decode_upload(data)
        return run(request, lambda idx: idx.nearest(pil, parsed, layer, k, mode, space, model).rows())
    return {"ok": True, "rows": json_rows(await run_in_threadpool(answer))}

@router.get("/export")
def api_export(request: Request, q: str, format: str = "csv"):
    import tempfile

    from ..query.export import EXPORT_FORMATS

    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"export.{format}"
        run(request, lambda idx: idx.export(q, format, out))
        data = out.read_bytes()
    media = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson",
             "parquet": "application/vnd.apache.parquet", "html": "text/html"}[format]
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="neurons.{format}"'})
