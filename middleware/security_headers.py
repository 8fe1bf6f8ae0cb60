"""Add defensive response headers, keeping any the inner app set itself.

Every response gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy`` and
``X-Frame-Options``; HTML answers (``Content-Type`` ``text/html`` or
``application/xhtml+xml``) also get a ``Content-Security-Policy`` whose
``frame-ancestors`` matches the frame option; and ``Strict-Transport-Security`` is added
when ``hsts_max_age`` is set. A header the app already sent (compared case-insensitively)
is left exactly as the app set it.

Options (``None`` turns a header off):

``content_type_options``
    default ``"nosniff"``.
``referrer_policy``
    default ``"no-referrer"``.
``frame_options``
    ``"DENY"`` (default) or ``"SAMEORIGIN"``.
``content_security_policy``
    the CSP for HTML answers, default ``"default-src 'self'; frame-ancestors 'none';
    base-uri 'self'; form-action 'self'; object-src 'none'"``.
``hsts_max_age``
    seconds for ``Strict-Transport-Security`` (default ``None``: not sent); serve over
    HTTPS before turning it on.
``hsts_include_subdomains``, ``hsts_preload``
    add ``includeSubDomains`` (default ``True``) / ``preload`` (default ``False``).
``extra_headers``
    more ``name -> value`` headers for every response.

Usage::

    from middleware.security_headers import SecurityHeadersMiddleware
    app = SecurityHeadersMiddleware(app, hsts_max_age=31536000)
    # every answer now carries nosniff, Referrer-Policy, X-Frame-Options and HSTS

Environ keys: none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from middleware._wsgi import header_names

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_CSP = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)

_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")
_FRAME_OPTIONS = ("DENY", "SAMEORIGIN")


def _checked(option: str, name: str, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or not _VALUE.fullmatch(value):
        raise ValueError(f"{option}: expected printable ASCII text or None, got {value!r}")
    return (name, value)


class SecurityHeadersMiddleware:
    """Add security headers the app did not set itself (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        content_type_options: str | None = "nosniff",
        referrer_policy: str | None = "no-referrer",
        frame_options: str | None = "DENY",
        content_security_policy: str | None = DEFAULT_CSP,
        hsts_max_age: int | None = None,
        hsts_include_subdomains: bool = True,
        hsts_preload: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        if frame_options is not None:
            if not isinstance(frame_options, str) or frame_options.upper() not in _FRAME_OPTIONS:
                raise ValueError(f"frame_options: choose from {list(_FRAME_OPTIONS)} or None")
            frame_options = frame_options.upper()
        candidates = [
            _checked("content_type_options", "X-Content-Type-Options", content_type_options),
            _checked("referrer_policy", "Referrer-Policy", referrer_policy),
            _checked("frame_options", "X-Frame-Options", frame_options),
        ]
        if hsts_max_age is not None:
            if not isinstance(hsts_max_age, int) or isinstance(hsts_max_age, bool):
                raise ValueError("hsts_max_age: expected a whole number of seconds or None")
            if hsts_max_age < 0:
                raise ValueError("hsts_max_age: expected a number of seconds >= 0")
            value = f"max-age={hsts_max_age}"
            if hsts_include_subdomains:
                value += "; includeSubDomains"
            if hsts_preload:
                value += "; preload"
            candidates.append(("Strict-Transport-Security", value))
        for name, value in (extra_headers or {}).items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"extra_headers: {name!r} is not a valid header name")
            candidates.append(_checked(f"extra_headers[{name!r}]", name, value))
        self._headers = tuple(header for header in candidates if header is not None)
        if content_security_policy == DEFAULT_CSP and frame_options == "SAMEORIGIN":
            content_security_policy = DEFAULT_CSP.replace(
                "frame-ancestors 'none'", "frame-ancestors 'self'"
            )
        self._csp = _checked(
            "content_security_policy", "Content-Security-Policy", content_security_policy
        )
        # Each header with the line that shows it in header_names().
        self._defaults = tuple(
            (f"\n{name.lower()}\n", (name, value)) for name, value in self._headers
        )
        if len({line for line, _ in self._defaults}) != len(self._defaults):
            raise ValueError("extra_headers: repeats a header this middleware already sets")
        if self._csp is not None and "\ncontent-security-policy\n" in dict(self._defaults):
            raise ValueError(
                "extra_headers: Content-Security-Policy is content_security_policy's (set that "
                "to None to send your own on every answer)"
            )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        defaults = self._defaults
        csp = self._csp

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            present = header_names(headers)
            added = [header for line, header in defaults if line not in present]
            if (
                csp is not None
                and "\ncontent-type\n" in present
                and "\ncontent-security-policy\n" not in present
                and _is_html(headers)
            ):
                added.append(csp)
            return start_response(status, headers + added if added else headers, exc_info)

        return self.app(environ, _start_response)


def _is_html(headers: list[tuple[str, str]]) -> bool:
    """Whether the first ``Content-Type`` of ``headers`` is HTML."""
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml")
    return False
