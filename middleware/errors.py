"""Render the shared JSON error shape for answers the middlewares give themselves.

Every refusal (401, 429, 400 preflight, 403 metrics, ...) goes through
:func:`error_response`, so all of them carry the same body as the core's errors::

    {"error": {"code": "UNAUTHORIZED", "message": "...", "request_id": "..."}}

Usage::

    response = error_response(environ, 429, "RATE_LIMITED", "too many requests",
                              headers={"Retry-After": "3"})
    return response(environ, start_response)

Environ keys: reads ``goodrepo.request_id`` (``None`` in the body when absent); sets
``goodrepo.error_code`` so the access log and the metrics see the code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from webob import Response

from middleware.keys import ERROR_CODE, REQUEST_ID

log = logging.getLogger(__name__)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def error_response(
    environ: dict[str, Any],
    status: int,
    code: str,
    message: str,
    *,
    headers: Headers | None = None,
    details: Mapping[str, Any] | None = None,
) -> Response:
    """Build the JSON error answer for ``status`` and record ``code`` in the environ.

    ``headers`` adds headers such as ``WWW-Authenticate`` or ``Retry-After``; ``details``
    adds a ``details`` object to the error. The answer is never cached.
    """
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "request_id": environ.get(REQUEST_ID),
    }
    if details:
        error["details"] = dict(details)
    environ[ERROR_CODE] = code
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    response = Response(body=body, status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            response.headers[name] = value
    return response
