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
        from .. import hierarchy

        maps = idx.query("SELECT l.name, p.space FROM maps p JOIN layers l ON l.id = p.layer_id JOIN models m ON "
                         "m.id = p.model_id WHERE m.name = ?", [model]).rows()
        has = idx.query("SELECT count(*) AS n FROM hierarchies h JOIN models m ON m.id = h.model_id WHERE m.name = ?",
                        [model]).rows()[0]["n"]
        return {"m": found[0], "layers": idx.layers(model).rows(),
                "classes": idx.visualizations(model, kind="classes").rows(),
                "mapped": {r["name"] for r in maps if r["space"] == "neurons"},
                "mapped_crops": {r["name"] for r in maps if r["space"] == "crops"},
                "has_hierarchy": has > 0, "trees": hierarchy.trees(idx.con, model)}
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
        maps = {r["space"] for r in idx.query(
            "SELECT p.space FROM maps p JOIN layers l ON l.id = p.layer_id JOIN models m ON m.id = p.model_id "
            "WHERE m.name = ? AND l.name = ?", [model, layer]).rows()}
        return {"model": model, "layer": layer, "rows": rows, "sort": sort, "q": q, "show": show,
                "with_viz": with_viz, "maps": maps,
                "directions": idx.search(f"model:{model} layer:{layer} kind:directions sort:channel limit:1000").rows(),
                "sorts": ["act_max", "color_index", "class_index", "csi", "auc", "sparsity", "nf_self_response",
                          "viz_activation_ratio"]}
    return await page(request, "layer.html", make)

@router.get("/neuron/{key:path}")
async def neuron_page(request: Request, key: str):
    return await page(request, "neuron.html", lambda idx: {"n": neuron_payload(idx, key), "similar": safe_similar(idx, key)})

@router.get("/categories/{model}")
async def categories_page(request: Request, model: str, layer: str | None = None, pooling: str | None = None):
    def make(idx):
        from .. import hierarchy

        r = idx.categories(model, layer, pooling)
        near = {row["class"]: row["near"] for row in idx.query(
            "SELECT a.name AS class, list(b.name || ' ' || printf('%.3f', d.distance) ORDER BY d.distance)[1:3] AS near "
            "FROM class_distances d JOIN classes a ON a.id = d.class_a JOIN classes b ON b.id = d.class_b "
            "JOIN hierarchies h ON h.id = d.hierarchy_id JOIN layers l ON l.id = h.layer_id JOIN models m ON "
            "m.id = h.model_id WHERE m.name = ? AND l.name = ? AND h.pooling = ? GROUP BY a.name",
            [model, r.meta["layer"], r.meta["pooling"]]).rows()}
        stored = idx.query("SELECT l.name AS layer, h.pooling FROM hierarchies h JOIN layers l ON l.id = h.layer_id "
                           "JOIN models m ON m.id = h.model_id WHERE m.name = ? ORDER BY l.position, h.pooling",
                           [model]).rows()
        nodes = r.meta["nodes"]
        root = next(n["node"] for n in nodes if n["parent"] is None)
        sides = [[c["class"] for c in hierarchy.classes_under(nodes, n["node"])] for n in nodes if n["parent"] == root]
        return {"model": model, "h": r.meta, "classes": r.rows(), "near": near, "stored": stored, "sides": sides,
                "trees": hierarchy.trees(idx.con, model)}
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
        from ..report import point_colours

        m = idx.map(layer, space, model)
        rows = m.rows()
        colours, legend = point_colours(rows, space, color)
        for r, c in zip(rows, colours):
            r["colour"] = c
        return {"model": model, "layer": m.meta["layer"], "m": m.meta, "rows": rows, "legend": legend,
                "space": space, "color": color, "cells": atlas(rows) if space == "crops" else []}
    return await page(request, "map.html", make)

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
