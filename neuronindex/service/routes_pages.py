"""The web gallery's pages, rendered on the server from the same Python API as the JSON routes
(on a worker thread, through `common.answer`, like them)."""
from __future__ import annotations

import hmac
import math
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from neuronindex.errors import NeuronIndexError, NotFoundError, UsageError, did_you_mean
from neuronindex.query import categories
from neuronindex.report import FIGURE_TITLES, point_colours
from neuronindex.service.auth import COOKIE, session_value
from neuronindex.service.common import answer, neuron_payload, safe_similar
from neuronindex.settings import default

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter()
HTML = "text/html; charset=utf-8"


def num(value) -> str:
    """A number as a page shows it: three significant digits, thousands whole with separators;
    an empty value as a dash, a flag as yes / no."""

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def fixed(value, digits: int = 3, sign: bool = False) -> str:
    """A number with a fixed number of decimals; an empty value (an index built without WordNet,
    an isolated class) as a dash instead of a failed page."""

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    return f"{value:{'+' if sign else ''}.{digits}f}"


TEMPLATES.env.filters["num"] = num
TEMPLATES.env.filters["fixed"] = fixed
# the neuron page's property rows: (column, label in plain words)
NEURON_FIELDS = [
    ("act_max", "highest activation (a_max)"), ("act_mean", "mean activation"), ("act_std", "standard deviation"),
    ("sparsity", "share of map positions not firing"), ("auc", "area under the ranked activation curve"),
    ("color_index", "colour selectivity \u03b1"), ("color_label", f"colour name (when \u03b1 \u2265 {default('color_threshold')})"),
    ("hue", "hue (degrees)"), ("mean_chroma", "mean chroma"), ("color_response", "response to its colour"),
    ("class_index", "class selectivity \u03b3"), ("class_m", "classes covering the top images (M)"),
    ("top_class", "top class"), ("top_class_wnid", "WordNet id"), ("csi", "class selectivity index (CSI)"),
    ("csi_class", "CSI class"), ("nf_self_response", "Neuron Feature self-response"), ("rf_size", "receptive field (px)"),
    ("weak", "weak (barely fires)")]
# what a dead neuron does not have (no crops, so no Neuron Feature and no indexes)
SELECTIVE = {"auc", "color_index", "color_label", "hue", "mean_chroma", "color_response", "class_index",
             "class_m", "top_class", "top_class_wnid", "csi", "csi_class", "nf_self_response", "weak"}
VIEWS = [("crops", "crops + deconvnet"), ("guided", "crops + guided backpropagation"), ("context", "whole images")]


def histogram_bars(h: dict | None, width: int = 360, height: int = 110) -> dict | None:
    """SVG bars of a stored activation histogram (square-root heights, so the tail shows)."""
    if not h or not h["counts"]:
        return None
    counts, edges = h["counts"], h["edges"]
    peak = max(counts) or 1
    w = width / len(counts)
    bars = []
    for i, c in enumerate(counts):
        bh = 0 if c == 0 else max(1.0, height * (c / peak) ** 0.5)
        bars.append({"x": round(i * w, 2), "w": round(max(w - 1, 1), 2), "y": round(height - bh, 2), "h": round(bh, 2),
                     "count": c, "lo": edges[i], "hi": edges[i + 1],
                     "zero": bool(h.get("share_zero")) and edges[i] <= 0 <= edges[i + 1]})
    return {"bars": bars, "width": width, "height": height, "lo": edges[0], "hi": edges[-1], "peak": peak}


def dissection_rows(dissections: list[dict], detectors: list[dict]) -> list[dict]:
    """Network Dissection's figure as rows: per concept set and layer, the interpretable share and,
    per category, the units it labels and its unique detectors (distinct concepts)."""
    out = []
    for d in dissections:
        cats = [r for r in detectors if r["layer"] == d["layer"] and r["source"] == d["source"]]
        out.append({"source": d["source"], "name": d["source"].rstrip("/").rsplit("/", 1)[-1], "layer": d["layer"],
                    "units": d["units"], "interpretable": d["interpretable"],
                    "share": d["interpretable"] / d["units"] if d["units"] else 0.0, "categories": cats,
                    "unique": sum(c["unique_detectors"] for c in cats)})
    return out


