"""Count and time requests with ``prometheus_client`` and serve them at ``/metrics``.

Metrics (the prefix is the ``namespace`` option, default ``goodrepo``):

``goodrepo_http_requests_total{method, route, status}``
    requests answered.
``goodrepo_http_request_duration_seconds{method, route, status}``
    time from the call to the close of the body (a histogram).
``goodrepo_http_requests_in_flight``
    requests being handled now.
``goodrepo_http_errors_total{route, code}``
    failed requests by their stable error code (``goodrepo.error_code``).
``goodrepo_<name>_total``
    application counters declared with ``counters``; by default ``blob_bytes_in``,
    ``blob_bytes_out``, ``publishes``, ``cache_hits`` and ``cache_misses``.

``route`` is the template the inner app put in ``goodrepo.route`` (``unmatched`` when it
set none), never the raw path, and unknown methods count as ``OTHER``, so a client cannot
grow the number of series. Requests to the metrics path itself are not counted.

The inner app counts its own events through the recorder under ``goodrepo.metrics``::

    environ["goodrepo.metrics"].inc("blob_bytes_out", len(chunk))

``inc`` accepts only the declared names (a typo raises ``ValueError``) and amounts >= 0.

``/metrics`` answers the Prometheus text format (or OpenMetrics when asked) to a request
with ``Authorization: Bearer <token>`` when ``token`` is set, or from a ``REMOTE_ADDR`` in
``allow_from`` (default loopback only); others get ``401`` (a token is configured) or
``403``. ``X-Forwarded-For`` is never consulted. With ``path=None`` nothing is served; an
app can then mount :attr:`MetricsMiddleware.metrics_app` behind its own authorisation.

Options:

``registry``
    the ``CollectorRegistry`` to register in; default a new one per middleware, so two apps
    in one process do not collide (pass ``prometheus_client.REGISTRY`` to share the global).
``path``
    where to serve the metrics, default ``"/metrics"``; ``None`` to serve nothing.
``token``
    a bearer token that may read the metrics (default ``None``).
``allow_from``
    addresses or networks that may read the metrics without a token (default loopback).
``buckets``
    latency histogram buckets in seconds.
``counters``
    application counters, ``name -> help text``.
``namespace``
    metric name prefix, default ``"goodrepo"``.

Usage::

    from middleware.metrics import MetricsMiddleware
    app = MetricsMiddleware(app, token=os.environ["METRICS_TOKEN"])
    # GET /metrics with that token -> goodrepo_http_requests_total{...} ...

Environ keys: sets ``goodrepo.metrics``; reads ``goodrepo.route`` and
``goodrepo.error_code`` when the body closes; refusals set ``goodrepo.error_code``.
"""

from __future__ import annotations

import bisect
import hmac
import ipaddress
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.utils import floatToGoString
from webob import Response

from middleware._wsgi import ResponseBody, after_close
from middleware.errors import error_response
from middleware.keys import ERROR_CODE, METRICS, ROUTE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DEFAULT_COUNTERS = {
    "blob_bytes_in": "Bytes of blobs received (uploads, pull-through fetches, replication).",
    "blob_bytes_out": "Bytes of blobs sent to clients.",
    "publishes": "Artifacts published.",
    "cache_hits": "Pull-through requests served from the local store.",
    "cache_misses": "Pull-through requests fetched from the upstream.",
}
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_UNMATCHED = "unmatched"


