"""The FastAPI app factory: state, guards, one JSON error shape, and the two routers."""
from __future__ import annotations

import json
import os
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse

from neuronindex.errors import NeuronIndexError, UsageError
from neuronindex.service import routes_api, routes_pages
from neuronindex.service.auth import (
    LOGIN,
    Throttle,
    authorised,
    presented_credentials,
    same_origin,
)
from neuronindex.service.common import LiveIndex, Pool, error
from neuronindex.service.connections import GuardedH11, quiet_floods, set_limits
from neuronindex.settings import Settings, default


class Guard:
    """Checks that need no index, before any routing (plain ASGI: no per-request task or copy):
    URL length (414), a client with too many failed logins (429), bearer token or login cookie
    (401; a browser asking for a page is sent to the login form instead), a session form posted
    from another site (403), declared upload size (413)."""

    def __init__(self, app, token: str | None, max_upload: int, max_url: int, throttle: Throttle):
        self.app, self.token, self.max_upload, self.max_url, self.throttle = app, token, max_upload, max_url, throttle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = None
        if len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b"")) > self.max_url:
            problem = error(414, f"the URL is longer than {self.max_url} characters; send the query in a POST body")
        else:
            headers = dict(scope["headers"])
            client = (scope.get("client") or ("?",))[0]
            allowed = authorised(self.token, headers)
            guessing = not allowed and presented_credentials(headers)
            login = scope["method"] == "POST" and scope["path"] == LOGIN
            wait = self.throttle.wait(client) if self.token is not None else 0.0
            if wait > 0 and (login or guessing):
                problem = error(429, f"too many failed logins from this address; try again in {wait:.0f} s",
                                {"Retry-After": str(max(1, round(wait)))})
            elif scope["method"] == "POST" and scope["path"] in (LOGIN, "/logout") and \
                    not same_origin(headers, scope.get("scheme", "http")):
                problem = error(403, "a login or logout must be posted from this site's own form")
            elif scope["path"] != LOGIN and not allowed:
                if guessing:
                    self.throttle.failed(client)
                if scope["method"] == "GET" and not scope["path"].startswith(("/api/", "/openapi")):

                    here = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                    problem = RedirectResponse(f"{LOGIN}?next={quote(here, safe='')}", status_code=303)
                else:
                    problem = error(401, "missing or wrong bearer token; send Authorization: Bearer <token> "
                                         "(or log in to the gallery at /login)")
            else:
                length = headers.get(b"content-length", b"")
                if length.isdigit() and int(length) > self.max_upload:
                    problem = error(413, f"upload larger than the {self.max_upload // (1024 * 1024)} MB limit")
        if problem is not None:
            return await problem(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(directory: str | os.PathLike, token: str | None = None, max_upload: int | None = None,
               threads: int | None = None, heavy: int | None = None, queue: int | None = None,
               cache_mb: int | None = None, memory_limit: str | None = None, temp_limit: str | None = None,
               duckdb_threads: int | None = None, settings: Settings | dict | None = None) -> FastAPI:
    """The service over one index directory. `settings` (a Settings, or a dict of its values):
    every limit and default the service and its index use; the other arguments, when given,
    override the matching setting (max_upload, serve_threads, serve_heavy, serve_queue,
    response_cache, serve_duckdb_threads)."""

    # the API docs (/docs, /redoc) with their scripts served from the package: they work offline
    app = FastAPIOffline(title="neuronindex", description="What every neuron of a CNN responds to, and which respond to this.",
                         version=__import__("neuronindex").__version__)
    settings = settings if isinstance(settings, Settings) else Settings(**(settings or {}))
    given = {"max_upload": max_upload, "serve_threads": threads, "serve_heavy": heavy, "serve_queue": queue,
             "response_cache": cache_mb, "serve_duckdb_threads": duckdb_threads}
    settings = settings.replace(**{k: v for k, v in given.items() if v is not None})
    app.state.settings = settings
    app.state.token = token
    app.state.live = LiveIndex(directory, settings.response_cache, memory_limit, temp_limit,
                               settings.serve_duckdb_threads, settings)
    app.state.max_upload = settings.max_upload
    app.state.light = Pool("query", settings.serve_threads, settings.serve_queue)
    app.state.heavy = Pool("image and model", settings.serve_heavy, settings.serve_queue)
    app.state.throttle = Throttle(settings.login_attempts, settings.login_window)
    app.add_middleware(Guard, token=token, max_upload=settings.max_upload, max_url=settings.max_url,
                       throttle=app.state.throttle)

    @app.exception_handler(NeuronIndexError)
    async def library_error(_request, exc: NeuronIndexError):
        return error(exc.http_status, exc.message, {"Retry-After": "1"} if exc.http_status == 503 else None)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):  # no stack traces to clients
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

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


ENV = "NEURONINDEX_SERVE"


def app_from_env() -> FastAPI:
    """The app of one worker process of `serve(..., workers=N)` (uvicorn imports it by name)."""
    return create_app(**json.loads(os.environ[ENV]))


def serve(directory, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, workers: int = 1,
          threads: int = default("serve_threads"), cache_mb: int = default("response_cache"),
          memory_limit: str | None = None, temp_limit: str | None = None,
          duckdb_threads: int = default("serve_duckdb_threads"), settings: Settings | None = None,
          **connection_limits) -> None:
    """Run the service (uvicorn). `connection_limits`: header_timeout, body_timeout,
    max_connections, max_client_connections (default: the settings)."""

    set_limits(**connection_limits)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise UsageError(f"binding to {host} exposes the index beyond this machine; pass --token SECRET (bearer auth)")
    if min(workers, threads, duckdb_threads) < 1 or cache_mb < 0:
        raise UsageError("--workers, --threads and --duckdb-threads must be at least 1, --cache-mb at least 0")
    options = {"directory": str(directory), "token": token, "threads": threads, "cache_mb": cache_mb,
               "memory_limit": memory_limit, "temp_limit": temp_limit, "duckdb_threads": duckdb_threads,
               "settings": (settings or Settings()).changed()}
    app = create_app(**options)  # fails here, once, on a missing or old index
    print(f"neuronindex gallery on http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)")
    if workers == 1:
        uvicorn.run(app, **server_options(host, port))
    else:  # processes: each opens the index read-only and answers on its own threads
        os.environ[ENV] = json.dumps(options)
        uvicorn.run("neuronindex.service.app:app_from_env", factory=True, workers=workers, **server_options(host, port))


def server_options(host: str, port: int) -> dict:
    """uvicorn's options for the service. The HTTP parser is h11 with a 1 MB buffer: h11 (and
    httptools) drop an over-long request line by resetting the connection or with a plain-text 400;
    with room for 1 MB, a URL beyond the max_url setting gets the service's JSON 414 instead. The
    protocol is GuardedH11: read deadlines and connection caps (connections.py)."""
    quiet_floods()
    return dict(host=host, port=port, log_level="warning", http=GuardedH11, h11_max_incomplete_event_size=1024 * 1024,
                backlog=2048)
