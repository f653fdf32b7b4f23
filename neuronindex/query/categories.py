"""Stored category hierarchies and prediction trees, read (Dai 2020): the layer they were built at,
its class means, the classes, nodes, nearest classes and subtrees of a hierarchy, a tree's nodes."""
from __future__ import annotations

import numpy as np

from neuronindex.errors import LayerError, NotFoundError, UsageError, did_you_mean
from neuronindex.nets.layers import stored_names
from neuronindex.science.hierarchy import POOLINGS


def stored_layer(con, model: str | None, layer: str | None):
    """(model id, model name, layer row dict) of a stored layer; the deepest without `layer`."""
    models = con.execute("SELECT id, name FROM models ORDER BY id").fetchall()
    if not models:
        raise NotFoundError("this index holds no model yet; ingest one first")
    if model is None:
        if len(models) > 1:
            raise UsageError(f"this index holds {len(models)} models; name one with --model "
                             f"({', '.join(m[1] for m in models)})")
        model_id, model = models[0]
    else:
        found = [m for m in models if m[1] == model]
        if not found:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, [m[1] for m in models])}")
        model_id = found[0][0]
    cols = ["id", "name", "node", "aliases", "channels", "position"]
    rows = [dict(zip(cols, r)) for r in con.execute(
        f"SELECT {', '.join(cols)} FROM layers WHERE model_id = ? ORDER BY position", [model_id]).fetchall()]
    if not rows:
        raise NotFoundError(f"model {model} has no stored layers")
    if layer is None:
        return model_id, model, rows[-1]

    found = [r for r in rows if layer in stored_names(r)]
    if not found:

        raise LayerError(f"model {model} has no stored layer {layer!r}{did_you_mean(layer, [r['name'] for r in rows])}; "
                         f"its layers: {', '.join(r['name'] for r in rows)}")
    return model_id, model, found[0]


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}; use max (spatial maximum) or mean (spatial mean)")
    return pooling


def class_vectors(con, layer_id: int, pooling: str = "max") -> tuple[list[int], np.ndarray]:
    """(class ids, (classes, channels) class means) of a layer's neurons (channels, not directions)."""
    column = "mean_activation" if check_pooling(pooling) == "max" else "mean_spatial"
    rows = con.execute(
        f"SELECT cm.class_id, n.channel, cm.{column} FROM class_means cm JOIN neurons n ON n.id = cm.neuron_id "
        "WHERE n.layer_id = ? AND n.kind = 'channel' AND coalesce(cm.n_images, 0) > 0 ORDER BY cm.class_id, n.channel",
        [layer_id]).fetchall()
    if not rows:
        return [], np.zeros((0, 0))
    classes = sorted({r[0] for r in rows})
    channels = max(r[1] for r in rows) + 1
    out = np.full((len(classes), channels), np.nan)
    where = {c: i for i, c in enumerate(classes)}
    for cid, ch, v in rows:
        out[where[cid], ch] = np.nan if v is None else v
    if pooling == "mean" and np.isnan(out).all():
        raise UsageError("this index has no spatial means; use --pooling max, or re-ingest with --spatial-means")
    return classes, np.nan_to_num(out)


def class_chains(con, class_ids: list[int]) -> list[list[int]] | None:
    """Each class's chain of ancestors in the classes table (self first), for classes with a WordNet
    id; None unless every class has one (an ImageNet-style dataset)."""
    rows = con.execute("SELECT id, parent_id, wnid FROM classes").fetchall()
    parent = {r[0]: r[1] for r in rows}
    wnid = {r[0]: r[2] for r in rows}
    if not class_ids or any(not wnid.get(c) for c in class_ids):
        return None
    chains = []
    for c in class_ids:
        chain, seen = [c], {c}
        while parent.get(chain[-1]) is not None and parent[chain[-1]] not in seen:
            chain.append(parent[chain[-1]])
            seen.add(chain[-1])
        chains.append(chain)
    return chains


