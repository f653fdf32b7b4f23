"""Connections the service holds: read deadlines, caps, and logs that cannot flood.

uvicorn's h11 protocol waits for a request's headers and body as long as the client likes, and
holds every socket it accepts. `GuardedH11` adds:
  * a deadline for a request's headers (`header_timeout`, from the connection's first byte or, on a
    kept-alive connection, from the next request's first byte; a connection that sends nothing is
    closed at the same deadline) and one for its body (`body_timeout`): past either the client gets
    a 408 and the socket is closed;
  * a cap on open connections per client address (`max_client_connections`) and in all
    (`max_connections`, lowered to fit the process's open-file limit): a connection beyond either
    gets a 503 at once and is closed, so one client's idle sockets cannot starve the others and the
    server never runs out of file descriptors;
  * at most one log line per kind of problem per LOG_EVERY seconds (asyncio's accept errors and
    uvicorn's), with a count of what was left out.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import threading
import time
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from neuronindex.settings import default

FD_RESERVE = 128  # descriptors kept for the index, models, logs and threads
LOG_EVERY = 10.0

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
           b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s")


def _response(template: bytes, status: int, message: str) -> bytes:
    body = ('{"ok": false, "error": "%s", "status": %d}' % (message, status)).encode()
    return template % (len(body), body)


def connection_cap(requested: int) -> int:
    """The cap on open connections: as asked, but below the open-file limit (less a reserve)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(8, min(requested, soft - FD_RESERVE))


ENV = "NEURONINDEX_CONNECTION_LIMITS"  # how `serve` hands its limits to every worker process
LIMITS = ("header_timeout", "body_timeout", "max_connections", "max_client_connections")


def set_limits(**limits) -> None:
    """The limits of every GuardedH11 of this process and of the worker processes it starts."""
    os.environ[ENV] = json.dumps({k: limits.get(k) if limits.get(k) is not None else default(k) for k in LIMITS})
    GuardedH11.limits = None


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and connection caps (limits: set_limits, else
    the settings)."""

    limits: dict | None = None
    per_client: Counter = Counter()  # open connections per client address, in this process

    @classmethod
    def _limits(cls) -> dict:
        if cls.limits is None:
            given = json.loads(os.environ.get(ENV, "{}"))
            found = {k: given.get(k, default(k)) for k in LIMITS}
            found["max_connections"] = connection_cap(int(found["max_connections"]))
            cls.limits = found
        return cls.limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self._limits()
        self.header_timeout, self.body_timeout = float(limits["header_timeout"]), float(limits["body_timeout"])
        self._deadline = None
        peer = transport.get_extra_info("peername")
        self._address = peer[0] if isinstance(peer, tuple) and peer else "?"
        # refused before uvicorn counts the connection: a flood of refused sockets never holds a slot
        whose = ("from this address" if self.per_client[self._address] >= limits["max_client_connections"]
                 else "in all" if len(self.connections) >= limits["max_connections"] else None)
        self._refused = whose is not None
        if self._refused:
            transport.write(_response(REFUSED, 503, f"too many open connections {whose}; retry later"))
            transport.close()
            return
        self.per_client[self._address] += 1
        super().connection_made(transport)
        self._wait("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._stop()
        self.per_client[self._address] -= 1
        if self.per_client[self._address] <= 0:
            del self.per_client[self._address]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # a request's headers are on their way: their deadline (once) stands
            if self._deadline is None:
                self._wait("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if getattr(self, "_waiting", None) != "body":
                self._wait("body", self.body_timeout)
        else:  # the request is in: the app answers at its own pace (its own time limits apply)
            self._stop()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # uvicorn's keep-alive timeout closes an idle kept-alive socket
        self._stop()

    def _wait(self, what: str, seconds: float) -> None:
        self._stop()
        self._waiting = what
        self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _stop(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline, self._waiting = None, None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.IDLE:
            return  # the previous request is still being answered
        self.transport.write(_response(TIMED_OUT, 408, f"the request's {what} took longer than {seconds:g} s"))
        self.transport.close()


class OncePerKind(logging.Filter):
    """Lets one record per (logger, message template) through every `every` seconds and says how
    many it held back; a flood of identical errors (accept failing under a descriptor shortage)
    costs a line every few seconds, not megabytes."""

    def __init__(self, every: float = LOG_EVERY):
        super().__init__()
        self.every, self.last, self.held = every, {}, Counter()
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg)[:80])
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(kind, -1e18) < self.every:
                self.held[kind] += 1
                return False
            self.last[kind] = now
            held = self.held.pop(kind, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.every:g} s not logged)"
        record.exc_info = record.exc_info if not held else None
        return True


def quiet_floods() -> None:
    """Install the filter on the loggers that can flood (idempotent)."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerKind) for f in logger.filters):
            logger.addFilter(OncePerKind())
