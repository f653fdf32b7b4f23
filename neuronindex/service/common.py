"""What the service's routers share: the live index, worker pools, cached answers, payloads, uploads.

Every request runs its index work on a worker thread with its own DuckDB cursor on the version of
the index that was published when it arrived (`LiveIndex`), in one of two bounded pools (`Pool`):
queries, and heavy work (model forwards, image decodes, figure rendering). A pool with every
thread busy and its queue full answers 503 at once. Answers of GET routes are cached per index
version and carry that version as their ETag: the index is immutable between publishes, so a
cached answer is exact, a browser revalidates with a 304, and a URL that names the version
(`?v=TAG`, as the gallery's pages write them) is cached for good.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from neuronindex.api import Index
from neuronindex.cache import LRU
from neuronindex.data import check_pixels, to_rgb
from neuronindex.errors import (
    BusyError,
    DataError,
    IndexNotFoundError,
    NeuronIndexError,
    QueryTimeout,
    UsageError,
)
from neuronindex.formats import plain
from neuronindex.settings import Settings
from neuronindex.store.directory import INDEX_FILE, IndexDirectory


class Version:
    """One published index file, opened once; the requests that arrived while it was current
    share it, each on its own cursor. Closed when it has been replaced and its last request ends."""

    def __init__(self, directory: Path, stamp: tuple, cache_mb: int, limits: dict, settings: Settings):
        self.index = Index(directory, settings=settings, **limits)
        self.stamp = stamp
        self.tag = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
        self.answers = LRU(cache_mb * 1024 * 1024)
        self.inflight: dict = {}  # key -> future of the answer being computed (the event loop's thread only)
        self.users = 0
        self.retired = False

    def close(self) -> None:
        self.index.close()


class LiveIndex:
    """The published index, reopened when an ingest renames a new index.duckdb into place.

    A request takes the current version (`acquire`) and gives it back (`release`); a replaced
    version stays open for the requests still using it and closes after the last one, so a
    publish never fails a request in flight and no request waits for another.
    """

    def __init__(self, directory: str | os.PathLike, cache_mb: int, memory_limit: str | None = None,
                 temp_limit: str | None = None, duckdb_threads: int = 1, settings: Settings | None = None):
        self.directory = Path(directory)
        self.settings = settings or Settings()
        self.cache_mb = cache_mb
        self.limits = {"memory_limit": memory_limit, "temp_limit": temp_limit, "threads": duckdb_threads}
        self._lock = threading.Lock()
        self._current: Version | None = None
        self.release(self.acquire())  # fail at start-up, not at the first request, on a missing or old index

    def _stamp(self) -> tuple:
        try:
            st = os.stat(IndexDirectory(self.directory).database)
        except FileNotFoundError:

            raise IndexNotFoundError(f"the index at {self.directory} is gone ({INDEX_FILE} is missing)") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def acquire(self) -> Version:
        stamp = self._stamp()
        with self._lock:
            current = self._current
            if current is None or current.stamp != stamp:
                fresh = Version(self.directory, stamp, self.cache_mb, self.limits, self.settings)
                if current is not None:
                    current.retired = True
                    if current.users == 0:
                        current.close()
                self._current = current = fresh
            current.users += 1
            return current

    def release(self, version: Version) -> None:
        with self._lock:
            version.users -= 1
            if version.retired and version.users == 0:
                version.close()

    @staticmethod
    @contextlib.contextmanager
    def use(version: Version):
        """A view of an acquired version's index: its own cursor, for one request's thread."""
        view = version.index.view()
        view.version = version  # routes that cache more than their own answer, or name the version
        try:
            yield view
        finally:
            view.close()


class Pool:
    """Up to `threads` calls at once on worker threads, up to `queue` more waiting; beyond that a
    BusyError (HTTP 503 with Retry-After) without waiting. Counted on the event loop's thread."""

    def __init__(self, name: str, threads: int, queue: int):
        self.name, self.threads, self.queue = name, threads, queue
        self.pending = 0
        self._limiters: dict = {}  # per event loop (one in a server; tests may run several)

    async def run(self, fn: Callable):
        if self.pending >= self.threads + self.queue:
            raise BusyError(f"the service is busy ({self.pending} {self.name} requests in progress or waiting); "
                            "retry in a moment")
        loop = id(asyncio.get_running_loop())
        if loop not in self._limiters:
            self._limiters[loop] = anyio.CapacityLimiter(self.threads)
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiters[loop])
        finally:
            self.pending -= 1