def class_bars(means: list[dict], shown: int = 12) -> list[dict]:
    top = [dict(r) for r in means[:shown]]
    scale = max([r["mean_activation"] for r in top if r["mean_activation"] is not None] + [0]) or 1
    for r in top:
        r["width"] = round(100 * max(r["mean_activation"] or 0, 0) / scale, 1)
    return top


# ------------------------------------------------------------------ pages
async def page(request: Request, name: str, make) -> object:
    """Render template `name` with make(index)'s context; image URLs carry the version tag `v`.
    A page that cannot be made (unknown neuron, bad parameter) is an HTML page saying why, with
    the error's status: a browser never shows raw JSON."""

    def render(idx):
        return TEMPLATES.get_template(name).render({"v": idx.version.tag, **make(idx)})
    try:
        return await answer(request, render, media=HTML)
    except NeuronIndexError as exc:
        body = TEMPLATES.get_template("error.html").render({"message": exc.message, "status": exc.http_status})
        return HTMLResponse(body, status_code=exc.http_status)
    except Exception as exc:  # a page that fails to render is still a page, with no stack trace
        import logging

        logging.getLogger("neuronindex.service").exception("page %s failed", name)
        body = TEMPLATES.get_template("error.html").render(
            {"message": f"this page could not be made (internal error: {type(exc).__name__}); see the server log",
             "status": 500})
        return HTMLResponse(body, status_code=500)

@router.get("/login")
async def login_form(request: Request, next: str = "/"):
    """The gallery's login form (only when the service runs with --token)."""

    if request.app.state.token is None:
        return RedirectResponse(_local(next), status_code=303)
    return HTMLResponse(TEMPLATES.get_template("login.html").render({"next": _local(next), "problem": None}))

@router.post("/login")
async def login(request: Request):
    """Check the token (constant time) and set the session cookie: HttpOnly, SameSite=Strict."""

    form = await request.form()
    token, target = str(form.get("token", "")), _local(str(form.get("next", "/")))
    expected = request.app.state.token
    if expected is None:
        return RedirectResponse(target, status_code=303)
    client = request.client.host if request.client else "?"
    if not hmac.compare_digest(token.encode(), expected.encode()):
        request.app.state.throttle.failed(client)
        body = TEMPLATES.get_template("login.html").render({"next": target, "problem": "wrong token; try again"})
        return HTMLResponse(body, status_code=401)
    request.app.state.throttle.succeeded(client)
    out = RedirectResponse(target, status_code=303)
    out.set_cookie(COOKIE, session_value(expected), httponly=True, samesite="strict",
                   secure=request.url.scheme == "https", path="/")
    return out

@router.post("/logout")
async def logout(request: Request):
    """Only by POST from this site's own pages (the guard checks the origin)."""

    out = RedirectResponse("/login", status_code=303)
    out.delete_cookie(COOKIE, path="/")
    return out


