"""A thread-safe least-recently-used cache bounded by bytes (decoded images, service answers)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


def nbytes(value: Any) -> int:
    """The memory a cached value holds: its buffer for arrays and bytes, else a rough figure."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, tuple):
        return sum(nbytes(v) for v in value)
    return 1024


class LRU:
    """Up to `budget` bytes of values; the least recently used go first. A value larger than the
    whole budget is returned but not kept."""

    def __init__(self, budget: int, size: Callable[[Any], int] = nbytes):
        self.budget = int(budget)
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self._making: dict = {}
        self.hits = self.misses = 0

    def get(self, key, default=None):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return default

    def put(self, key, value) -> None:
        n = self.size(value)
        if n > self.budget:
            return
        with self._lock:
            if key in self._items:
                self._used -= self._items.pop(key)[1]
            self._items[key] = (value, n)
            self._used += n
            while self._used > self.budget:
                _, (_, gone) = self._items.popitem(last=False)
                self._used -= gone

    def get_or_make(self, key, make: Callable[[], Any]):
        """The cached value, or make() stored and returned; threads asking for the same missing
        key while it is being made wait for that one make() (a large image is decoded once)."""
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            return value
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            value = self.get(key, missing)
            if value is missing:
                value = make()
                self.put(key, value)
        with self._lock:
            self._making.pop(key, None)
        return value

    def __len__(self):
        return len(self._items)

    @property
    def used(self) -> int:
        return self._used
