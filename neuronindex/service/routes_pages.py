"""The web gallery's pages, rendered on the server from the same Python API as the JSON routes."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..errors import NeuronIndexError
from .common import neuron_payload, run, safe_similar

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter()


# ------------------------------------------------------------------ pages
def page(request: Request, name: str, **context):
    return TEMPLATES.TemplateResponse(request, name, context)

@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    models, summary = run(request, lambda idx: (idx.models().rows(), idx.summary().rows()))
    return page(request, "home.html", models=models, summary=summary)

@router.get("/layer/{model}/{layer}", response_class=HTMLResponse)
def layer_page(request: Request, model: str, layer: str, sort: str = "act_max", q: str = ""):
    text = f"model:{model} layer:{layer} {q} sort:-{sort.lstrip('-')} limit:1000"
    rows = run(request, lambda idx: idx.search(text).rows())
    directions = run(request, lambda idx: idx.search(f"model:{model} layer:{layer} kind:directions sort:channel limit:1000").rows())
    return page(request, "layer.html", model=model, layer=layer, rows=rows, sort=sort, q=q, directions=directions,
                sorts=["act_max", "color_index", "class_index", "csi", "auc", "sparsity", "nf_self_response"])

@router.get("/neuron/{key:path}", response_class=HTMLResponse)
def neuron_page(request: Request, key: str):
    data = run(request, lambda idx: neuron_payload(idx, key))
    similar = run(request, lambda idx: safe_similar(idx, key))
    return page(request, "neuron.html", n=data, similar=similar)

@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, q: str = ""):
    rows, problem = [], None
    if q:
        try:
            rows = run(request, lambda idx: idx.search(q).rows())
        except NeuronIndexError as exc:
            problem = exc.message
    return page(request, "search.html", q=q, rows=rows, problem=problem)

@router.get("/patch", response_class=HTMLResponse)
def patch_page(request: Request):
    layers = run(request, lambda idx: idx.layers().rows())
    return page(request, "patch.html", layers=layers)