JSON = "application/json"


def encode_json(value, deadline: float | None = None) -> bytes:
    """JSON bytes of a payload (NaN as null); with a deadline, a long list of rows is encoded in
    slices and stops with a QueryTimeout once the deadline has passed."""
    def dumps(v):
        return json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=plain)

    if deadline is None or not isinstance(value, dict) or not isinstance(value.get("rows"), list):
        return dumps(value).encode()
    rows = value["rows"]
    head = dumps({k: v for k, v in value.items() if k != "rows"})
    parts = []
    for start in range(0, len(rows), 256):
        if time.perf_counter() > deadline:
            raise QueryTimeout("the answer took longer than the SQL time limit to serialise; select fewer rows or columns")
        parts.append(dumps(json_rows(rows[start:start + 256]))[1:-1])
    return (head[:-1] + ',"rows":[' + ",".join(p for p in parts if p) + "]}").encode()


async def answer(request: Request, make: Callable[[Index], object], *, media: str = JSON, heavy: bool = False,
                 cache: bool = True, headers: dict | None = None) -> Response:
    """Run make(index) on a worker thread (its own cursor, the version current on arrival) and
    answer with its result: bytes or str as they are, anything else as JSON. GET answers are
    cached per index version and revalidate by ETag."""
    state = request.app.state
    live: LiveIndex = state.live
    version = live.acquire()
    try:
        tag = f'"{version.tag}"'
        cache_headers = {"ETag": tag, "Cache-Control": "public, max-age=31536000, immutable"
                         if request.query_params.get("v") == version.tag else "no-cache", **(headers or {})}
        if cache and request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=cache_headers)
        def work():
            with live.use(version) as idx:
                out = make(idx)
                return out if isinstance(out, (bytes, bytearray)) else out.encode() if isinstance(out, str) \
                    else encode_json(out)
        pool = state.heavy if heavy else state.light
        if not cache:
            return Response(await pool.run(work), media_type=media, headers=headers)
        key = answer_key(request.url.path, request.query_params.multi_items())
        body = version.answers.get(key)
        if body is None:
            body = await _coalesced(version, key, lambda: pool.run(work))
        return Response(body, media_type=media, headers=cache_headers)
    finally:
        live.release(version)


def answer_key(path: str, params=()) -> tuple:
    """Where an answer is cached in its version: the path and the query, less `v` (which only
    names the version for browsers' caches: the answer is the same with or without it)."""
    return path, tuple(kv for kv in params if kv[0] != "v")


