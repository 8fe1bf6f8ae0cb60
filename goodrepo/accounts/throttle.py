"""Login failure throttling, per username and per client address.

Only failures count. Each username and each client address has a sliding window of its
recent failures; once either holds ``max_failures`` within ``window`` seconds, further
attempts are refused with :class:`~goodrepo.errors.RateLimited` (``Retry-After`` = time
until the oldest failure leaves the window) before any password is checked. A successful
login clears its username's failures (not its address's, so one valid account cannot
launder guesses against others). State lives in memory, bounded to ``max_keys`` keys:
the least recently touched ones are forgotten first.

Attempts under way count too: while a username or an address has as many attempts
under way as failures it may still make, the next one waits (a few seconds at most) for
one of them to end. So guesses sent at once cannot all pass the check before any of them
has failed, and concurrent logins that succeed are only queued, never refused.

Usage::

    throttle = LoginThrottle.from_limit("5/minute")
    with throttle.attempt(username, address):  # raises RateLimited
        user = users.authenticate(username, password)  # InvalidCredentials: a failure
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

import limits

from ..errors import InvalidCredentials, RateLimited

log = logging.getLogger(__name__)

_MAX_KEY_CHARS = 128


class LoginThrottle:
    """Counts failed logins in sliding windows; thread-safe, bounded memory.

    ``max_failures`` within ``window`` seconds per username; ``address_max_failures``
    (default: the same) per client address; ``max_keys`` bounds the number of tracked
    usernames and addresses together; ``clock`` is a monotonic clock; ``queue_seconds``
    bounds how long an attempt waits for others under way to end.

    Usage::

        throttle = LoginThrottle(max_failures=5, window=60)
        throttle.check("alice", "192.0.2.7")
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        *,
        address_max_failures: int | None = None,
        max_keys: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        queue_seconds: float = 10.0,
    ) -> None:
        address_max = max_failures if address_max_failures is None else address_max_failures
        if max_failures < 1 or address_max < 1:
            raise ValueError("failure limits must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_failures = max_failures
        self.address_max_failures = address_max
        self.window = float(window)
        self.max_keys = max_keys
        self.clock = clock
        self.queue_seconds = queue_seconds
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # an attempt under way ended
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._under_way: dict[tuple[str, str], int] = {}

    @classmethod
    def from_limit(cls, limit: str, **kwargs: object) -> LoginThrottle:
        """A throttle from a rate-limit string such as ``"5/minute"`` (``ValueError``)."""
        items = limits.parse_many(limit)
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(f"expected one rate limit such as '5/minute', got {limit!r}")
        return cls(items[0].amount, items[0].get_expiry(), **kwargs)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def attempt(self, username: str, address: str | None) -> Iterator[None]:
        """Let one attempt in, or raise :class:`RateLimited`; the body checks the password.

        The attempt is a failure if the body raises :class:`InvalidCredentials`; a
        success (the body returns) forgets the username's failures; any other error
        counts as nothing. See the module for attempts under way.
        """
        keys = self._keys(username, address)
        give_up = time.monotonic() + self.queue_seconds
        with self._ended:
            while True:
                now = self.clock()
                self._refuse_over_limit(keys, now)
                if all(self._room(key, limit, now) > 0 for key, limit in keys):
                    break
                if not self._ended.wait(give_up - time.monotonic()):
                    raise RateLimited(1, "too many logins under way; try again")
            for key, _ in keys:
                self._under_way[key] = self._under_way.get(key, 0) + 1
        outcome = "error"
        try:
            yield
            outcome = "success"
        except InvalidCredentials:
            outcome = "failure"
            raise
        finally:
            with self._ended:
                for key, _ in keys:
                    left = self._under_way.pop(key) - 1
                    if left:
                        self._under_way[key] = left
                if outcome == "failure":
                    self._record(keys, self.clock())
                elif outcome == "success":
                    self._failures.pop(("u", _name(username)), None)
                self._ended.notify_all()

    def check(self, username: str, address: str | None) -> None:
        """Raise :class:`RateLimited` while either key is over its limit."""
        now = self.clock()
        with self._lock:
            self._refuse_over_limit(self._keys(username, address), now)

    def failure(self, username: str, address: str | None) -> None:
        """Record one failed login for ``username`` and ``address``."""
        now = self.clock()
        with self._lock:
            self._record(self._keys(username, address), now)

    def success(self, username: str) -> None:
        """Forget the failures of ``username`` after it logged in."""
        with self._lock:
            self._failures.pop(("u", _name(username)), None)

    def __len__(self) -> int:
        return len(self._failures)

    def _keys(self, username: str, address: str | None) -> list[tuple[tuple[str, str], int]]:
        keys = [(("u", _name(username)), self.max_failures)]
        if address:
            keys.append((("a", address[:_MAX_KEY_CHARS]), self.address_max_failures))
        return keys

    def _refuse_over_limit(self, keys: list[tuple[tuple[str, str], int]], now: float) -> None:
        waits = [self._wait(key, limit, now) for key, limit in keys if key in self._failures]
        wait = max(waits, default=0.0)
        if wait > 0:
            raise RateLimited(wait, "too many failed logins; try again later")

    def _record(self, keys: list[tuple[tuple[str, str], int]], now: float) -> None:
        for key, limit in keys:
            window = self._failures.get(key)
            if window is None:
                window = self._failures[key] = deque(maxlen=limit)
                self._evict()
            else:
                self._failures.move_to_end(key)
            window.append(now)

    def _room(self, key: tuple[str, str], limit: int, now: float) -> int:
        """How many more attempts ``key`` may have under way now."""
        used = self._under_way.get(key, 0)
        if key in self._failures:
            self._wait(key, limit, now)  # drops failures that left the window
            used += len(self._failures.get(key, ()))
        return limit - used

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        window = self._failures[key]
        while window and window[0] <= now - self.window:
            window.popleft()
        if not window:
            del self._failures[key]
            return 0.0
        if len(window) < limit:
            return 0.0
        return window[0] + self.window - now

    def _evict(self) -> None:
        # Least recently touched first: keys whose failures all aged out sit at the front.
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)


def _name(username: str) -> str:
    return str(username).strip().lower()[:_MAX_KEY_CHARS]
