"""Small WSGI helpers shared by the middlewares that act when a response body closes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


def is_server_file_wrapper(environ: WSGIEnvironment, app_iter: Iterable[bytes]) -> bool:
    """Whether the body is an instance of the server's ``wsgi.file_wrapper`` class."""
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and type(app_iter) is wrapper


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


class ClosingIterator:
    """A response body whose ``close()`` closes the wrapped body, then runs ``callback``.

    Does what ``werkzeug.wsgi.ClosingIterator`` does for one callback. It exists because
    that class costs several microseconds per request in runtime ``typing`` subscripts,
    and two middlewares of the standard stack wrap every response.
    """

    __slots__ = ("_next", "_closers")

    def __init__(self, iterable: Iterable[bytes], callback: Callable[[], Any]) -> None:
        self._next = iter(iterable).__next__
        close = getattr(iterable, "close", None)
        self._closers = (close, callback) if close is not None else (callback,)

    def __iter__(self) -> ClosingIterator:
        return self

    def __next__(self) -> bytes:
        return self._next()

    def close(self) -> None:
        for closer in self._closers:
            closer()
