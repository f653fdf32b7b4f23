"""The web gallery's pages, rendered on the server from the same Python API as the JSON routes
(on a worker thread, through `common.answer`, like them)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates

from ..errors import NeuronIndexError
from .common import answer, neuron_payload, safe_similar

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter()
HTML = "text/html; charset=utf-8"


# ------------------------------------------------------------------ pages
async def page(request: Request, name: str, make) -> object:
    """Render template `name` with make(index)'s context; image URLs carry the version tag `v`."""
    def render(idx):
        return TEMPLATES.get_template(name).render({"v": idx.version.tag, **make(idx)})
    return await answer(request, render, media=HTML)

@router.get("/")
async def home(request: Request):
    return await page(request, "home.html", lambda idx: {"models": idx.models().rows(), "summary": idx.summary().rows()})

@router.get("/model/{model}")
async def model_page(request: Request, model: str):
    def make(idx):
        found = [m for m in idx.models().rows() if m["name"] == model]
        if not found:
            from ..errors import NotFoundError, did_you_mean

            raise NotFoundError(f"no model {model!r}{did_you_mean(model, [m['name'] for m in idx.models().rows()])}")
        return {"m": found[0], "layers": idx.layers(model).rows(),
                "classes": idx.visualizations(model, kind="classes").rows()}
    return await page(request, "model.html", make)

@router.get("/layer/{model}/{layer}")
async def layer_page(request: Request, model: str, layer: str, sort: str = "act_max", q: str = "", show: str = "nf"):
    def make(idx):
        text = f"model:{model} layer:{layer} {q} sort:-{sort.lstrip('-')} limit:1000"
        rows = idx.search(text).rows()
        with_viz = {r["target"]: r["width"] for r in idx.query(  # neuron key -> image width
            "SELECT target, max(width) AS width FROM visualizations v JOIN neurons n ON n.id = v.neuron_id "
            "JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = l.model_id WHERE m.name = ? AND l.name = ? "
            "GROUP BY target", [model, layer]).rows()}
        return {"model": model, "layer": layer, "rows": rows, "sort": sort, "q": q, "show": show,
                "with_viz": with_viz,
                "directions": idx.search(f"model:{model} layer:{layer} kind:directions sort:channel limit:1000").rows(),
                "sorts": ["act_max", "color_index", "class_index", "csi", "auc", "sparsity", "nf_self_response",
                          "viz_activation_ratio"]}
    return await page(request, "layer.html", make)

@router.get("/neuron/{key:path}")
async def neuron_page(request: Request, key: str):
    return await page(request, "neuron.html", lambda idx: {"n": neuron_payload(idx, key), "similar": safe_similar(idx, key)})

@router.get("/search")
async def search_page(request: Request, q: str = ""):
    def make(idx):
        rows, problem = [], None
        if q:
            try:
                rows = idx.search(q).rows()
            except NeuronIndexError as exc:
                problem = exc.message
        return {"q": q, "rows": rows, "problem": problem}
    return await page(request, "search.html", make)

@router.get("/patch")
async def patch_page(request: Request):
    return await page(request, "patch.html", lambda idx: {"layers": idx.layers().rows()})