def _local(target: str) -> str:
    """Only a path of this site to go back to after logging in (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@router.get("/")
async def home(request: Request):

    return await page(request, "home.html", lambda idx: {"models": idx.models().rows(), "summary": idx.summary().rows(),
                                                         "titles": FIGURE_TITLES})

@router.get("/model/{model}")
async def model_page(request: Request, model: str):
    def make(idx):
        found = [m for m in idx.models().rows() if m["name"] == model]
        if not found:

            raise NotFoundError(f"no model {model!r}{did_you_mean(model, [m['name'] for m in idx.models().rows()])}")

        maps = idx.stored_maps(model).rows()
        return {"m": found[0], "layers": idx.layers(model).rows(),
                "classes": idx.visualizations(model, kind="classes").rows(),
                "mapped": {r["layer"] for r in maps if r["space"] == "neurons"},
                "mapped_crops": {r["layer"] for r in maps if r["space"] == "crops"},
                "has_hierarchy": len(idx.hierarchies(model)) > 0, "trees": idx.trees(model).rows(),
                "dissection": dissection_rows(idx.dissections(model).rows(), idx.detectors(model).rows()),
                "dictionaries": idx.dictionaries(model).rows()}
    return await page(request, "model.html", make)

@router.get("/layer/{model}/{layer}")
async def layer_page(request: Request, model: str, layer: str, sort: str = "act_max", q: str = "", show: str = "nf"):
    def make(idx):
        text = f"model:{model} layer:{layer} {q} sort:-{sort.lstrip('-')} limit:1000"
        problem = None
        try:
            rows = idx.search(text).rows()
        except NeuronIndexError as exc:
            idx.search(f"model:{model} layer:{layer} limit:1")  # an unknown model or layer: the error page
            rows, problem = [], exc.message
        with_viz = idx.visualized(model, layer)  # neuron key -> image width
        maps = {r["space"] for r in idx.stored_maps(model, layer)}
        dissection = [r for r in dissection_rows(idx.dissections(model).rows(), idx.detectors(model).rows())
                      if r["layer"] == layer]
        return {"model": model, "layer": layer, "rows": rows, "sort": sort, "q": q, "show": show, "problem": problem,
                "dissection": dissection,
                "with_viz": with_viz, "maps": maps,
                "directions": idx.search(f"model:{model} layer:{layer} kind:directions sort:channel limit:1000").rows(),
                "sorts": ["act_max", "color_index", "class_index", "csi", "auc", "sparsity", "nf_self_response",
                          "viz_activation_ratio"] + (["iou"] if dissection else [])}
    return await page(request, "layer.html", make)

@router.get("/neuron/{key:path}")
async def neuron_page(request: Request, key: str, view: str = "crops", concept: str | None = None):
    if view not in dict(VIEWS):

        raise UsageError(f"unknown view {view!r}; use crops, guided or context")

    def make(idx):
        n = neuron_payload(idx, key)
        others = [m["name"] for m in idx.models().rows() if m["name"] != n["properties"]["model"]]
        rule = "guided" if view == "guided" else "deconvnet"
        return {"n": n, "similar": safe_similar(idx, key), "fields": NEURON_FIELDS, "selective": SELECTIVE,
                "color_threshold": request.app.state.settings.color_threshold,
                "histogram": n["histogram"], "hist": histogram_bars(n["histogram"]),
                "class_bars": class_bars(n["class_means"]), "views": VIEWS, "view": view, "rule": rule,
                "rule_label": "guided backpropagation" if rule == "guided" else "deconvnet",
                "deconv_n": 9, "compare": others[0] if others else None,
                "shown_concept": concept or max(n["concepts"], key=lambda c: c["iou"], default={}).get("concept")}
    return await page(request, "neuron.html", make)

@router.get("/categories/{model}")
async def categories_page(request: Request, model: str, layer: str | None = None, pooling: str | None = None):
    def make(idx):
        r = idx.categories(model, layer, pooling)
        near = idx.nearest_class_names(model, r.meta["layer"], r.meta["pooling"])
        stored = idx.hierarchies(model).rows()
        nodes = r.meta["nodes"]
        root = next(n["node"] for n in nodes if n["parent"] is None)
        sides = [[c["class"] for c in categories.classes_under(nodes, n["node"])] for n in nodes if n["parent"] == root]
        return {"model": model, "h": r.meta, "classes": r.rows(), "near": near, "stored": stored, "sides": sides,
                "trees": idx.trees(model).rows()}
    return await page(request, "categories.html", make)

@router.get("/tree/{model}/{layer}/{class_name}")
async def tree_page(request: Request, model: str, layer: str, class_name: str, pooling: str = "max"):
    def make(idx):
        r = idx.prediction_tree(class_name, layer, model, pooling)
        return {"model": model, "t": r.meta, **tree_layout(r.rows(), r.meta["root"])}
    return await page(request, "tree.html", make)

@router.get("/map/{model}/{layer}")
async def map_page(request: Request, model: str, layer: str, space: str = "neurons", color: str = "colour"):
    def make(idx):
        m = idx.map(layer, space, model)
        rows = m.rows()
        colours, legend = point_colours(rows, space, color)
        for r, c in zip(rows, colours):
            r["colour"] = c
        return {"model": model, "layer": m.meta["layer"], "m": m.meta, "rows": rows, "legend": legend,
                "space": space, "color": color, "cells": atlas(rows) if space == "crops" else []}
    return await page(request, "map.html", make)

@router.get("/compare")
async def compare_page(request: Request, a: str | None = None, b: str | None = None, neuron: str | None = None):
    def make(idx):
        names = [m["name"] for m in idx.models().rows()]
        first, second = a or (names[0] if names else None), b or (names[1] if len(names) > 1 else names[0] if names else None)
        out = {"names": names, "a": first, "b": second, "neuron": neuron, "problem": None, "rows": [], "sim": None,
               "matches": None}
        if first is None:
            return out
        try:
            r = idx.compare(first, second)
            out.update(rows=r.rows(), sim=r.meta["similarity"], problem=r.meta["problem"])
            if out["sim"]:
                flat = [v for line in out["sim"]["matrix"] for v in line if v is not None]
                out["sim_range"] = (min(flat), max(flat)) if flat else (0, 1)
            if neuron:
                own = idx.neuron(neuron).row["model"]
                other = second if own == first else first
                m = idx.matches(neuron, other, 12)
                out["matches"] = {"rows": m.rows(), **m.meta}
        except NeuronIndexError as exc:
            out["problem"] = exc.message
        return out
    return await page(request, "compare.html", make)

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


def tree_layout(nodes: list[dict], root: int, dx: int = 30, dy: int = 40) -> dict:
    """Positions of a prediction tree for the page: leaves (images) left to right in depth-first
    order, each merge above its children (its level: one more than its higher child), the root on top."""
    children: dict[int, list[int]] = {}
    for n in nodes:
        if n["parent"] is not None:
            children.setdefault(n["parent"], []).append(n["node"])
    by_id = {n["node"]: dict(n) for n in nodes}
    order, level = [], {}
    stack = [(root, False)]
    while stack:  # iterative post-order: deep chains would overflow recursion
        node, seen = stack.pop()
        kids = children.get(node, [])
        if seen or not kids:
            if kids:
                level[node] = 1 + max(level[k] for k in kids)
                by_id[node]["x"] = sum(by_id[k]["x"] for k in kids) / len(kids)
            else:
                level[node] = 0
                by_id[node]["x"] = 20 + dx * len(order)
                order.append(node)
            continue
        stack.append((node, True))
        stack += [(k, False) for k in reversed(kids)]
    top = max(level.values())
    for node, lv in level.items():
        by_id[node]["y"] = 30 + dy * (top - lv)
    edges = [(by_id[p], by_id[c]) for p, kids in children.items() for c in kids]
    merges = sorted((n for n in by_id.values() if n.get("critical")), key=lambda n: n["y"])
    return {"nodes": list(by_id.values()), "edges": edges, "width": 40 + dx * len(order),
            "height": 60 + dy * top, "leaves": len(order), "levels": top, "near_root": merges[:12]}


def atlas(rows: list[dict], grid: int = 24) -> list[dict]:
    """Activation-Atlas cells of a crops map: the map cut into grid x grid cells; each non-empty cell
    shows the crop nearest its centre and counts its crops."""
    cells: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        key = (min(grid - 1, int(r["x"] * grid)), min(grid - 1, int(r["y"] * grid)))
        cells.setdefault(key, []).append(r)
    out = []
    for (i, j), members in sorted(cells.items()):
        cx, cy = (i + 0.5) / grid, (j + 0.5) / grid
        best = min(members, key=lambda r: (r["x"] - cx) ** 2 + (r["y"] - cy) ** 2)
        out.append({"x": i / grid, "y": j / grid, "size": 1 / grid, "n": len(members), **best})
    return out
