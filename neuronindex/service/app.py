"""FastAPI app factory and routes."""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from .. import store
from ..api import Index, parse_box
from ..settings import default
from ..errors import NeuronIndexError, NotFoundError, UsageError
from ..formats import _plain

MAX_UPLOAD = default("max_upload")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class LiveIndex:
    """The published index, reopened when an ingest swaps in a new file; one query at a time.

    An ingest in another process (the normal case) is seen on the next request. Within one
    process DuckDB shares a database instance per path, so while any other connection of this
    process holds the old file open, a reopen would still read it.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.lock = threading.RLock()
        self._index: Index | None = None
        self._stamp = None
        self.get()  # fail at start-up, not at the first request, on a missing or old index

    def _current_stamp(self):
        st = os.stat(store.index_file(self.directory))
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def get(self) -> Index:
        stamp = self._current_stamp()
        if self._index is None or stamp != self._stamp:
            # close first: DuckDB shares one database instance per path in a process, so a
            # connection opened while the old one lives would still read the old file
            if self._index is not None:
                self._index.close()
                self._index = None
            self._index = Index(self.directory)
            self._stamp = stamp
        return self._index


def _json(rows):
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message, "status": status}, status_code=status)


def create_app(directory: str | os.PathLike, token: str | None = None, max_upload: int = MAX_UPLOAD) -> FastAPI:
    live = LiveIndex(directory)
    app = FastAPI(title="neuronindex", description="What every neuron of a CNN responds to, and which respond to this.",
                  version=__import__("neuronindex").__version__)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return error(401, "missing or wrong bearer token; send Authorization: Bearer <token>")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload:
            return error(413, f"upload larger than the {max_upload // (1024 * 1024)} MB limit")
        return await call_next(request)

    @app.exception_handler(NeuronIndexError)
    async def library_error(_request, exc: NeuronIndexError):
        return error(exc.http_status, exc.message)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):  # no stack traces to clients
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        return error(400, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    def run(fn):
        with live.lock:
            return fn(live.get())

    # ------------------------------------------------------------------ JSON API
    @app.get("/api/models")
    def api_models():
        return _json(run(lambda idx: idx.models().rows()))

    @app.get("/api/layers")
    def api_layers(model: str | None = None):
        return _json(run(lambda idx: idx.layers(model).rows()))

    @app.get("/api/summary")
    def api_summary():
        return _json(run(lambda idx: layer_summary(idx)))

    @app.get("/api/settings")
    def api_settings():
        """Every threshold and default (the settings table)."""
        from ..settings import rows

        return _json(rows())

    @app.get("/api/search")
    def api_search(q: str = Query(..., description="property search, e.g. `red conv4`")):
        return {"ok": True, "query": q, "rows": _json(run(lambda idx: idx.search(q).rows()))}

    @app.get("/api/explain")
    def api_explain(q: str):
        sql, params = run(lambda idx: idx.explain(q))
        return {"ok": True, "sql": sql, "params": _plain(params)}

    figure_cache: dict = {}

    @app.get("/api/report/{model}/{figure}.png")
    def api_figure(model: str, figure: str):
        from ..report import render_figures

        def draw(idx):
            key = (live._stamp, model)
            if key not in figure_cache:
                figure_cache.clear()
                figure_cache[key] = render_figures(idx, model)
            return figure_cache[key]
        figures = run(lambda idx: draw(idx) if idx.layers(model).rows() else {})
        if figure not in figures:
            raise NotFoundError(f"no figure {figure!r} for model {model!r}; figures: {', '.join(figures) or 'none'}")
        return Response(figures[figure], media_type="image/png")

    @app.post("/api/sql")
    def api_sql(body: dict):
        query = body.get("sql") if isinstance(body, dict) else None
        if not isinstance(query, str):
            raise UsageError('send {"sql": "SELECT ..."}')
        try:
            asked = int(body.get("max_rows", 1000))
        except (TypeError, ValueError):
            raise UsageError("max_rows must be a whole number") from None
        cap = max(1, min(asked, default("sql_max_rows")))  # the server's cap holds whatever the body asks
        result = run(lambda idx: idx.sql(query, max_rows=cap))
        return {"ok": True, "columns": result.columns, "rows": _json(result.rows()), "truncated": result.meta["truncated"]}

    @app.get("/api/neurons/{key:path}/nf.png")
    def api_nf(key: str):
        png = run(lambda idx: idx.neuron(key).nf_png())
        if png is None:
            raise NotFoundError(f"neuron {key} has no Neuron Feature")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    @app.get("/api/neurons/{key:path}/crops.png")
    def api_sprite(key: str):
        png = run(lambda idx: idx.neuron(key).sprite_png())
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    @app.get("/api/neurons/{key:path}/crops/{rank}.png")
    def api_crop(key: str, rank: int):
        img = run(lambda idx: idx.neuron(key).crop(rank))
        return _png(img)

    @app.get("/api/neurons/{key:path}/similar")
    def api_similar(key: str, k: int = 12, space: str = "prototype"):
        return {"ok": True, "rows": _json(run(lambda idx: idx.similar(key, k, space).rows()))}

    @app.get("/api/neurons/{key:path}")
    def api_neuron(key: str):
        return run(lambda idx: neuron_payload(idx, key))

    @app.post("/api/nearest")
    async def api_nearest(image: UploadFile = File(...), box: str | None = Form(None), layer: str = Form("all"),
                          k: int = Form(20), mode: str = Form("embedding"), space: str = Form("prototype"),
                          model: str | None = Form(None)):
        data = await image.read(max_upload + 1)
        if len(data) > max_upload:
            return error(413, f"upload larger than the {max_upload // (1024 * 1024)} MB limit")
        pil = _decode_upload(data)
        parsed = parse_box(box)
        rows = run(lambda idx: idx.nearest(pil, parsed, layer, k, mode, space, model).rows())
        return {"ok": True, "rows": _json(rows)}

    @app.get("/api/export")
    def api_export(q: str, format: str = "csv"):
        import tempfile

        from ..query.export import EXPORT_FORMATS

        if format not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"export.{format}"
            run(lambda idx: idx.export(q, format, out))
            data = out.read_bytes()
        media = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson",
                 "parquet": "application/vnd.apache.parquet", "html": "text/html"}[format]
        return Response(data, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="neurons.{format}"'})

    # ------------------------------------------------------------------ pages
    def page(request: Request, name: str, **context):
        return TEMPLATES.TemplateResponse(request, name, context)

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        models, summary = run(lambda idx: (idx.models().rows(), layer_summary(idx)))
        return page(request, "home.html", models=models, summary=summary)

    @app.get("/layer/{model}/{layer}", response_class=HTMLResponse)
    def layer_page(request: Request, model: str, layer: str, sort: str = "act_max", q: str = ""):
        text = f"model:{model} layer:{layer} {q} sort:-{sort.lstrip('-')} limit:1000"
        rows = run(lambda idx: idx.search(text).rows())
        return page(request, "layer.html", model=model, layer=layer, rows=rows, sort=sort, q=q,
                    sorts=["act_max", "color_index", "class_index", "csi", "auc", "sparsity", "nf_self_response"])

    @app.get("/neuron/{key:path}", response_class=HTMLResponse)
    def neuron_page(request: Request, key: str):
        data = run(lambda idx: neuron_payload(idx, key))
        similar = run(lambda idx: _safe_similar(idx, key))
        return page(request, "neuron.html", n=data, similar=similar)

    @app.get("/search", response_class=HTMLResponse)
    def search_page(request: Request, q: str = ""):
        rows, problem = [], None
        if q:
            try:
                rows = run(lambda idx: idx.search(q).rows())
            except NeuronIndexError as exc:
                problem = exc.message
        return page(request, "search.html", q=q, rows=rows, problem=problem)

    @app.get("/patch", response_class=HTMLResponse)
    def patch_page(request: Request):
        layers = run(lambda idx: idx.layers().rows())
        return page(request, "patch.html", layers=layers)

    return app


def _safe_similar(idx, key):
    try:
        return idx.similar(key, 8).rows()
    except NeuronIndexError:
        return []


def layer_summary(idx) -> list[dict]:
    return idx.summary().rows()


def neuron_payload(idx, key: str) -> dict:
    n = idx.neuron(key)
    classes = idx.query(
        "SELECT c.name, nc.share, nc.rank, nc.in_set, nc.is_leaf FROM neuron_classes nc JOIN classes c ON c.id = nc.class_id "
        "WHERE nc.neuron_id = ? ORDER BY nc.is_leaf DESC, nc.share DESC", [n.id]).rows()
    colours = idx.query("SELECT name, share FROM neuron_colors WHERE neuron_id = ? ORDER BY share DESC", [n.id]).rows()
    props = idx.query("SELECT * FROM neuron_view WHERE id = ?", [n.id]).rows()[0]
    return {"ok": True, "key": n.key, "properties": {k: _plain(v) for k, v in props.items()},
            "classes": _json(classes), "colours": _json(colours), "topk": _json(n.topk().rows())}


def _png(img) -> Response:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=60"})


def _decode_upload(data: bytes):
    from PIL import Image

    from ..data import _to_rgb

    Image.MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard for uploads
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb(im)
    except Image.DecompressionBombError:
        raise UsageError("the image has too many pixels (decompression-bomb guard); send a smaller image") from None
    except (OSError, SyntaxError, ValueError):
        raise UsageError("the upload is not a readable image (PNG, JPEG, ...)") from None


def serve(directory, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise UsageError(f"binding to {host} exposes the index beyond this machine; pass --token SECRET (bearer auth)")
    app = create_app(directory, token)
    print(f"neuronindex gallery on http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
