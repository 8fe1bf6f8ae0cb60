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
