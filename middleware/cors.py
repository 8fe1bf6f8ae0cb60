"""Answer CORS preflights and add CORS headers for the origins that are allowed.

Closed by default: with no origin configured no response carries CORS headers and every
preflight is refused. A preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) is answered here, never passed on: ``204`` with the
``Access-Control-Allow-*`` headers when the origin, the method and every requested header
are allowed, else ``400 CORS_REJECTED``. Other requests from an allowed origin get
``Access-Control-Allow-Origin`` (the origin itself), ``Access-Control-Expose-Headers``
and, when configured, ``Access-Control-Allow-Credentials``, and every response gets
``Vary: Origin``. With ``"*"`` every response gets ``Access-Control-Allow-Origin: *`` and
needs no ``Vary``.

Options:

``allow_origins``
    exact origins such as ``"https://ui.example.com"``, or ``"*"`` for any origin. Each is
    compared as browsers send it (:func:`canonical_origin`): case does not matter, and a
    default port (``:443`` for https, ``:80`` for http) is left out.
``allow_origin_regex``
    patterns that a whole origin must match, e.g. ``r"https://[a-z0-9-]+\\.example\\.com"``.
``allow_methods``
    methods a preflight may ask for (default the repository's read and write methods).
``allow_headers``
    request headers a preflight may ask for (case-insensitive; default the ones the API
    uses), or ``["*"]`` for any.
``expose_headers``
    response headers scripts may read (default: ``X-Request-ID``, ``ETag``, the digest
    headers, ``Link``, ``Location``, ``Retry-After``, the ``RateLimit-*`` headers, ...).
``allow_credentials``
    send ``Access-Control-Allow-Credentials: true`` (default ``False``); refused together
    with ``"*"`` because browsers ignore that combination.
``max_age``
    seconds a browser may cache a preflight answer (default 600).

Usage::

    from middleware.cors import CORSMiddleware
    app = CORSMiddleware(app, allow_origins=["https://ui.example.com"])
    # OPTIONS preflights from that origin now answer 204

Environ keys: a refused preflight sets ``goodrepo.error_code``; nothing else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from webob import Response

from middleware._wsgi import header_names
from middleware.errors import error_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_HEADERS = (
    "Authorization",
    "Content-Type",
    "Content-Digest",
    "X-Checksum-Sha256",
    "If-Match",
    "If-None-Match",
    "If-Range",
    "Range",
    "X-Request-ID",
)
DEFAULT_EXPOSE_HEADERS = (
    "X-Request-ID",
    "ETag",
    "Content-Digest",
    "Repr-Digest",
    "Docker-Content-Digest",
    "X-Checksum-Sha256",
    "Content-Disposition",
    "Content-Range",
    "Accept-Ranges",
    "Link",
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)

# An origin as browsers serialise it in the Origin header (RFC 6454): scheme, host (a
# name, or an IPv6 literal in brackets) and a port only when it is not the default.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>[a-z0-9._~-]+|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The headers this middleware sets on a response, replacing the app's own; all begin
# with "access-control-", which is what a response is searched for first.
_CORS_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    }
)


def _tokens(option: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{option}: expected a list, not a string")
    values = tuple(values)
    for value in values:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise ValueError(f"{option}: {value!r} is not a valid HTTP token")
    return values


def canonical_origin(text: str) -> str:
    """``text`` as a browser would send it in ``Origin``: lower case, no trailing slash,
    and without the scheme's default port (``https://A.example.com:443/`` is
    ``https://a.example.com``). ``ValueError`` if it is not an origin."""
    match = (
        _ORIGIN.fullmatch(text.strip().lower().removesuffix("/"))
        if isinstance(text, str)
        else None
    )
    port = match and match["port"]
    if match is None or (port is not None and not 0 < int(port) <= 65535):
        raise ValueError(f"{text!r} is not an origin like 'https://host:port'")
    scheme, host = match["scheme"], match["host"]
    if port is None or int(port) == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


