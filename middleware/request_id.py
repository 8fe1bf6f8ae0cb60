"""Give every request an ID, tag its log records with it and write one access-log line.

An incoming ``X-Request-ID`` is kept when it is at most 128 characters of
``[A-Za-z0-9._-]``; anything else is replaced by a fresh ID (32 hex digits), so a client
can never put control characters or a huge value into the logs. The ID is stored in the
environ, sent back in the response header, and held in a context variable that
:class:`RequestIDFilter` copies onto every log record made while the request runs.

When the response body is closed, one access-log record is written to the
``goodrepo.access`` logger with the fields ``method``, ``path`` (never the query string),
``route``, ``status``, ``bytes``, ``duration_ms``, ``client``, ``user``, ``request_id`` and
``error_code``. No header is logged, so no token or cookie can leak into the log.

An exception escaping the inner app before the response started is logged once with its
traceback and answered ``500 INTERNAL_ERROR`` in the JSON error shape, so even that
answer carries the request ID.

Options:

``header``
    the header name, default ``"X-Request-ID"``.
``trust_incoming``
    keep a well-formed incoming ID (default ``True``); ``False`` always makes a new one.
``generate``
    a callable returning a new ID, default 32 random hex digits; its output must match
    the accepted form.
``access_log``
    write the access-log line (default ``True``).
``access_logger``
    the logger (or its name) for the access log, default ``"goodrepo.access"``.
``catch_errors``
    answer an escaping exception with a JSON 500 (default ``True``).

Usage::

    from middleware.request_id import RequestIDMiddleware
    app = RequestIDMiddleware(app)
    # logging.getLogger(...).info(...) inside the app now carries request_id

Environ keys: sets ``goodrepo.request_id``; reads, when the body closes,
``goodrepo.route``, ``goodrepo.error_code``, ``goodrepo.principal`` and
``goodrepo.client_addr`` (falling back to ``REMOTE_ADDR``).
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from middleware._wsgi import ClosingIterator, after_close, is_server_file_wrapper
from middleware.errors import error_response
from middleware.keys import CLIENT_ADDR, ERROR_CODE, PRINCIPAL, REQUEST_ID, ROUTE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_MAX_LOGGED_PATH = 2048
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_current_request_id: ContextVar[str | None] = ContextVar("goodrepo_request_id", default=None)


def current_request_id() -> str | None:
    """Return the ID of the request being handled in this context, if any."""
    return _current_request_id.get()


def is_valid_request_id(value: str) -> bool:
    """Tell whether ``value`` is an acceptable request ID (1-128 of ``[A-Za-z0-9._-]``)."""
    return _VALID_ID.fullmatch(value) is not None


class RequestIDFilter(logging.Filter):
    """Copy the current request ID onto each log record as ``record.request_id``.

    Attach it to a handler (not a logger) so it sees records from every logger; records
    made outside a request get ``None``. A ``request_id`` already on the record (the
    access log sets its own) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id.get()
        return True


class _Exchange:
    """What one request's response looked like; one instance per request, never shared."""

    __slots__ = ("status", "headers", "bytes", "failed")

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.bytes = 0
        self.failed = False


