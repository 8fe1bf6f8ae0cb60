"""A small JSON endpoint table for the fixed (non-schema) routes: auth, admin, events.

Each endpoint names its method, its werkzeug rule, the scopes it needs (``None``: public)
and a handler taking an :class:`ApiRequest` and returning a JSON-able value, a
``(status, value)`` pair or a werkzeug ``Response``. Paths the table does not know fall
through to the next app (the schema routes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from middleware.keys import CLIENT_ADDR, PRINCIPAL, ROUTE

from ..app import (
    WSGIApp,
    check_content_length,
    error_response,
    from_http_exception,
    path_text,
    request_id_of,
)
from ..errors import (
    Forbidden,
    GoodrepoError,
    InvalidRequest,
    Unauthorized,
    ValidationError,
)
from ..errors import MethodNotAllowed as MethodNotAllowedError
from ..pipeline.ops_request import flag, parse_json_body, read_body, whole_number
from ..pipeline.ops_respond import next_link

log = logging.getLogger(__name__)

MAX_BODY = 64 << 10


@dataclass
class ApiRequest:
    """What a handler gets: the request, its path values and the principal."""

    request: Request
    values: dict[str, Any]
    principal: dict[str, Any]

    @property
    def environ(self) -> dict[str, Any]:
        return self.request.environ

    @property
    def client(self) -> str:
        """The client address (after trusted-proxy handling, when the stack did it)."""
        return str(self.environ.get(CLIENT_ADDR) or self.request.remote_addr or "unknown")

    @property
    def sub(self) -> str:
        return str(self.principal.get("sub", ""))

    def json(self) -> dict[str, Any]:
        """The JSON object body (bounded); INVALID_REQUEST when it is not one."""
        value = parse_json_body(read_body(self.request, MAX_BODY))
        if not isinstance(value, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return value

    def bool_arg(self, name: str, default: bool, *, empty_is_default: bool = True) -> bool:
        """``name`` from the query; an empty value is ``default`` unless refused (a
        switch that destroys should never be set by an unset shell variable)."""
        raw = self.request.args.get(name)
        if raw is None or (raw == "" and empty_is_default):
            return default
        value = flag(raw)
        if value is None:
            raise ValidationError(f"{name} must be true or false", details={"field": name})
        return value

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.request.args.get(name)
        if raw is None or raw == "":
            return default
        value = whole_number(raw)
        if value is None or not low <= value <= high:
            raise ValidationError(
                f"{name} must be a whole number from {low} to {high}", details={"field": name}
            )
        return value


Handler = Callable[[ApiRequest], Any]


@dataclass(frozen=True)
class Endpoint:
    """One fixed route."""

    method: str
    rule: str
    handler: Handler
    scopes: tuple[str, ...] | None = ()  # None: public; (): any authenticated principal
    any_scope: bool = False  # True: one of ``scopes`` suffices


def field(body: dict[str, Any], name: str, kind: type = str) -> Any:
    """A required field of a JSON body, of the given type."""
    value = body.get(name)
    if name not in body:
        raise InvalidRequest(f"{name} is required", details={"field": name})
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidRequest(f"{name} must be {_JSON_KINDS[kind]}", details={"field": name})
    return value


def only_members(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """Refuse a JSON body with members other than ``allowed``: a misspelt optional member
    (``expires`` for ``expires_in``) must not quietly get its default."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequest(
            f"{what} takes {', '.join(allowed)}; not {', '.join(unknown)}",
            details={"unknown": unknown},
        )


_JSON_KINDS: dict[Any, str] = {
    str: "a string",
    int: "a whole number",
    bool: "true or false",
    list: "an array",
    dict: "an object",
}


def json_response(value: Any, status: int = 200) -> Response:
    if status == 204:
        response = Response(status=204)
        del response.headers["Content-Type"]
        return response
    text = json.dumps(value, separators=(",", ":"))
    return Response(text, status=status, mimetype="application/json")


def paginated(req: ApiRequest, body: dict[str, Any]) -> Response:
    """A page of a listing, with ``Link: <...>; rel="next"`` when there is a next page."""
    response = json_response(body)
    if body.get("next_cursor"):
        response.headers["Link"] = next_link(req.request, body["next_cursor"])
    return response


class JsonApi:
    """Dispatch a table of endpoints; everything else goes to ``fallback``."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        fallback: WSGIApp,
        implies: Callable[[], dict[str, set[str]]],
    ) -> None:
        self.fallback = fallback
        self.implies = implies
        self.endpoints = {f"{e.method} {e.rule}": e for e in endpoints}
        self.url_map = Map(
            [Rule(e.rule, endpoint=key, methods=[e.method]) for key, e in self.endpoints.items()],
            # "/auth/login/" is not "/auth/login": exact paths keep the rate-limit rules
            # and the public-path list of the middlewares exact too.
            strict_slashes=True,
        )
        self._adapter = self.url_map.bind("localhost")
        # Every rule starts with a literal ("/auth/", "/admin/users/"): a path that starts
        # with none of them goes to the fallback without a match.
        self._prefixes = tuple({e.rule.split("<", 1)[0] for e in endpoints})

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO") or ""
        if not path.startswith(self._prefixes):
            return self.fallback(environ, start_response)
        try:
            key, values = self._adapter.match(
                path_text(environ), environ.get("REQUEST_METHOD") or "GET"
            )
        except NotFound:
            return self.fallback(environ, start_response)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            err = MethodNotAllowedError(headers={"Allow": allowed, "Cache-Control": "no-store"})
            return error_response(err, environ)(environ, start_response)
        except HTTPException:  # includes the redirect a trailing slash would get
            return self.fallback(environ, start_response)
        endpoint = self.endpoints[key]
        environ[ROUTE] = endpoint.rule
        try:
            check_content_length(environ)
            principal = environ.get(PRINCIPAL) or {}
            self._authorize(endpoint, principal)
            result = endpoint.handler(ApiRequest(Request(environ), dict(values), principal))
            if isinstance(result, Response) or callable(result):
                response = result  # a response, or any WSGI app answering for us
            elif isinstance(result, tuple):
                response = json_response(result[1], result[0])
            else:
                response = json_response(result)
        except GoodrepoError as err:
            response = error_response(err, environ)
        except HTTPException as exc:  # werkzeug's, such as a body shorter than announced
            response = error_response(from_http_exception(exc), environ)
        except Exception:
            log.exception("unexpected error (request %s)", request_id_of(environ))
            response = error_response(GoodrepoError(), environ)
        if isinstance(response, Response):
            # Tokens, users and configuration: nothing here belongs in a cache.
            response.headers.setdefault("Cache-Control", "no-store")
        return response(environ, start_response)

    def _authorize(self, endpoint: Endpoint, principal: dict[str, Any]) -> None:
        if endpoint.scopes is None:
            return
        if not principal or principal.get("anonymous"):
            raise Unauthorized()
        held = set(principal.get("scopes") or ())
        implies = self.implies()
        for scope in list(held):
            held |= implies.get(scope, set())
        needed = set(endpoint.scopes)
        ok = bool(needed & held) if endpoint.any_scope else needed <= held
        if needed and not ok:
            raise Forbidden(
                f"this operation needs the scope {' or '.join(sorted(needed))}"
                if endpoint.any_scope
                else f"this operation needs the scope {', '.join(sorted(needed - held))}",
                details={"required": sorted(needed)},
            )
