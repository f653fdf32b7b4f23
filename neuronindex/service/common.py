"""What the service's routers share: the live index, the JSON shapes, payloads and uploads."""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .. import store
from ..api import Index
from ..errors import NeuronIndexError, UsageError
from ..formats import _plain


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


def json_rows(rows):
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message, "status": status}, status_code=status)


def run(request: Request, fn):
    """Call fn(index) on the app's live index, one query at a time."""
    live: LiveIndex = request.app.state.live
    with live.lock:
        return fn(live.get())


def safe_similar(idx, key):
    try:
        return idx.similar(key, 8).rows()
    except NeuronIndexError:
        return []


def neuron_payload(idx, key: str) -> dict:
    n = idx.neuron(key)
    classes = idx.query(
        "SELECT c.name, nc.share, nc.rank, nc.in_set, nc.is_leaf FROM neuron_classes nc JOIN classes c ON c.id = nc.class_id "
        "WHERE nc.neuron_id = ? ORDER BY nc.is_leaf DESC, nc.share DESC", [n.id]).rows()
    colours = idx.query("SELECT name, share FROM neuron_colors WHERE neuron_id = ? ORDER BY share DESC", [n.id]).rows()
    props = idx.query("SELECT v.*, l.pre_activation FROM neuron_view v JOIN neurons n ON n.id = v.id "
                      "JOIN layers l ON l.id = n.layer_id WHERE v.id = ?", [n.id]).rows()[0]
    return {"ok": True, "key": n.key, "properties": {k: _plain(v) for k, v in props.items()},
            "classes": json_rows(classes), "colours": json_rows(colours), "topk": json_rows(n.topk().rows()),
            "bottomk": json_rows(n.bottomk().rows()), "direction": direction_payload(idx, n)}


def direction_payload(idx, n) -> dict | None:
    """A direction's figures and its strongest channels (by |weight|, linked to their neurons)."""
    d = n.direction()
    if d is None:
        return None
    import numpy as np

    u = np.asarray(d.pop("vector"), dtype=float)
    d.pop("weights")
    order = np.argsort(-np.abs(u))[:12]
    prefix = n.key.rsplit("/", 1)[0]
    d["channels"] = [{"key": f"{prefix}/{int(c)}", "channel": int(c), "weight": float(u[c])} for c in order]
    return {k: _plain(v) for k, v in d.items()}


def png(img) -> Response:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=60"})


def decode_upload(data: bytes):
    from PIL import Image

    from ..data import _to_rgb

    from ..data import check_pixels
    from ..errors import DataError

    Image.MAX_IMAGE_PIXELS = None  # check_pixels decides, from the header, before anything is decoded
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(im, "the upload")
            im.load()
            return _to_rgb(im)
    except DataError as exc:
        raise UsageError(exc.message) from None
    except (OSError, SyntaxError, ValueError):
        raise UsageError("the upload is not a readable image (PNG, JPEG, ...)") from None