class CORSMiddleware:
    """Apply a CORS policy in front of an app (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        allow_origins: Iterable[str] = (),
        allow_origin_regex: Iterable[str] = (),
        allow_methods: Iterable[str] = DEFAULT_METHODS,
        allow_headers: Iterable[str] = DEFAULT_HEADERS,
        expose_headers: Iterable[str] = DEFAULT_EXPOSE_HEADERS,
        allow_credentials: bool = False,
        max_age: int = 600,
    ) -> None:
        self.app = app
        if isinstance(allow_origins, str) or isinstance(allow_origin_regex, str):
            raise ValueError("allow_origins, allow_origin_regex: expected lists, not strings")
        origins = set()
        self._any_origin = False
        for origin in allow_origins:
            if origin == "*":
                self._any_origin = True
            else:
                try:
                    origins.add(canonical_origin(origin))
                except ValueError as err:
                    raise ValueError(f"allow_origins: {err}") from None
        self._origins = frozenset(origins)
        patterns = []
        for pattern in allow_origin_regex:
            try:
                patterns.append(re.compile(pattern))
            except (re.error, TypeError) as err:
                raise ValueError(f"allow_origin_regex: {pattern!r}: {err}") from err
        self._patterns = tuple(patterns)
        if allow_credentials and self._any_origin:
            raise ValueError("allow_credentials: cannot be combined with allow_origins=['*']")
        self._credentials = bool(allow_credentials)
        self._methods = frozenset(m.upper() for m in _tokens("allow_methods", allow_methods))
        headers = _tokens("allow_headers", allow_headers)
        self._any_header = "*" in headers
        self._headers = frozenset(h.lower() for h in headers if h != "*")
        expose = _tokens("expose_headers", expose_headers)
        if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0:
            raise ValueError("max_age: expected a whole number of seconds >= 0")
        self._enabled = self._any_origin or bool(self._origins) or bool(self._patterns)
        # With "*" and no credentials the answer is the same for every origin: no Vary.
        # (allow_credentials with "*" was refused above, so "*" always means wildcard.)
        self._wildcard = self._any_origin
        self._varies = self._enabled and not self._wildcard
        self._expose_value = ", ".join(expose)
        self._methods_value = ", ".join(sorted(self._methods))
        self._max_age_value = str(max_age)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if (
            origin is not None
            and environ.get("REQUEST_METHOD") == "OPTIONS"
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        ):
            return self._preflight(environ, start_response, origin)
        if not self._enabled:
            return self.app(environ, start_response)
        added: list[tuple[str, str]] = []
        # With "*" every response, CORS or not, carries the same headers, so caches need
        # no Vary (the Fetch standard's advice for a static Access-Control-Allow-Origin).
        if self._wildcard or (origin is not None and self._allows(origin)):
            added.append(("Access-Control-Allow-Origin", "*" if self._wildcard else str(origin)))
            if self._credentials:
                added.append(("Access-Control-Allow-Credentials", "true"))
            if self._expose_value:
                added.append(("Access-Control-Expose-Headers", self._expose_value))
        if not added and not self._varies:
            return self.app(environ, start_response)
        varies = self._varies

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            present = header_names(headers)
            if added:
                if "\naccess-control-" in present:
                    headers = [h for h in headers if h[0].lower() not in _CORS_HEADERS]
                headers = headers + added
            if varies:
                if "\nvary\n" in present:
                    headers = _add_vary(headers, "Origin")
                else:
                    headers = [*headers, ("Vary", "Origin")]
            return start_response(status, headers, exc_info)

        return self.app(environ, _start_response)

    def _allows(self, origin: str) -> bool:
        if self._any_origin:
            return True
        normalised = origin.lower()
        if normalised in self._origins:
            return True
        return any(pattern.fullmatch(origin) for pattern in self._patterns)

    def _preflight(
        self, environ: WSGIEnvironment, start_response: StartResponse, origin: str
    ) -> Iterable[bytes]:
        method = environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"].strip().upper()
        requested = [
            h.strip().lower()
            for h in environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").split(",")
            if h.strip()
        ]
        problem = None
        if not self._allows(origin):
            problem = "origin not allowed"
        elif method not in self._methods:
            problem = f"method {method[:32]!r} not allowed"
        elif any(not _TOKEN.fullmatch(h) for h in requested) or (
            not self._any_header and any(h not in self._headers for h in requested)
        ):
            problem = "request header not allowed"
        vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        if problem is not None:
            log.debug("CORS preflight refused: %s", problem)
            response = error_response(
                environ, 400, "CORS_REJECTED", f"CORS preflight refused: {problem}"
            )
            response.headers["Vary"] = vary
            return response(environ, start_response)
        response = Response(status=204, content_type=None)
        response.headers["Access-Control-Allow-Origin"] = "*" if self._wildcard else origin
        response.headers["Access-Control-Allow-Methods"] = self._methods_value
        if requested:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(requested)
        response.headers["Access-Control-Max-Age"] = self._max_age_value
        if self._credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = vary
        return response(environ, start_response)


def _add_vary(headers: list[tuple[str, str]], field: str) -> list[tuple[str, str]]:
    """Add ``field`` to the ``Vary`` header, merging with the one the app sent."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            present = {v.strip().lower() for v in value.split(",")}
            if "*" in present or field.lower() in present:
                return headers
            headers = list(headers)
            headers[index] = (name, f"{value}, {field}")
            return headers
    return [*headers, ("Vary", field)]
