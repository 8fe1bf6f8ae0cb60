"""The core WSGI app: werkzeug routing of the schema's routes to their pipelines.

The app does repository work only. It reads the authenticated principal from
``environ["goodrepo.principal"]`` (set by the auth middleware, or by an integrator's own
authentication) and sets ``environ["goodrepo.route"]`` (the matched route template) and
``environ["goodrepo.error_code"]`` (on failures) for the middlewares around it.

Every failure is answered in the JSON error shape of the API reference; anything
unexpected is logged with its traceback and answered ``500 INTERNAL_ERROR``.

Usage::

    repo = Repository.open("./data")
    app = CoreApp(repo)                  # or repo.wsgi_app()
    waitress.serve(app, listen="127.0.0.1:8080")
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.wrappers import Response

from middleware.keys import ERROR_CODE, REQUEST_ID, ROUTE

from .errors import GoodrepoError, InvalidRequest, MethodNotAllowed, NotFound
from .pipeline.context import RequestContext

if TYPE_CHECKING:
    from .pipeline.runtime import Route, Runtime
    from .repository import Repository

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def request_id_of(environ: dict[str, Any]) -> str:
    """The request's id (set by the request-id middleware), made here when it is missing."""
    rid = environ.get(REQUEST_ID)
    if not rid:
        rid = environ[REQUEST_ID] = uuid.uuid4().hex
    return str(rid)


def error_response(err: GoodrepoError, environ: dict[str, Any]) -> Response:
    """Render ``err`` in the JSON error shape, with its headers."""
    environ[ERROR_CODE] = err.code
    body = {"error": {**err.to_dict(), "request_id": request_id_of(environ)}}
    response = Response(
        json.dumps(body, separators=(",", ":")), status=err.status, mimetype="application/json"
    )
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


def path_text(environ: dict[str, Any]) -> str:
    """``PATH_INFO`` as text: WSGI hands it over as bytes decoded as latin-1."""
    raw = environ.get("PATH_INFO") or ""
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it
        return str(raw)


def check_content_length(environ: dict[str, Any]) -> None:
    """``InvalidRequest`` for a ``Content-Length`` that is not a number of bytes.

    werkzeug reads such a value as no body at all, so a blob sent with one would be
    stored empty; waitress refuses them itself, other servers may pass them on.
    """
    value = environ.get("CONTENT_LENGTH")
    if value and not (value.isascii() and value.strip().isdigit()):
        raise InvalidRequest("Content-Length is not a number of bytes")


def from_http_exception(exc: HTTPException) -> GoodrepoError:
    """The error of ours that answers like werkzeug's ``exc`` (status and code)."""
    status = exc.code or 500
    if isinstance(exc, ClientDisconnected):
        return InvalidRequest("the request body ended before its Content-Length")
    if isinstance(exc, WzNotFound):
        return NotFound("no such endpoint")
    if isinstance(exc, WzMethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or []))
        return MethodNotAllowed(
            "method not allowed here", headers={"Allow": allowed} if allowed else None
        )
    err = GoodrepoError(exc.description or "request failed")
    err.status = status
    err.code = _HTTP_CODES.get(status, "INVALID_REQUEST" if status < 500 else "INTERNAL_ERROR")
    return err


class CoreApp:
    """The repository's WSGI app, dispatching the active schema's routes.

    The schema is read once per request, so a schema swapped in mid-request does not
    affect requests already running.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        ctx: RequestContext | None = None
        values: dict[str, Any] = {}

        def pick(runtime: Runtime) -> Route:
            endpoint, matched = runtime.url_adapter.match(
                path_text(environ), environ.get("REQUEST_METHOD") or "GET"
            )
            values.clear()
            values.update(matched)
            return runtime.routes[endpoint]

        try:
            check_content_length(environ)
            # One snapshot of the schema for the whole request.
            with self.repo.running(pick) as (runtime, route):
                environ[ROUTE] = route.path
                ctx = RequestContext(runtime, environ, dict(values))
                response = route.run(ctx)
        except GoodrepoError as err:
            response = error_response(err, environ)
        except HTTPException as exc:
            response = error_response(from_http_exception(exc), environ)
        except Exception:
            log.exception("unexpected error (request %s)", request_id_of(environ))
            response = error_response(GoodrepoError(), environ)
        finally:
            if ctx is not None:
                ctx.close()
        return response(environ, start_response)