class RequestIDMiddleware:
    """Assign request IDs, expose them to logging and write the access log (see module)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        header: str = "X-Request-ID",
        trust_incoming: bool = True,
        generate: Callable[[], str] | None = None,
        access_log: bool = True,
        access_logger: logging.Logger | str = "goodrepo.access",
        catch_errors: bool = True,
    ) -> None:
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise ValueError(f"header: {header!r} is not a valid header name")
        self.app = app
        self._header = header
        self._header_lower = header.lower()
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")
        self._trust_incoming = bool(trust_incoming)
        self._generate = generate or _random_hex
        sample = self._generate()
        if not isinstance(sample, str) or not is_valid_request_id(sample):
            raise ValueError("generate: must return 1-128 characters of [A-Za-z0-9._-]")
        if isinstance(access_logger, str):
            access_logger = logging.getLogger(access_logger)
        self._access_log = access_logger if access_log else None
        self._catch_errors = bool(catch_errors)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = self._incoming(environ) or self._generate()
        environ[REQUEST_ID] = request_id
        context_token = _current_request_id.set(request_id)
        started = time.perf_counter()
        exchange = _Exchange()
        id_header = (self._header, request_id)
        header_lower = self._header_lower

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            exchange.status = status
            headers = [item for item in headers if item[0].lower() != header_lower]
            headers.append(id_header)
            exchange.headers = headers
            return start_response(status, headers, exc_info)

        try:
            app_iter = self.app(environ, _start_response)
        except Exception:
            if not self._catch_errors:
                exchange.failed = True
                self._finish(environ, exchange, started, context_token)
                raise
            log.exception("unhandled error in the application")
            exc_info = sys.exc_info()
            response = error_response(environ, 500, "INTERNAL_ERROR", "internal server error")
            app_iter = response(
                environ, lambda status, headers: _start_response(status, headers, exc_info)
            )
            del exc_info

        if is_server_file_wrapper(environ, app_iter):
            # Hand the server its own file wrapper back so it can send the file itself;
            # the log line waits for its close() and counts the declared length.
            exchange.bytes = _declared_length(exchange.headers)
            if after_close(app_iter, self._finish, environ, exchange, started, context_token):
                return app_iter

        def _finish() -> None:
            try:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            finally:
                self._finish(environ, exchange, started, context_token)

        return ClosingIterator(_counted(app_iter, exchange), _finish)

    def _incoming(self, environ: WSGIEnvironment) -> str | None:
        if not self._trust_incoming:
            return None
        value = environ.get(self._environ_key)
        if value and _VALID_ID.fullmatch(value):
            return str(value)
        return None

    def _finish(
        self,
        environ: WSGIEnvironment,
        exchange: _Exchange,
        started: float,
        context_token: Any,
    ) -> None:
        try:
            logger = self._access_log
            if logger is not None and logger.isEnabledFor(logging.INFO):
                _write_access_log(logger, environ, exchange, started)
        finally:
            try:
                _current_request_id.reset(context_token)
            except ValueError:
                # close() ran in another context than the call (some servers do this);
                # the token cannot be used there, so just clear the variable.
                _current_request_id.set(None)


def _write_access_log(
    logger: logging.Logger, environ: WSGIEnvironment, exchange: _Exchange, started: float
) -> None:
    status: int | None = None
    if exchange.status is not None:
        try:
            status = int(exchange.status[:3])
        except ValueError:
            status = None
    elif exchange.failed:
        status = 500
    error_code = environ.get(ERROR_CODE)
    if error_code is None and exchange.failed:
        error_code = "INTERNAL_ERROR"
    principal = environ.get(PRINCIPAL)
    method = environ.get("REQUEST_METHOD", "")
    path = _logged_path(environ)
    fields = {
        "method": method,
        "path": path,
        "route": environ.get(ROUTE),
        "status": status,
        "bytes": exchange.bytes,
        "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "client": environ.get(CLIENT_ADDR) or environ.get("REMOTE_ADDR"),
        "user": principal.get("sub") if isinstance(principal, dict) else None,
        "request_id": environ.get(REQUEST_ID),
        "error_code": error_code,
    }
    logger.info("%s %s %s", method, path, status, extra=fields)


def _random_hex() -> str:
    """32 random hex digits from the ``random`` module, which reseeds after ``fork``.

    Not ``uuid4``: its ``os.urandom`` call releases the GIL, and under load in a threaded
    server winning it back costs far more than the ID is worth. A request ID is a label,
    not a secret, so a non-cryptographic generator is enough.
    """
    return f"{random.getrandbits(128):032x}"


def _declared_length(headers: list[tuple[str, str]]) -> int:
    for name, value in headers:
        if name.lower() == "content-length" and value.isdigit():
            return int(value)
    return 0


def _counted(app_iter: Iterable[bytes], exchange: _Exchange) -> Iterator[bytes]:
    """Yield the body unchanged while counting its bytes; the caller closes ``app_iter``."""
    try:
        for chunk in app_iter:
            exchange.bytes += len(chunk)
            yield chunk
    except Exception:
        exchange.failed = True
        raise


def _logged_path(environ: WSGIEnvironment) -> str:
    """SCRIPT_NAME + PATH_INFO as text, capped, control characters escaped (``\\x0a``)
    so that no formatter, JSON or plain text, can be fed a forged log line."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        path = raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        path = raw
    if len(path) > _MAX_LOGGED_PATH:
        path = path[:_MAX_LOGGED_PATH] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)
