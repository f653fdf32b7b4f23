"""The FastAPI app factory: state, guards, one JSON error shape, and the two routers."""
from __future__ import annotations

import os

from fastapi import FastAPI, Request

from ..errors import NeuronIndexError, UsageError
from ..settings import default
from . import routes_api, routes_pages
from .common import LiveIndex, error

MAX_UPLOAD = default("max_upload")


def create_app(directory: str | os.PathLike, token: str | None = None, max_upload: int = MAX_UPLOAD) -> FastAPI:
    app = FastAPI(title="neuronindex", description="What every neuron of a CNN responds to, and which respond to this.",
                  version=__import__("neuronindex").__version__)
    app.state.live = LiveIndex(directory)
    app.state.max_upload = max_upload
    app.state.figure_cache = {}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if len(str(request.url)) > default("max_url"):
            return error(414, f"the URL is longer than {default('max_url')} characters; send the query in a POST body")
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

    app.include_router(routes_api.router)
    app.include_router(routes_pages.router)
    return app


def serve(directory, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise UsageError(f"binding to {host} exposes the index beyond this machine; pass --token SECRET (bearer auth)")
    app = create_app(directory, token)
    print(f"neuronindex gallery on http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)")
    # h11 drops a request line beyond 16 KB by resetting the connection; take up to 1 MB so the
    # URL limit answers with JSON instead
    uvicorn.run(app, host=host, port=port, log_level="warning", h11_max_incomplete_event_size=1024 * 1024)
