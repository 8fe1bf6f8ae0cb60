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

import itertools
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from middleware._wsgi import ResponseBody, after_close, header_names
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


class _Exchange(ResponseBody):
    """One request and its response: the status, headers and bytes sent, and the body
    until it is closed, when the access-log line is written. Never shared."""

    __slots__ = (
        "_middleware",
        "_start_response",
        "_write",
        "request_id",
        "environ",
        "started",
        "context_token",
        "status",
        "headers",
        "bytes",
        "failed",
        "logger",
    )

    def __init__(
        self,
        middleware: RequestIDMiddleware,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        request_id: str,
        context_token: Any,
        logger: logging.Logger | None,
    ) -> None:
        self._middleware = middleware
        self._start_response = start_response
        self.request_id = request_id
        self.environ = environ
        self.context_token = context_token
        self.started = time.perf_counter()
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.bytes = 0
        self.failed = False
        self.logger = logger

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        middleware = self._middleware
        if middleware._header_line in header_names(headers):
            name = middleware._header_lower
            headers = [item for item in headers if item[0].lower() != name]
        headers = [*headers, (middleware._header, self.request_id)]
        # Recorded once the server took them: one it refuses (an error answer after the
        # headers went out) leaves the status that was sent.
        write = self._start_response(status, headers, exc_info)
        self.status = status
        self.headers = headers
        return write

    def fail(self) -> None:
        """The app failed where no answer of ours can go out: log the request as failed."""
        self.failed = True
        self.finish()

    def finish(self) -> None:
        """Write the access-log line if this request is logged; clear the request ID."""
        try:
            if self.logger is not None:
                _write_access_log(self.logger, self)
        finally:
            try:
                _current_request_id.reset(self.context_token)
            except ValueError:
                # close() ran in another context than the call (some servers do this);
                # the token cannot be used there, so just clear the variable.
                _current_request_id.set(None)


class _LoggedExchange(_Exchange):
    """An exchange whose access-log line is written: it counts the body as it goes,
    through the legacy ``write()`` callable too."""

    __slots__ = ()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self._write = super().start_response(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> object:
        self.bytes += len(data)
        return self._write(data)

    def __iter__(self) -> _LoggedExchange:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._iter)
        except StopIteration:
            raise
        except Exception:
            self.failed = True
            raise
        self.bytes += len(chunk)
        return chunk


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
        self._header_line = f"\n{self._header_lower}\n"
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")
        self._trust_incoming = bool(trust_incoming)
        self._generate = generate or _random_hex
        sample = self._generate()
        if not isinstance(sample, str) or not is_valid_request_id(sample):
            raise ValueError("generate: must return 1-128 characters of [A-Za-z0-9._-]")
        if isinstance(access_logger, str):
            access_logger = logging.getLogger(access_logger)
        if not isinstance(access_logger, logging.Logger):
            raise ValueError("access_logger: expected a logging.Logger or a logger name")
        self._access_log = access_logger if access_log else None
        self._catch_errors = bool(catch_errors)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = self._incoming(environ) or self._generate()
        environ[REQUEST_ID] = request_id
        context_token = _current_request_id.set(request_id)
        # Whether this request is logged is settled now, so that a request the log does
        # not want costs no counting.
        logger = self._access_log
        exchange: _Exchange
        if logger is not None and logger.isEnabledFor(logging.INFO):
            exchange = _LoggedExchange(
                self, environ, start_response, request_id, context_token, logger
            )
        else:
            exchange = _Exchange(self, environ, start_response, request_id, context_token, None)
        try:
            app_iter = self.app(environ, exchange.start_response)
            if exchange.status is None and self._catch_errors:
                # A generator app runs only when iterated: run it to its start_response
                # now, while a failure can still be answered with a JSON 500.
                app_iter = _started(app_iter)
        except Exception:
            if not self._catch_errors:
                exchange.fail()
                raise
            app_iter = self._internal_error(environ, exchange)
        if type(app_iter) is environ.get("wsgi.file_wrapper"):
            # Hand the server its own file wrapper back so it can send the file itself;
            # the log line waits for its close() and counts the declared length.
            if after_close(app_iter, exchange.finish):
                exchange.bytes = _declared_length(exchange.headers)
                return app_iter
        try:
            exchange.wrap(app_iter)
        except BaseException:  # not iterable: the server answers for it
            exchange.fail()
            raise
        return exchange

    def _internal_error(self, environ: WSGIEnvironment, exchange: _Exchange) -> Iterable[bytes]:
        """The JSON 500 for the exception being handled; re-raises it when the headers
        have gone out already (the server then ends the response, and logs the error)."""
        response = error_response(environ, 500, "INTERNAL_ERROR", "internal server error")

        def start_response(status: str, headers: list[tuple[str, str]]) -> Any:
            return exchange.start_response(status, headers, sys.exc_info())

        try:
            app_iter = response(environ, start_response)
        except BaseException:
            exchange.fail()
            raise
        log.exception("unhandled error in the application")
        return app_iter

    def _incoming(self, environ: WSGIEnvironment) -> str | None:
        if not self._trust_incoming:
            return None
        value = environ.get(self._environ_key)
        if value and _VALID_ID.fullmatch(value):
            return str(value)
        return None


def _write_access_log(logger: logging.Logger, exchange: _Exchange) -> None:
    environ = exchange.environ
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
        "bytes": 0 if method == "HEAD" else exchange.bytes,  # the server sends no body
        "duration_ms": round((time.perf_counter() - exchange.started) * 1000.0, 3),
        "client": environ.get(CLIENT_ADDR) or environ.get("REMOTE_ADDR"),
        "user": principal.get("sub") if isinstance(principal, dict) else None,
        "request_id": environ.get(REQUEST_ID),
        "error_code": error_code,
    }
    logger.info("%s %s %s", method, path, status, extra=fields)


def _started(app_iter: Iterable[bytes]) -> Iterable[bytes]:
    """``app_iter`` with its first chunk already taken (so its start_response has run),
    closed if that fails."""
    close = getattr(app_iter, "close", None)
    chunks = iter(app_iter)
    try:
        first = next(chunks)
    except StopIteration:  # started and done: iterating it again would start it again
        return _Resumed(iter(()), close)
    except BaseException:
        if close is not None:
            close()
        raise
    return _Resumed(itertools.chain((first,), chunks), close)


class _Resumed:
    """A started body: what is left of it; closes the original."""

    __slots__ = ("_chunks", "close")

    def __init__(self, chunks: Iterator[bytes], close: Callable[[], Any] | None):
        self._chunks = chunks
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


def _random_hex() -> str:
    """32 random hex digits from the ``random`` module, which reseeds after ``fork``.

    Not ``uuid4``: its ``os.urandom`` call releases the GIL, and under load in a threaded
    server winning it back costs far more than the ID is worth. A request ID is a label,
    not a secret, so a non-cryptographic generator is enough.
    """
    return random.getrandbits(128).to_bytes(16, "little").hex()


def _declared_length(headers: list[tuple[str, str]]) -> int:
    for name, value in headers:
        if name.lower() == "content-length" and value.isascii() and value.isdigit():
            return int(value)
    return 0


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
    # Every character _CONTROL matches is unprintable: a printable path needs no look.
    if path.isprintable():
        return path
    path = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)
    if len(path) > _MAX_LOGGED_PATH + 3:  # escapes make it longer: cap it again
        path = path[:_MAX_LOGGED_PATH] + "..."
    return path