class MetricsRecorder:
    """Let the inner app increment the declared application counters."""

    __slots__ = ("_counters",)

    def __init__(self, counters: Mapping[str, Counter]) -> None:
        self._counters = dict(counters)

    @property
    def names(self) -> frozenset[str]:
        """The counter names ``inc`` accepts."""
        return frozenset(self._counters)

    def inc(self, name: str, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the counter ``name``; ValueError for an unknown name."""
        counter = self._counters.get(name)
        if counter is None:
            raise ValueError(f"unknown counter {name!r}; declared: {sorted(self._counters)}")
        counter.inc(amount)


class _Timed(ResponseBody):
    """One request being measured: its status, and its body until that is closed, when
    the request is recorded."""

    __slots__ = (
        "_middleware",
        "_start_response",
        "environ",
        "method",
        "started",
        "status",
        "failed",
    )

    def __init__(
        self,
        middleware: MetricsMiddleware,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        method: str,
    ) -> None:
        self._middleware = middleware
        self._start_response = start_response
        self.environ = environ
        self.method = method
        self.status: str | None = None
        self.failed = False
        self.started = time.perf_counter()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self.status = status
        return self._start_response(status, headers, exc_info)

    def wrap(self, app_iter: Iterable[bytes]) -> None:
        super().wrap(app_iter)
        if type(app_iter) is not list:  # a list cannot fail on its way out
            self._iter = self._watched(self._iter)

    def _watched(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        # A loop, not "yield from": closing this must not close the app's body again
        # (ResponseBody.close does that, once).
        try:
            for chunk in chunks:  # noqa: UP028 (see above)
                yield chunk
        except Exception:
            self.failed = True
            raise

    def finish(self) -> None:
        """Record the finished request."""
        middleware = self._middleware
        middleware._active.pop()
        environ = self.environ
        route = environ.get(ROUTE)
        if not isinstance(route, str) or not route:
            route = _UNMATCHED
        status = self.status[:3] if self.status and not self.failed else "500"
        seconds = time.perf_counter() - self.started
        middleware._requests.observe((self.method, route, status), seconds)
        code = environ.get(ERROR_CODE)
        if isinstance(code, str) and code:
            middleware._errors.labels(route, code).inc()
        elif self.failed:
            middleware._errors.labels(route, "INTERNAL_ERROR").inc()


class _RequestMetrics:
    """The request counter and latency histogram, as plain numbers until scraped.

    ``prometheus_client``'s ``Counter`` and ``Histogram`` take a lock for each value they
    update, three per request; here one lock covers a request, and the numbers become
    ``prometheus_client`` metric families when the registry collects them. Per series
    (method, route, status) the values are ``[sum, count in bucket 0, ..., count above
    the last bound]``.
    """

    def __init__(self, prefix: str, buckets: tuple[float, ...]) -> None:
        self._requests = prefix + "http_requests"
        self._duration = prefix + "http_request_duration_seconds"
        self._bounds = (*buckets, math.inf)
        self._le = [floatToGoString(bound) for bound in self._bounds]
        self._series: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, labels: tuple[str, str, str], seconds: float) -> None:
        """Count one request of the series ``labels`` that took ``seconds``."""
        bucket = bisect.bisect_left(self._bounds, seconds) + 1
        lock = self._lock
        lock.acquire()  # not "with": that costs twice as much, on every request
        try:
            values = self._series.get(labels)
            if values is None:
                values = self._series[labels] = [0.0] * (len(self._bounds) + 1)
            values[0] += seconds
            values[bucket] += 1
        finally:
            lock.release()

    def describe(self) -> list[Metric]:
        return self._families([])

    def collect(self) -> list[Metric]:
        with self._lock:
            snapshot = [(labels, list(values)) for labels, values in self._series.items()]
        return self._families(snapshot)

    def _families(self, series: list[tuple[tuple[str, str, str], list[float]]]) -> list[Metric]:
        names = ["method", "route", "status"]
        requests = CounterMetricFamily(self._requests, "HTTP requests answered.", labels=names)
        duration = HistogramMetricFamily(
            self._duration, "Time from the call to the close of the response body.", labels=names
        )
        for labels, values in series:
            cumulative = list(itertools.accumulate(values[1:]))
            requests.add_metric(labels, cumulative[-1])
            duration.add_metric(labels, list(zip(self._le, cumulative, strict=True)), values[0])
        return [requests, duration]


class MetricsMiddleware:
    """Record request metrics and serve them (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        registry: CollectorRegistry | None = None,
        path: str | None = "/metrics",
        token: str | None = None,
        allow_from: Iterable[str] = ("127.0.0.1", "::1"),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        counters: Mapping[str, str] = DEFAULT_COUNTERS,
        namespace: str = "goodrepo",
    ) -> None:
        self.app = app
        if not isinstance(namespace, str) or not _METRIC_NAME.fullmatch(namespace):
            raise ValueError(f"namespace: {namespace!r} is not a valid metric name prefix")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError(f"path: {path!r} does not start with '/'")
        self._path = path
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ValueError("token: expected a string of at least 16 characters or None")
        self._token = token.encode() if token is not None else None
        networks = []
        for entry in [allow_from] if isinstance(allow_from, str) else allow_from:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as err:
                raise ValueError(f"allow_from: {entry!r} is not an address or network") from err
        self._allow_from = tuple(networks)
        buckets = tuple(buckets)
        if not buckets or list(buckets) != sorted(buckets) or len(set(buckets)) != len(buckets):
            raise ValueError("buckets: expected increasing, distinct numbers of seconds")
        self.registry = registry if registry is not None else CollectorRegistry()
        prefix = namespace + "_"
        self._requests = _RequestMetrics(prefix, buckets)
        self.registry.register(self._requests)
        # Requests being handled: list.append and list.pop are atomic, so no lock is needed.
        self._active: list[None] = []
        self._in_flight = Gauge(
            prefix + "http_requests_in_flight",
            "HTTP requests being handled.",
            registry=self.registry,
        )
        self._in_flight.set_function(self._active.__len__)
        self._errors = Counter(
            prefix + "http_errors",
            "Failed HTTP requests by error code.",
            ["route", "code"],
            registry=self.registry,
        )
        declared = {}
        for name, documentation in counters.items():
            if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
                raise ValueError(f"counters: {name!r} is not a valid metric name")
            declared[name] = Counter(prefix + name, documentation, registry=self.registry)
        self.recorder = MetricsRecorder(declared)

    def metrics_app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """A WSGI app answering the registry's metrics, with no access control of its own."""
        try:
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        except Exception:  # prometheus_client trips over some parameters (version="1.0.0")
            encoder, content_type = generate_latest, CONTENT_TYPE_LATEST
        response = Response(body=encoder(self.registry))
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._path is not None and environ.get("PATH_INFO") == self._path:
            return self._serve(environ, start_response)
        environ[METRICS] = self.recorder
        method = environ.get("REQUEST_METHOD", "")
        if method not in _KNOWN_METHODS:
            method = "OTHER"
        timed = _Timed(self, environ, start_response, method)
        self._active.append(None)
        try:
            app_iter = self.app(environ, timed.start_response)
        except BaseException:
            timed.failed = True
            timed.finish()
            raise
        if type(app_iter) is environ.get("wsgi.file_wrapper") and after_close(
            app_iter, timed.finish
        ):
            return app_iter  # the server sends its own file wrapper best unwrapped
        try:
            timed.wrap(app_iter)
        except BaseException:  # not iterable: the server answers for it
            timed.failed = True
            timed.finish()
            raise
        return timed

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._token is not None:
            header = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), self._token
            ):
                return self.metrics_app(environ, start_response)
        if self._peer_allowed(environ.get("REMOTE_ADDR")):
            return self.metrics_app(environ, start_response)
        if self._token is not None:
            response = error_response(
                environ,
                401,
                "UNAUTHORIZED",
                "a bearer token is required for the metrics",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        else:
            response = error_response(
                environ, 403, "FORBIDDEN", "metrics are not served to this address"
            )
        return response(environ, start_response)

    def _peer_allowed(self, remote: str | None) -> bool:
        if not remote or not self._allow_from:
            return False
        try:
            ip = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(ip in network for network in self._allow_from)