def resolve_pooling(con, layer_id: int, pooling: str | None) -> str:
    """None (auto): mean when the index has spatial means (the global average pool a classifier
    reads, closest to the seed's vectorised last conv layer), else max."""
    if pooling is not None:
        return check_pooling(pooling)
    has_mean = con.execute("SELECT count(*) FROM class_means cm JOIN neurons n ON n.id = cm.neuron_id "
                           "WHERE n.layer_id = ? AND cm.mean_spatial IS NOT NULL AND NOT isnan(cm.mean_spatial)",
                           [layer_id]).fetchone()[0]
    return "mean" if has_mean else "max"


def class_images(con, model_id: int, name: str) -> tuple[int, list[tuple[int, str, str]]]:
    """(class id, [(image id, path, source)]) of a class of the model's datasets, a leaf or an inner
    class (then the images of every class under it); by name or WordNet id."""
    rows = con.execute(
        "SELECT c.id, c.name, c.wnid FROM classes c WHERE c.dataset_id IN "
        "(SELECT dataset_id FROM ingests WHERE model_id = ?) ORDER BY c.id", [model_id]).fetchall()
    found = [r for r in rows if name in (r[1], r[2])]
    if not found:
        raise NotFoundError(f"no class {name!r} in this model's images{did_you_mean(name, [r[1] for r in rows])}")
    cid = found[0][0]
    images = con.execute(
        "WITH RECURSIVE under(id) AS (SELECT ?::INTEGER UNION SELECT c.id FROM classes c JOIN under u ON c.parent_id = u.id) "
        "SELECT i.id, i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id "
        "WHERE i.class_id IN (SELECT id FROM under) AND i.problem IS NULL ORDER BY i.id", [cid]).fetchall()
    return cid, images


def _rows(con, sql: str, params) -> list[dict]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def stored(con, model: str | None = None, layer: str | None = None, pooling: str | None = None) -> dict:
    """The stored hierarchy row of a model (at `layer`, else the deepest layer that has one)."""
    model_id, model, lay = stored_layer(con, model, layer)
    if pooling is not None:
        check_pooling(pooling)
    found = _rows(con, "SELECT h.*, l.name AS layer, l.position, c.name AS centre, b.name AS hub FROM hierarchies h "
                       "JOIN layers l ON l.id = h.layer_id LEFT JOIN classes c ON c.id = h.centre_class_id "
                       "LEFT JOIN classes b ON b.id = h.hub_class_id WHERE h.model_id = ? "
                       + ("AND h.layer_id = ? " if layer is not None else "")
                       + ("AND h.pooling = ? " if pooling is not None else "")
                       + "ORDER BY l.position DESC, h.id DESC",
                  [model_id] + ([lay["id"]] if layer is not None else []) + ([pooling] if pooling else []))
    if found:  # the deepest layer; of its poolings, the one ingest chooses (mean when stored)
        found = [r for r in found if r["layer_id"] == found[0]["layer_id"]]
        auto = resolve_pooling(con, found[0]["layer_id"], None)
        found.sort(key=lambda r: r["pooling"] != auto)
    if not found:
        at = f" at {lay['name']}" if layer is not None else ""
        raise NotFoundError(f"no category hierarchy of {model}{at} yet; build it with "
                            f"`neuronindex categories INDEX --model {model} --layer {lay['name']}`")
    return {**found[0], "model": model}


def classes_of(con, h: dict) -> list[dict]:
    """The leaves of a stored hierarchy in dendrogram order, with their MST degree and eccentricity."""
    return _rows(con, "SELECT c.name AS class, c.wnid, n.node, n.leaf_order, n.mst_degree, n.eccentricity, "
                      "(SELECT count(*) FROM images i WHERE i.class_id = c.id) AS images "
                      "FROM hierarchy_nodes n JOIN classes c ON c.id = n.class_id WHERE n.hierarchy_id = ? "
                      "ORDER BY n.leaf_order", [h["id"]])


def nodes_of(con, h: dict) -> list[dict]:
    return _rows(con, "SELECT n.node, n.parent, c.name AS class, n.height, n.size, n.leaf_order FROM hierarchy_nodes n "
                      "LEFT JOIN classes c ON c.id = n.class_id WHERE n.hierarchy_id = ? ORDER BY n.node", [h["id"]])


