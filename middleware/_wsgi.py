"""Small WSGI helpers shared by the middlewares that act when a response body closes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

_name = itemgetter(0)


def header_names(headers: list[tuple[str, str]]) -> str:
    """The names of ``headers`` in lower case, one per line, with a newline before the
    first: ``"\\ncontent-type\\nvary\\n"``, so that ``"\\nvary\\n" in names`` asks whether
    there is a ``Vary`` header.

    One string joined and lowered in C: about half the cost of a set of lowered names,
    and several middlewares ask this of every response. (A name holding a newline is not
    a valid header name; servers refuse such a response.)
    """
    return "\n".join(["", *map(_name, headers), ""]).lower()


def after_close(app_iter: Any, callback: Callable[..., None], *args: Any) -> bool:
    """Make ``app_iter.close()`` run ``callback(*args)`` after itself; False if it cannot.

    Servers such as waitress send their own file wrapper without iterating it, and only
    while it is the very object the app returned, so it cannot be wrapped.
    """
    inner = getattr(app_iter, "close", None)

    def close() -> None:
        try:
            if inner is not None:
                inner()
        finally:
            callback(*args)

    try:
        app_iter.close = close
    except AttributeError:  # a class with __slots__: fall back to wrapping
        return False
    return True


class ResponseBody:
    """One response's body on its way out, and the state a middleware keeps about it.

    Iterating it iterates the app's body itself: ``iter()`` hands out the app's own
    iterator, so the chunks do not pass through Python code here (a subclass that
    watches them returns ``self`` and overrides ``__next__``). The server calls
    ``close()`` on this object, which closes the app's body, then calls :meth:`finish`
    whatever happened. A subclass adds its per-request fields as slots, so a request costs
    the middleware one object rather than a closure, a generator and a wrapper; that
    matters because every microsecond of Python per request costs several in a threaded
    server's throughput.
    """

    __slots__ = ("_iter", "_close")

    def wrap(self, app_iter: Iterable[bytes]) -> None:
        """Take ``app_iter`` as the body to pass through and close."""
        self._iter: Iterator[bytes] = iter(app_iter)
        self._close = getattr(app_iter, "close", None)

    def __iter__(self) -> Iterator[bytes]:
        return self._iter

    def __next__(self) -> bytes:
        return next(self._iter)

    def close(self) -> None:
        """Close the app's body, then :meth:`finish`; only the first call does anything."""
        if self._iter is _CLOSED:
            return
        close = self._close
        # Let go of the app's body: a middleware further in may hold this object's
        # start_response, and the two must not stay alive as a cycle for the collector.
        self._iter = _CLOSED
        self._close = None
        try:
            if close is not None:
                close()
        finally:
            self.finish()

    def finish(self) -> None:
        """Called once the body is closed (or the server's file wrapper is)."""


_CLOSED: Iterator[bytes] = iter(())
