"""A small, thread-safe, in-process response cache: LRU, TTL, and race-safe invalidation.

Values are JSON documents or bytes. A JSON value is stored encoded (its size is the
length of that encoding, measured once on put) and decoded on every hit, so callers
never share a mutable object with the cache; tuples come back as lists. The cache is
bounded by ``max_entries`` and ``max_bytes`` (least recently used entries go first) and
never holds an entry larger than ``max_entry_bytes``.

Invalidation is race-safe through tokens: ``get`` returns a token, and a ``put`` with
that token is refused if an ``invalidate_prefix`` that covers the key (or a ``clear``)
happened after the token was issued. A reader that computed a value from state older
than a concurrent write can therefore never store it after the write's invalidation.

Usage::

    cache = ResponseCache(max_entries=1024, max_bytes=16 << 20)
    hit, value, token = cache.get("latest:acme/app")
    if not hit:
        value = compute()
        cache.put("latest:acme/app", value, token=token)
    ...
    cache.invalidate_prefix("latest:acme/")  # after a write
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["ResponseCache"]

log = logging.getLogger(__name__)

#: How many recent invalidations are remembered to judge tokens precisely; a token older
#: than all of them is refused (conservative, never wrong).
INVALIDATION_LOG = 256


class _Entry(NamedTuple):
    data: bytes
    is_json: bool
    expires: float


class ResponseCache:
    """A bounded LRU cache of JSON values and bytes with per-entry TTLs.

    Options: ``max_entries``, ``max_bytes`` (sum of entry sizes), ``default_ttl``
    (seconds), ``max_entry_bytes`` (larger values are refused) and ``clock`` (a
    monotonic clock, injectable for tests). ``ValueError`` for inconsistent bounds.

    Usage::

        hit, value, token = cache.get(key)
        stored = cache.put(key, value, ttl=5.0, token=token)
    """

    def __init__(
        self,
        max_entries: int = 1024,
        max_bytes: int = 16 << 20,
        default_ttl: float = 30.0,
        max_entry_bytes: int = 256 << 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_entry_bytes < 1:
            raise ValueError("max_entries, max_bytes and max_entry_bytes must be positive")
        if max_entry_bytes > max_bytes:
            raise ValueError("max_entry_bytes cannot exceed max_bytes")
        if not (default_ttl > 0 and math.isfinite(default_ttl)):
            raise ValueError("default_ttl must be a positive number of seconds")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        self._invalidations: deque[tuple[int, str]] = deque(maxlen=INVALIDATION_LOG)
        self._hits = self._misses = self._evictions = 0

    def get(self, key: str) -> tuple[bool, Any, int]:
        """``(hit, value, token)``; ``value`` is ``None`` on a miss. Pass ``token`` to put."""
        with self._lock:
            token = self._generation
            entry = self._entries.get(key)
            if entry is not None and entry.expires <= self._clock():
                self._remove(key)
                entry = None
            if entry is None:
                self._misses += 1
                return False, None, token
            self._entries.move_to_end(key)
            self._hits += 1
        return True, json.loads(entry.data) if entry.is_json else entry.data, token

    def put(
        self, key: str, value: Any, *, ttl: float | None = None, token: int | None = None
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (default ``default_ttl``); ``True`` if stored.

        Refused (``False``) when the value is larger than ``max_entry_bytes``, ``ttl`` is
        not positive, or an invalidation covering ``key`` happened after ``token`` was
        issued. A value refused for its size also drops any older entry of ``key``.
        ``TypeError`` if ``value`` is neither bytes nor JSON-serialisable.
        """
        if isinstance(value, bytes | bytearray | memoryview):
            data, is_json = bytes(value), False
        else:
            data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
            is_json = True
        ttl = self.default_ttl if ttl is None else ttl
        with self._lock:
            if token is not None and self._invalidated_since(key, token):
                return False
            if len(data) > self.max_entry_bytes or not (ttl > 0 and math.isfinite(ttl)):
                self._remove(key)
                return False
            self._remove(key)
            self._entries[key] = _Entry(data, is_json, self._clock() + ttl)
            self._bytes += len(data)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._remove(oldest)
                self._evictions += 1
        return True

    def invalidate_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix``; return how many."""
        with self._lock:
            self._generation += 1
            self._invalidations.append((self._generation, prefix))
            doomed = [k for k in self._entries if k.startswith(prefix)]
            for key in doomed:
                self._remove(key)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry; puts with earlier tokens are refused."""
        self.invalidate_prefix("")

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``entries``, ``bytes`` and ``evictions`` (since creation)."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "evictions": self._evictions,
            }

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals (the lock is held) -------------------------------------------------------

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.data)

    def _invalidated_since(self, key: str, token: int) -> bool:
        if token >= self._generation:
            return False
        if not self._invalidations or self._invalidations[0][0] > token + 1:
            return True  # the invalidations right after the token are forgotten: refuse
        return any(gen > token and key.startswith(p) for gen, p in self._invalidations)
