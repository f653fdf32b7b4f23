"""Who may ask: the bearer token or the gallery's session cookie, login throttling, same-origin
checks for the forms that change a session. Used by the app's guard and the login routes."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict, deque
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from neuronindex.settings import default

COOKIE = "neuronindex_session"
LOGIN = "/login"


def session_value(token: str) -> str:
    """The gallery's session cookie for a token: an HMAC of a fixed text under it (the cookie never
    holds the token itself)."""
    return hmac.new(token.encode(), b"neuronindex gallery session", hashlib.sha256).hexdigest()


def authorised(token: str | None, headers: dict) -> bool:
    """A bearer token or the login cookie, compared in constant time."""
    if token is None:
        return True
    bearer = headers.get(b"authorization", b"")
    if hmac.compare_digest(bearer, f"Bearer {token}".encode()):
        return True
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header is no session
        return False
    got = cookies.get(COOKIE)
    return got is not None and hmac.compare_digest(got.value.encode(), session_value(token).encode())


def presented_credentials(headers: dict) -> bool:
    """The request tried to authenticate (a wrong try counts against its client; a plain visit does not)."""
    return b"authorization" in headers or COOKIE.encode() in headers.get(b"cookie", b"")


class Throttle:
    """Failed logins (form, bearer token or cookie) per client address: after `attempts` failures
    within `window` seconds, that client is refused (429, Retry-After) until the oldest of them
    leaves the window. At most `clients` addresses are remembered (the least recent go first)."""

    def __init__(self, attempts: int = default("login_attempts"), window: float = default("login_window"),
                 clients: int = 10_000, clock=time.monotonic):
        self.attempts, self.window, self.clients, self.clock = attempts, window, clients, clock
        self.failures: OrderedDict[str, deque] = OrderedDict()
        self.lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque:
        times = self.failures.get(client)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def wait(self, client: str) -> float:
        """Seconds this client must wait before its next try (0: it may try now)."""
        with self.lock:
            now = self.clock()
            times = self._recent(client, now)
            return 0.0 if len(times) < self.attempts else self.window - (now - times[0])

    def failed(self, client: str) -> None:
        with self.lock:
            now = self.clock()
            times = self._recent(client, now)
            times.append(now)
            self.failures[client] = times
            self.failures.move_to_end(client)
            while len(self.failures) > self.clients:
                self.failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self.lock:
            self.failures.pop(client, None)


def same_origin(headers: dict, scheme: str) -> bool:
    """A form POST that changes the session comes from this site: its Origin (or, without one, its
    Referer) names this host. Browsers send Origin on every cross-site POST."""
    host = headers.get(b"host", b"").decode("latin-1").lower()
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or origin == "null":
        origin = headers.get(b"referer", b"").decode("latin-1")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.netloc.lower() == host and parts.scheme in (scheme, "http", "https")
