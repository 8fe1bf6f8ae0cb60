"""Limit request rates per client, principal or custom key, on the ``limits`` library.

Each :class:`Rule` names a limit (``"5/minute"``, or several: ``"10/second;300/hour"``;
see :func:`parse_limits`),
optionally the methods and the path it covers (exact, prefix or regex), and whose requests
it counts together (the key). Every rule that matches a request is charged; when one is
exhausted the answer is ``429 RATE_LIMITED`` with ``Retry-After``. Responses of limited
routes, allowed or not, carry ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds) for the tightest limit.

The client address is ``REMOTE_ADDR``, or, when that is a trusted proxy, the right-most
``X-Forwarded-For`` entry that is not a trusted proxy: a client can put anything in that
header, so only hops added by proxies we trust count.

Options:

``rules``
    :class:`Rule` objects or mappings of their fields.
``storage``
    a ``limits`` storage URI, ``"memory://"`` (default, one process) or
    ``"redis://host:port/db"`` (shared by processes and hosts), or a storage instance.
``storage_options``
    keyword arguments for the storage; Redis gets 1-second socket timeouts by default.
``strategy``
    ``"moving-window"`` (default), ``"fixed-window"`` or ``"sliding-window-counter"``.
``trusted_proxies``
    addresses or networks (``"10.0.0.0/8"``) whose ``X-Forwarded-For`` is believed.
``on_storage_error``
    ``"open"`` (default: let the request through) or ``"closed"`` (answer
    ``503 RATE_LIMIT_UNAVAILABLE``); logged either way.
``key_prefix``
    prefix of the storage keys, default ``"goodrepo"``, so several apps can share a Redis.

Usage::

    from middleware.ratelimit import RateLimitMiddleware, Rule
    rules = [Rule("5/minute", path="/auth/login", methods=["POST"]), Rule("50/second")]
    app = RateLimitMiddleware(app, rules=rules, storage="redis://127.0.0.1:6379/0")
    ...
    app.close()  # when done with it: closes the Redis connections it opened

Environ keys: sets ``goodrepo.client_addr`` and ``goodrepo.ratelimit_shown`` (which of
several stacked instances shows its headers); reads ``goodrepo.principal`` for rules keyed
by ``"principal"`` (place an instance inside the auth middleware for those); the refusals
set ``goodrepo.error_code``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError, StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import STRATEGIES, RateLimiter

from middleware.errors import error_response
from middleware.keys import CLIENT_ADDR, PRINCIPAL, RATELIMIT_SHOWN

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

KeyFunction = Callable[[dict[str, Any]], str | None]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_FORWARDED_HOPS = 32
_REDIS_DEFAULTS = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
_STORAGE_ERROR_CHOICES = ("open", "closed")
MAX_WINDOW_SECONDS = 366 * 86400
# "5/0 minutes": ``limits`` reads a zero count of periods as one.
_ZERO_PERIODS = re.compile(r"(?:/|\bper\b)\s*0+\s*[a-z]", re.IGNORECASE)


def parse_limits(text: str) -> list[RateLimitItem]:
    """The limits of a rule's ``limit`` string (``"10/second;300/hour"``).

    ``ValueError`` when it names none, a limit of no requests, a window of zero periods,
    or a window longer than a year (``MAX_WINDOW_SECONDS``): one that long would shut
    clients out for good, and outlives any shared storage's keys.
    """
    try:
        items = parse_many(text) if isinstance(text, str) else []
    except ValueError as err:
        raise ValueError(f"cannot parse it: {err}") from None
    if not items:
        raise ValueError("it names no limit")
    if _ZERO_PERIODS.search(text):
        raise ValueError("a window of zero periods")
    for item in items:
        if item.amount < 1:
            raise ValueError("a limit of no requests refuses everything")
        if item.get_expiry() > MAX_WINDOW_SECONDS:
            raise ValueError("a window longer than a year")
    return items


@dataclass(frozen=True)
class Rule:
    """One rate limit and the requests it covers.

    ``limit`` is a ``limits`` string; ``methods`` restricts it to those methods, in any
    case (default all); at most one of ``path`` (exact), ``prefix`` or ``regex`` (``re.search`` on
    ``PATH_INFO``) restricts the paths (default all). ``key`` says whose requests are
    counted together: ``"client"`` (the client address, default), ``"principal"`` (the
    authenticated subject; the client address for anonymous requests) or a callable
    ``environ -> str | None`` (``None`` exempts the request). ``name`` keeps the counters
    of a rule apart from the others' (default: its position).
    """

    limit: str
    methods: Collection[str] | None = None
    path: str | None = None
    prefix: str | None = None
    regex: str | None = None
    key: str | KeyFunction = "client"
    name: str | None = None


class _Limit:
    """One parsed limit of a rule, and its storage keys made once the way ``limits`` does.

    ``limits`` rebuilds a key from its parts on every call, and a strategy's hit and its
    window statistics are two calls; here the constant parts are joined once, so each
    request pays for one string concatenation.
    """

    __slots__ = ("item", "amount", "expiry", "limit_header", "_head", "_tail")

    def __init__(self, item: RateLimitItem, key_prefix: str, scope: str) -> None:
        self.item = item
        self.amount = item.amount
        self.expiry = item.get_expiry()
        self.limit_header = ("RateLimit-Limit", str(item.amount))
        sample = item.key_for(key_prefix, scope, _KEY_SLOT)
        self._head, _, self._tail = sample.partition(_KEY_SLOT)

    def key(self, identity: str) -> str:
        """The storage key of ``identity``: ``item.key_for(prefix, scope, identity)``."""
        return self._head + identity + self._tail


_KEY_SLOT = "\x00"


class _CompiledRule:
    """A validated rule with its parsed limits, matcher and key function."""

    __slots__ = ("limits", "methods", "matches_path", "key", "scope")

    def __init__(self, rule: Rule, index: int, key_prefix: str) -> None:
        where = f"rules[{index}]"
        try:
            items = parse_limits(rule.limit)
        except ValueError as err:
            raise ValueError(f"{where}.limit: {rule.limit!r}: {err}") from None
        if rule.name is not None and (not isinstance(rule.name, str) or _KEY_SLOT in rule.name):
            raise ValueError(f"{where}.name: expected a string without NUL characters")
        if isinstance(rule.methods, str):
            raise ValueError(f"{where}.methods: expected a list of methods, not a string")
        self.methods = frozenset(m.upper() for m in rule.methods) if rule.methods else None
        given = [n for n in ("path", "prefix", "regex") if getattr(rule, n) is not None]
        if len(given) > 1:
            raise ValueError(f"{where}: give at most one of path, prefix and regex, not {given}")
        for name in ("path", "prefix"):
            value = getattr(rule, name)
            if value is not None and (not isinstance(value, str) or not value.startswith("/")):
                raise ValueError(f"{where}.{name}: {value!r} does not start with '/'")
        self.matches_path: Callable[[str], bool] | None = None
        if rule.path is not None:
            exact = rule.path
            self.matches_path = lambda path: path == exact
        elif rule.prefix is not None:
            prefix = rule.prefix
            self.matches_path = lambda path: path.startswith(prefix)
        elif rule.regex is not None:
            try:
                pattern = re.compile(rule.regex)
            except re.error as err:
                raise ValueError(f"{where}.regex: {err}") from err
            self.matches_path = lambda path: pattern.search(path) is not None
        if rule.key == "client":
            self.key: Callable[[WSGIEnvironment, str], str | None] = _client_key
        elif rule.key == "principal":
            self.key = _principal_key
        elif callable(rule.key):
            custom = rule.key
            self.key = lambda environ, _addr: custom(environ)
        else:
            raise ValueError(f"{where}.key: expected 'client', 'principal' or a callable")
        self.scope = rule.name or str(index)
        self.limits = tuple(_Limit(item, key_prefix, self.scope) for item in items)


def _client_key(environ: WSGIEnvironment, addr: str) -> str:
    return "addr:" + addr


def _principal_key(environ: WSGIEnvironment, addr: str) -> str:
    principal = environ.get(PRINCIPAL)
    if isinstance(principal, dict) and not principal.get("anonymous") and principal.get("sub"):
        return "sub:" + str(principal["sub"])
    return "addr:" + addr


class _LeanMemoryStorage(MemoryStorage):
    """``limits``' memory storage with each moving window kept as plain timestamps.

    ``MemoryStorage`` keeps one ``Entry`` object per hit and expires them from a timer
    thread it restarts every 10 ms. Under load those objects make the garbage collector
    run full collections, and every thread start stalls the request that makes it; in a
    threaded server that costs more than the rest of the stack. Here a window is one deque
    of float timestamps per key, trimmed from its old end whenever the key is used;
    windows of idle keys are dropped by a sweep at most every ``_SWEEP_INTERVAL`` seconds,
    on the request path, so no thread is involved. The counters of the other strategies
    are ``MemoryStorage``'s own.
    """

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        super().__init__(uri, **options)
        self._windows: dict[str, tuple[float, deque[float]]] = {}
        self._windows_lock = threading.Lock()
        self._next_sweep = time.time() + _SWEEP_INTERVAL

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._windows_lock:
            window = self._current_window(key, expiry, now)
            if len(window) + amount > limit:
                return False
            window.extend([now] * amount)
            return True

    def charge_moving_window(
        self, limit: _Limit, scope: str, identity: str
    ) -> tuple[bool, float, int]:
        """``acquire_entry`` then ``get_moving_window`` for ``limit``, under one lock."""
        expiry = limit.expiry
        key = limit.key(identity)
        now = time.time()
        lock = self._windows_lock
        lock.acquire()  # not "with": that costs twice as much, on every request
        try:
            window = self._current_window(key, expiry, now)
            allowed = len(window) < limit.amount
            if allowed:
                window.append(now)
            start = window[0] if window else now
            return allowed, start + expiry, limit.amount - len(window)
        finally:
            lock.release()

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        with self._windows_lock:
            window = self._current_window(key, expiry, now)
            return (window[0], len(window)) if window else (now, 0)

    def _current_window(self, key: str, expiry: int, now: float) -> deque[float]:
        """The timestamps of ``key`` still inside its window at ``now`` (created empty),
        oldest first; call with the lock held. Each timestamp is dropped once, so a hit
        costs the same whatever the limit."""
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._windows.get(key)
        if entry is None:
            entry = self._windows[key] = (expiry, deque())
        window = entry[1]
        cutoff = now - expiry
        while window and window[0] < cutoff:
            window.popleft()
        return window

    def clear(self, key: str) -> None:
        super().clear(key)
        with self._windows_lock:
            self._windows.pop(key, None)

    def reset(self) -> int | None:
        counted = super().reset() or 0
        with self._windows_lock:
            counted = max(counted, len(self._windows))
            self._windows.clear()
        return counted

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_INTERVAL
        for key, (expiry, window) in list(self._windows.items()):
            if not window or window[-1] < now - expiry:
                del self._windows[key]


_SWEEP_INTERVAL = 5.0


class RateLimitMiddleware:
    """Answer 429 when a matching rule's limit is exhausted (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        rules: Iterable[Rule | Mapping[str, Any]],
        storage: str | Storage = "memory://",
        storage_options: Mapping[str, Any] | None = None,
        strategy: str = "moving-window",
        trusted_proxies: Iterable[str] = (),
        on_storage_error: str = "open",
        key_prefix: str = "goodrepo",
    ) -> None:
        self.app = app
        if not isinstance(key_prefix, str) or not key_prefix or _KEY_SLOT in key_prefix:
            raise ValueError("key_prefix: expected a non-empty string without NUL characters")
        compiled = []
        for index, rule in enumerate(rules):
            if isinstance(rule, Mapping):
                known = {f.name for f in fields(Rule)}
                unknown = sorted(set(rule) - known)
                if unknown:
                    raise ValueError(f"rules[{index}]: unknown fields {unknown}")
                rule = Rule(**rule)
            if not isinstance(rule, Rule):
                raise ValueError(f"rules[{index}]: expected a Rule or a mapping")
            compiled.append(_CompiledRule(rule, index, key_prefix))
        self._rules = tuple(compiled)
        if isinstance(storage, str):
            options = dict(storage_options or {})
            if storage.startswith(("redis", "rediss")):
                options = {**_REDIS_DEFAULTS, **options}
            backend: Any
            try:
                if storage.split("://", 1)[0] == "memory":
                    backend = _LeanMemoryStorage(storage, wrap_exceptions=True, **options)
                else:
                    backend = storage_from_string(storage, wrap_exceptions=True, **options)
            except (ConfigurationError, ValueError, TypeError) as err:
                # Also a bad option in the URI's query (redis-py raises ValueError).
                raise ValueError(f"storage: {err}") from err
        elif isinstance(storage, Storage):
            backend = storage
        else:
            raise ValueError("storage: expected a limits storage URI or a Storage instance")
        if not isinstance(backend, Storage):
            raise ValueError("storage: asynchronous storages do not work in WSGI")
        self.storage = backend
        self._owns_storage = isinstance(storage, str)
        base = backend.base_exceptions
        self._storage_errors: tuple[type[Exception], ...] = (
            StorageError,
            *(base if isinstance(base, tuple) else (base,)),
        )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: {strategy!r} is unknown; known: {sorted(STRATEGIES)}")
        try:
            self._limiter: RateLimiter = STRATEGIES[strategy](backend)
        except NotImplementedError as err:
            raise ValueError(f"strategy: {strategy!r} does not work with this storage") from err
        networks: list[IPNetwork] = []
        for proxy in [trusted_proxies] if isinstance(trusted_proxies, str) else trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy, strict=False))
            except ValueError as err:
                raise ValueError(f"trusted_proxies: {proxy!r} is not an address") from err
        self._trusted = tuple(networks)
        if on_storage_error not in _STORAGE_ERROR_CHOICES:
            raise ValueError(f"on_storage_error: choose from {list(_STORAGE_ERROR_CHOICES)}")
        self._fail_open = on_storage_error == "open"
        self._key_prefix = key_prefix
        self._charge = self._charge_with_limiter
        if strategy == "moving-window":
            self._charge = (
                backend.charge_moving_window
                if isinstance(backend, _LeanMemoryStorage)
                else self._charge_moving_window
            )
        elif strategy == "fixed-window":
            self._charge = self._charge_fixed_window

    def close(self) -> None:
        """Close the network connections of a storage made from a URI (the Redis clients
        of ``redis://`` and its variants). A storage instance passed in is its owner's to
        close. Idempotent; a request after it connects again."""
        if not self._owns_storage:
            return
        attributes = vars(self.storage)  # not getattr: some storages connect on access
        for name in ("storage", "storage_slave"):
            close = getattr(attributes.get(name), "close", None)
            if callable(close):
                close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._trusted:
            addr = self.client_address(environ)
        else:
            addr = environ.get("REMOTE_ADDR") or ""
        environ[CLIENT_ADDR] = addr
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        tightest: tuple[_Limit, float, int] | None = None
        try:
            for rule in self._rules:
                if (
                    rule.methods is not None
                    and method not in rule.methods
                    # Many apps route a method whatever its case: so does the rule.
                    and method.upper() not in rule.methods
                ):
                    continue
                if rule.matches_path is not None and not rule.matches_path(path):
                    continue
                identity = rule.key(environ, addr)
                if identity is None:
                    continue
                for limit in rule.limits:
                    allowed, reset, remaining = self._charge(limit, rule.scope, identity)
                    if not allowed:
                        return self._refuse(environ, start_response, limit, reset)
                    if tightest is None or remaining < tightest[2]:
                        tightest = (limit, reset, remaining)
        except self._storage_errors as err:
            return self._storage_failed(environ, start_response, err)
        if tightest is None:
            return self.app(environ, start_response)
        limit_headers = _limit_headers(*tightest)
        # With instances stacked, the one with the fewest requests left shows its
        # headers: each further in takes over if it is tighter (see _refuse).
        shown = environ.get(RATELIMIT_SHOWN)
        if shown is None or tightest[2] < shown[0]:
            environ[RATELIMIT_SHOWN] = (tightest[2], limit_headers)

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            if environ[RATELIMIT_SHOWN][1] is limit_headers:
                headers = headers + limit_headers
            return start_response(status, headers, exc_info)

        return self.app(environ, _start_response)

    # Each charge hits one limit for one identity and answers (allowed, reset time,
    # remaining) in as few storage calls as the strategy allows: what ``limits``'
    # strategies compute with ``hit`` and then ``get_window_stats``.

    def _charge_moving_window(
        self, limit: _Limit, scope: str, identity: str
    ) -> tuple[bool, float, int]:
        storage: Any = self.storage
        key = limit.key(identity)
        allowed = storage.acquire_entry(key, limit.amount, limit.expiry)
        start, entries = storage.get_moving_window(key, limit.amount, limit.expiry)
        return allowed, start + limit.expiry, limit.amount - entries

    def _charge_fixed_window(
        self, limit: _Limit, scope: str, identity: str
    ) -> tuple[bool, float, int]:
        key = limit.key(identity)
        count = self.storage.incr(key, limit.expiry)
        return count <= limit.amount, self.storage.get_expiry(key), limit.amount - count

    def _charge_with_limiter(
        self, limit: _Limit, scope: str, identity: str
    ) -> tuple[bool, float, int]:
        allowed = self._limiter.hit(limit.item, self._key_prefix, scope, identity)
        stats = self._limiter.get_window_stats(limit.item, self._key_prefix, scope, identity)
        return allowed, stats.reset_time, stats.remaining

    def client_address(self, environ: WSGIEnvironment) -> str:
        """Return the client address, believing ``X-Forwarded-For`` from trusted proxies only."""
        remote = str(environ.get("REMOTE_ADDR") or "")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded or not self._trusted or not self._is_trusted(remote):
            return remote
        addr = remote
        for hop in reversed(forwarded.split(",")[-_MAX_FORWARDED_HOPS:]):
            try:
                ip = ipaddress.ip_address(hop.strip())
            except ValueError:
                break  # a trusted proxy passed on garbage: go no further than that proxy
            addr = str(ip)
            if not self._is_trusted(ip):
                break
        return addr

    def _is_trusted(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def _refuse(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        limit: _Limit,
        reset: float,
    ) -> Iterable[bytes]:
        headers = _limit_headers(limit, reset, 0)
        environ[RATELIMIT_SHOWN] = (0, headers)  # these go out, not an outer instance's
        headers.append(("Retry-After", str(max(1, _seconds_until(reset)))))
        response = error_response(
            environ,
            429,
            "RATE_LIMITED",
            f"rate limit exceeded: {limit.amount} per {limit.expiry} s",
            headers=headers,
        )
        return response(environ, start_response)

    def _storage_failed(
        self, environ: WSGIEnvironment, start_response: StartResponse, err: Exception
    ) -> Iterable[bytes]:
        cause = err.storage_error if isinstance(err, StorageError) else err
        if self._fail_open:
            log.error("rate-limit storage failed, letting the request through: %r", cause)
            return self.app(environ, start_response)
        log.error("rate-limit storage failed, refusing the request: %r", cause)
        response = error_response(
            environ,
            503,
            "RATE_LIMIT_UNAVAILABLE",
            "rate limiting is unavailable, try again later",
            headers={"Retry-After": "1"},
        )
        return response(environ, start_response)


def _seconds_until(reset: float) -> int:
    return max(0, math.ceil(reset - time.time()))


def _limit_headers(limit: _Limit, reset: float, remaining: int) -> list[tuple[str, str]]:
    # Sent on every answer, so spelt out: no max() calls, no helper call.
    seconds = reset - time.time()
    return [
        limit.limit_header,
        ("RateLimit-Remaining", str(remaining) if remaining > 0 else "0"),
        ("RateLimit-Reset", str(math.ceil(seconds)) if seconds > 0 else "0"),
    ]
