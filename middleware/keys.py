"""Environ keys through which the middlewares and the inner app exchange data.

Every key is prefixed ``goodrepo.`` because ``middleware`` is a generic package name and
the environ is shared with whatever framework the stack is mounted in.

Usage::

    from middleware.keys import PRINCIPAL
    principal = environ.get(PRINCIPAL)
    scopes = principal["scopes"] if principal else []

Keys:

``REQUEST_ID``
    set by :class:`middleware.request_id.RequestIDMiddleware`: the request's ID (str).
``PRINCIPAL``
    set by :class:`middleware.auth.JWTAuthMiddleware`: a dict ``{"sub": str, "scopes":
    list[str], "token_id": str | None, "claims": dict, "anonymous": bool}``.
``ROUTE``
    set by the inner app before it calls ``start_response``: the route template it
    matched, e.g. ``"/v1/{namespace}/{name}/latest"``; and by
    :class:`middleware.health.HealthMiddleware` for its probes: the probe's path. Metrics
    and the access log use it instead of the raw path.
``ERROR_CODE``
    set by the inner app (and by every middleware refusal) on a failed request: the
    stable error code, e.g. ``"NOT_FOUND"``.
``METRICS``
    set by :class:`middleware.metrics.MetricsMiddleware`: a
    :class:`middleware.metrics.MetricsRecorder` whose ``inc(name, amount)`` counts
    application events (blob bytes in and out, publishes, cache hits).
``CLIENT_ADDR``
    set by :class:`middleware.ratelimit.RateLimitMiddleware`: the client address after
    ``X-Forwarded-For`` from trusted proxies was applied; the access log prefers it to
    ``REMOTE_ADDR``.
``RATELIMIT_SHOWN``
    set by :class:`middleware.ratelimit.RateLimitMiddleware`: ``(requests remaining,
    headers)`` of the tightest limit charged so far, so that of several instances stacked
    only the tightest adds its ``RateLimit-*`` headers to the answer.
"""

from __future__ import annotations

REQUEST_ID = "goodrepo.request_id"
PRINCIPAL = "goodrepo.principal"
ROUTE = "goodrepo.route"
ERROR_CODE = "goodrepo.error_code"
METRICS = "goodrepo.metrics"
CLIENT_ADDR = "goodrepo.client_addr"
RATELIMIT_SHOWN = "goodrepo.ratelimit_shown"

__all__ = [
    "CLIENT_ADDR",
    "ERROR_CODE",
    "METRICS",
    "PRINCIPAL",
    "RATELIMIT_SHOWN",
    "REQUEST_ID",
    "ROUTE",
]