def _leaf(con, h: dict, name: str) -> dict:
    leaves = classes_of(con, h)
    found = [r for r in leaves if name in (r["class"], r["wnid"])]
    if not found:
        raise NotFoundError(f"no class {name!r} in the hierarchy of {h['model']} {h['layer']}"
                            f"{did_you_mean(name, [r['class'] for r in leaves])}")
    return found[0]


def nearest_classes(con, h: dict, name: str, k: int = 5) -> list[dict]:
    """The k classes nearest to a class by category distance, with merge height and MST edge."""
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a whole number >= 1, not {k!r}")
    leaf = _leaf(con, h, name)
    return _rows(con, "SELECT b.name AS class, d.distance, d.cophenetic, d.in_mst FROM class_distances d "
                      "JOIN classes a ON a.id = d.class_a JOIN classes b ON b.id = d.class_b "
                      "WHERE d.hierarchy_id = ? AND a.name = ? ORDER BY d.distance, b.name LIMIT ?",
                 [h["id"], leaf["class"], k])


def subtree(con, h: dict, name: str, up: int = 1) -> tuple[dict, list[dict]]:
    """(the node `up` merges above a class, the classes under it in dendrogram order)."""
    if not isinstance(up, int) or up < 1:
        raise UsageError(f"up must be a whole number >= 1, not {up!r}")
    leaf = _leaf(con, h, name)
    nodes = {r["node"]: r for r in nodes_of(con, h)}
    node = leaf["node"]
    for _ in range(up):
        if nodes[node]["parent"] is None:
            break
        node = nodes[node]["parent"]
    return nodes[node], classes_under(list(nodes.values()), node)


def classes_under(nodes: list[dict], node: int) -> list[dict]:
    """The leaves (classes) under a node of a stored hierarchy, in dendrogram order."""
    children: dict[int, list[int]] = {}
    for r in nodes:
        if r["parent"] is not None:
            children.setdefault(r["parent"], []).append(r["node"])
    by_id = {r["node"]: r for r in nodes}
    stack, under = [node], []
    while stack:
        n = stack.pop()
        if by_id[n]["class"] is not None:
            under.append(by_id[n])
        stack += children.get(n, [])
    return sorted(under, key=lambda r: r["leaf_order"])


def stored_tree(con, class_name: str, layer: str | None = None, model: str | None = None,
                pooling: str = "max") -> tuple[dict, list[dict]]:
    """(the tree's row, its nodes with the critical filters' keys and the leaves' image paths)."""
    model_id, model, lay = stored_layer(con, model, layer)
    found = _rows(con, "SELECT t.*, c.name AS class, l.name AS layer FROM prediction_trees t "
                       "JOIN classes c ON c.id = t.class_id JOIN layers l ON l.id = t.layer_id "
                       "WHERE t.model_id = ? AND t.layer_id = ? AND (c.name = ? OR c.wnid = ?) AND t.pooling = ?",
                  [model_id, lay["id"], class_name, class_name, pooling])
    if not found:
        raise NotFoundError(f"no prediction tree of class {class_name!r} at {model} {lay['name']} yet; build it with "
                            f"`neuronindex tree INDEX --class {class_name} --layer {lay['name']}`")
    t = {**found[0], "model": model}
    nodes = _rows(con, "SELECT p.node, p.parent, p.image_id, i.path AS image, p.critical_channel, n.key AS critical, "
                       "p.distance, p.change, p.n_reachable FROM prediction_tree_nodes p "
                       "LEFT JOIN neurons n ON n.id = p.critical_neuron_id LEFT JOIN images i ON i.id = p.image_id "
                       "WHERE p.tree_id = ? ORDER BY p.node", [t["id"]])
    return t, nodes


def trees(con, model: str | None = None) -> list[dict]:
    """Every stored prediction tree (for the gallery's model page)."""
    return _rows(con, "SELECT m.name AS model, l.name AS layer, c.name AS class, t.pooling, t.n_images, t.n_filters, "
                      "t.created FROM prediction_trees t JOIN models m ON m.id = t.model_id JOIN layers l ON "
                      "l.id = t.layer_id JOIN classes c ON c.id = t.class_id "
                      + ("WHERE m.name = ? " if model else "") + "ORDER BY m.name, l.position, c.name",
                 [model] if model else [])
