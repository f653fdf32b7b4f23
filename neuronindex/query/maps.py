"""A stored representation map read back: its points joined to their neurons (and the crops' images),
and whether the embeddings changed since it was made."""
from __future__ import annotations

import json

from neuronindex.errors import LayerError, NotFoundError, UsageError
from neuronindex.nets.layers import stored_names
from neuronindex.store.vectors import fingerprint, rows

SPACES = {"neurons": "prototype", "crops": "patch"}


def points(idx, model: str, layer: str, space: str = "neurons") -> dict:
    """A stored map with its points joined to their neurons (and crops' images): the gallery's and
    the API's map. Says whether it is stale."""

    if space not in SPACES:
        raise UsageError(f"unknown map space {space!r}; use neurons or crops")

    lay = [r for r in idx.layer_list(model) if layer in stored_names(r)]
    if not lay:

        raise LayerError(f"model {model} has no stored layer {layer!r}")
    lay = lay[0]
    found = idx.con.execute("SELECT id, method, params, seed, fingerprint, n_points, seconds, created FROM maps "
                            "WHERE layer_id = ? AND space = ?", [lay["id"], space]).fetchone()
    if found is None:
        raise NotFoundError(f"no {space} map of {model} {lay['name']} yet; make it with "
                            f"`neuronindex map INDEX --layers {lay['name']} --space {space}`")
    mid, method, params, seed, fp, n, seconds, created = found
    ids, vectors = rows(idx.con, SPACES[space], lay["id"])
    if space == "neurons":
        sql = ("SELECT p.x, p.y, n.key, n.color_label, n.color_name, n.hue_name, n.color_index, n.top_class, n.dead, n.kind "
               "FROM map_points p JOIN neuron_search n ON n.id = p.neuron_id WHERE p.map_id = ? ORDER BY p.neuron_id")
    else:
        sql = ("SELECT p.x, p.y, n.key, p.rank, c.name AS image_class, n.color_label, n.color_name, n.top_class, t.image_id "
               "FROM map_points p JOIN neuron_search n ON n.id = p.neuron_id "
               "JOIN topk t ON t.neuron_id = p.neuron_id AND t.rank = p.rank "
               "JOIN images i ON i.id = t.image_id LEFT JOIN classes c ON c.id = i.class_id "
               "WHERE p.map_id = ? ORDER BY p.neuron_id, p.rank")
    cur = idx.con.execute(sql, [mid])
    cols = [d[0] for d in cur.description]
    return {"model": model, "layer": lay["name"], "space": space, "method": method, "params": json.loads(params),
            "seed": seed, "points": n, "seconds": seconds, "created": created,
            "stale": fingerprint(ids, vectors) != fp, "columns": cols, "rows": cur.fetchall()}