async def _coalesced(version: Version, key, compute) -> bytes:
    """The answer for `key`, computed once however many requests ask for it while it is being
    computed (they wait for the first; without this, clients that reach a new neuron together
    each query the index for the same page)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), key)  # one server runs one loop; a test's clients may each run their own
    waiting = version.inflight.get(key)
    if waiting is not None:
        return await asyncio.shield(waiting)
    future = loop.create_future()
    version.inflight[key] = future
    try:
        body = await compute()
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
        raise
    finally:
        version.inflight.pop(key, None)
    version.answers.put(key[1], body)
    future.set_result(body)
    return body


def json_rows(rows):
    return [{k: plain(v) for k, v in r.items()} for r in rows]


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message, "status": status}, status_code=status, headers=headers)


def safe_similar(idx, key):
    try:
        return idx.similar(key, 8).rows()
    except NeuronIndexError:
        return []


def neuron_payload(idx, key: str) -> dict:
    """Everything a neuron page shows, in seven queries for a neuron (each DuckDB query costs about a millisecond)."""
    n = idx.neuron(key)
    labels = n.labels()
    classes, colours = labels["classes"], labels["colours"]
    props = {k: v for k, v in n.row.items() if k not in ("rf_h", "rf_w", "rf_y0", "rf_x0")}
    props["pre_activation"] = labels["pre_activation"]
    top, bottom = n.lists()
    viz = [{k: v for k, v in r.items() if k != "parameters"} for r in n.visualizations().rows()]
    dist = idx.distribution(key)
    hist = dist["histogram"]
    if hist is not None:
        hist = {k: v for k, v in hist.items() if k not in ("bucket_values", "bucket_counts")}
    return {"ok": True, "key": n.key, "properties": {k: plain(v) for k, v in props.items()},
            "classes": json_rows(classes), "colours": json_rows(colours), "topk": json_rows(top),
            "bottomk": json_rows(bottom), "direction": direction_payload(idx, n), "visualizations": json_rows(viz),
            "histogram": plain(hist) if hist is not None else None, "class_means": json_rows(dist["classes"]),
            "concepts": json_rows(n.concepts().rows())}


def direction_payload(idx, n) -> dict | None:
    """A direction's figures and its strongest channels (by |weight|, linked to their neurons)."""
    if n.row.get("kind") == "channel":
        return None
    d = n.direction()
    if d is None:
        return None

    u = np.asarray(d.pop("vector"), dtype=float)
    d.pop("weights")
    order = np.argsort(-np.abs(u))[:12]
    prefix = n.key.rsplit("/", 1)[0]
    d["channels"] = [{"key": f"{prefix}/{int(c)}", "channel": int(c), "weight": float(u[c])} for c in order]
    return {k: plain(v) for k, v in d.items()}


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode_upload(data: bytes, settings: Settings | None = None):
    """An uploaded image as RGB, reduced so its longest side is at most `upload_max_side`, and
    the scale (sx, sy) from its pixels to the reduced ones. Memory is bounded before decoding: a
    JPEG is decoded at a reduced scale (DCT scaling), any other format is refused from its header
    above `upload_max_pixels`; the freed decode buffers are handed back to the system."""

    settings = settings or Settings()
    side = settings.upload_max_side
    Image.MAX_IMAGE_PIXELS = None  # the checks below decide, from the header, before anything is decoded
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(im, "the upload")
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (side, side))  # decodes at 1/2, 1/4 or 1/8 scale when that is enough
            elif w * h > settings.upload_max_pixels:
                raise UsageError(f"the upload has {w}x{h} = {w * h / 1e6:.0f} Mpx, more than the "
                                 f"{settings.upload_max_pixels / 1e6:.0f} Mpx an upload other than a JPEG may have "
                                 "(settings: upload_max_pixels); send a smaller image or a JPEG")
            im.load()
            rgb = to_rgb(_reduced(im, side))
        give_back_memory()
        return rgb, (rgb.size[0] / w, rgb.size[1] / h)
    except DataError as exc:
        raise UsageError(exc.message) from None
    except (OSError, SyntaxError, ValueError):
        raise UsageError("the upload is not a readable image (PNG, JPEG, ...)") from None


def _reduced(im, side: int):
    """The image with its longest side at most `side`: a box filter by a whole factor, then a resize."""
    if max(im.size) <= side:
        return im
    if im.mode not in ("L", "RGB", "RGBA", "I", "F", "LA", "La", "RGBa", "CMYK"):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    factor = max(1, max(im.size) // side)
    if factor > 1:
        im = im.reduce(factor)
    if max(im.size) > side:
        scale = side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    return im


def give_back_memory() -> None:
    """glibc keeps freed heap pages for reuse; hand them back so one large upload does not leave
    the server hundreds of MB larger (no-op elsewhere)."""

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
