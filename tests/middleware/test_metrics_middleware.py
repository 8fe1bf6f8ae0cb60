"""MetricsMiddleware: counters, histogram, in-flight gauge, recorder and /metrics access."""

from __future__ import annotations

import io
import time
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from mwhelpers import Outer, RecordingApp, call
from prometheus_client import CollectorRegistry, generate_latest
from webtest import TestApp

from middleware.keys import ERROR_CODE, METRICS
from middleware.metrics import DEFAULT_COUNTERS, MetricsMiddleware

TOKEN = "metrics-token-0123456789"
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_requests_are_counted_by_method_route_and_status(registry: CollectorRegistry) -> None:
    app = TestApp(
        MetricsMiddleware(RecordingApp(route="/v1/{ns}/{name}/latest"), registry=registry)
    )
    app.get("/v1/a/b/latest")
    app.get("/v1/c/d/latest")
    labels = {"method": "GET", "route": "/v1/{ns}/{name}/latest", "status": "200"}
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 2
    assert sample(registry, "goodrepo_http_request_duration_seconds_count", **labels) == 2
    assert sample(registry, "goodrepo_http_requests_in_flight") == 0


@pytest.mark.parametrize(
    ("method", "label"),
    [
        pytest.param("PUT", "PUT", id="known"),
        pytest.param("BREW", "OTHER", id="unknown-method"),
    ],
)
def test_route_label_never_uses_the_raw_path(
    registry: CollectorRegistry, method: str, label: str
) -> None:
    app = MetricsMiddleware(RecordingApp(status="404 Not Found"), registry=registry)
    status, headers, body, _ = call(app, REQUEST_METHOD=method, PATH_INFO="/random/123")
    body.close()
    assert (
        sample(
            registry, "goodrepo_http_requests_total", method=label, route="unmatched", status="404"
        )
        == 1
    )
    assert b"/random/123" not in generate_latest(registry)


def test_in_flight_gauge_during_a_request(registry: CollectorRegistry) -> None:
    seen = []

    def inspect(environ: dict) -> None:
        seen.append(sample(registry, "goodrepo_http_requests_in_flight"))

    app = MetricsMiddleware(
        RecordingApp(body=lambda: [b"a", b"b"], inspect=inspect), registry=registry
    )
    status, headers, body, _ = call(app)
    assert seen == [1]
    list(body)
    assert sample(registry, "goodrepo_http_requests_in_flight") == 1  # until closed
    body.close()
    assert sample(registry, "goodrepo_http_requests_in_flight") == 0


def test_errors_are_counted_by_code(registry: CollectorRegistry) -> None:
    app = RecordingApp(status="404 Not Found", route="/v1/{ns}", error_code="NOT_FOUND")
    TestApp(MetricsMiddleware(app, registry=registry)).get("/v1/x", status=404)
    assert sample(registry, "goodrepo_http_errors_total", route="/v1/{ns}", code="NOT_FOUND") == 1


def test_an_exception_is_counted_as_a_500(registry: CollectorRegistry) -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(MetricsMiddleware(broken, registry=registry))
    labels = {"method": "GET", "route": "unmatched", "status": "500"}
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 1
    assert (
        sample(registry, "goodrepo_http_errors_total", route="unmatched", code="INTERNAL_ERROR")
        == 1
    )
    assert sample(registry, "goodrepo_http_requests_in_flight") == 0


def test_an_exception_while_the_body_streams_is_counted_as_a_500(
    registry: CollectorRegistry,
) -> None:
    def chunks() -> Any:
        yield b"part"
        raise OSError("disk gone")

    recording = RecordingApp(body=chunks)
    _, _, body, _ = call(MetricsMiddleware(recording, registry=registry))
    with pytest.raises(OSError):
        list(body)
    body.close()
    labels = {"method": "GET", "route": "unmatched", "status": "500"}
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 1
    assert (
        sample(registry, "goodrepo_http_errors_total", route="unmatched", code="INTERNAL_ERROR")
        == 1
    )
    assert recording.closed == 1  # the app's body, closed once


def test_an_app_that_returns_no_iterable_leaves_no_request_in_flight(
    registry: CollectorRegistry,
) -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [])
        return None

    app = MetricsMiddleware(broken, registry=registry)
    for _ in range(2):
        with pytest.raises(TypeError):
            call(app)
    assert sample(registry, "goodrepo_http_requests_in_flight") == 0
    labels = {"method": "GET", "route": "unmatched", "status": "500"}
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 2


def test_the_recorder_counts_declared_events_only(registry: CollectorRegistry) -> None:
    def inspect(environ: dict) -> None:
        recorder = environ[METRICS]
        recorder.inc("blob_bytes_out", 1024)
        recorder.inc("publishes")
        with pytest.raises(ValueError, match="declared"):
            recorder.inc("blob_bytes_ot", 1)
        with pytest.raises(ValueError):
            recorder.inc("publishes", -1)

    TestApp(MetricsMiddleware(RecordingApp(inspect=inspect), registry=registry)).get("/")
    assert sample(registry, "goodrepo_blob_bytes_out_total") == 1024
    assert sample(registry, "goodrepo_publishes_total") == 1
    assert sample(registry, "goodrepo_cache_hits_total") == 0


def test_declared_counters_and_namespace_are_options(registry: CollectorRegistry) -> None:
    middleware = MetricsMiddleware(
        RecordingApp(), registry=registry, counters={"widgets": "Widgets."}, namespace="acme"
    )
    assert middleware.recorder.names == {"widgets"}
    middleware.recorder.inc("widgets", 2)
    TestApp(middleware).get("/")
    assert sample(registry, "acme_widgets_total") == 2
    assert sample(
        registry, "acme_http_requests_total", method="GET", route="unmatched", status="200"
    )


@pytest.mark.parametrize(
    ("options", "environ", "headers", "status"),
    [
        pytest.param({}, LOCAL, {}, 200, id="loopback-by-default"),
        pytest.param({}, {"REMOTE_ADDR": "::1"}, {}, 200, id="ipv6-loopback"),
        pytest.param({}, {"REMOTE_ADDR": "10.1.2.3"}, {}, 403, id="remote-refused"),
        pytest.param(
            {},
            {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "127.0.0.1"},
            {},
            403,
            id="forwarded-for-ignored",
        ),
        pytest.param(
            {"allow_from": ["10.0.0.0/8"]}, {"REMOTE_ADDR": "10.1.2.3"}, {}, 200, id="network"
        ),
        pytest.param(
            {"token": TOKEN, "allow_from": []},
            {"REMOTE_ADDR": "10.1.2.3"},
            {"Authorization": f"Bearer {TOKEN}"},
            200,
            id="token",
        ),
        pytest.param(
            {"token": TOKEN, "allow_from": []},
            LOCAL,
            {"Authorization": "Bearer wrong"},
            401,
            id="wrong-token",
        ),
        pytest.param({"token": TOKEN, "allow_from": []}, LOCAL, {}, 401, id="token-missing"),
        pytest.param({"token": TOKEN}, LOCAL, {}, 200, id="token-or-address"),
    ],
)
def test_access_to_the_metrics(
    registry: CollectorRegistry, options: dict, environ: dict, headers: dict, status: int
) -> None:
    recording = RecordingApp()
    outer = Outer(MetricsMiddleware(recording, registry=registry, **options))
    response = TestApp(outer).get(
        "/metrics", headers=headers, extra_environ=environ, status=status
    )
    assert recording.calls == []
    if status == 200:
        assert response.content_type == "text/plain"
        assert "goodrepo_http_requests_in_flight" in response.text
        assert response.headers["Cache-Control"] == "no-store"
    else:
        assert response.json["error"]["code"] == ("UNAUTHORIZED" if status == 401 else "FORBIDDEN")
        assert outer.environ[ERROR_CODE] == response.json["error"]["code"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_openmetrics_on_request(registry: CollectorRegistry) -> None:
    app = TestApp(MetricsMiddleware(RecordingApp(), registry=registry))
    response = app.get(
        "/metrics", headers={"Accept": "application/openmetrics-text"}, extra_environ=LOCAL
    )
    assert response.content_type == "application/openmetrics-text"
    assert response.text.rstrip().endswith("# EOF")


def test_the_metrics_path_is_not_counted_and_is_configurable(registry: CollectorRegistry) -> None:
    recording = RecordingApp()
    app = TestApp(MetricsMiddleware(recording, registry=registry, path="/internal/metrics"))
    app.get("/internal/metrics", extra_environ=LOCAL)
    app.get("/metrics")
    assert [c["PATH_INFO"] for c in recording.calls] == ["/metrics"]
    assert (
        sample(
            registry, "goodrepo_http_requests_total", method="GET", route="unmatched", status="200"
        )
        == 1
    )


def test_path_none_serves_nothing_and_metrics_app_is_mountable(
    registry: CollectorRegistry,
) -> None:
    recording = RecordingApp()
    middleware = MetricsMiddleware(recording, registry=registry, path=None)
    TestApp(middleware).get("/metrics", extra_environ=LOCAL)
    assert recording.environ["PATH_INFO"] == "/metrics"
    exposed = TestApp(middleware.metrics_app).get("/anything")
    assert "goodrepo_http_requests_total" in exposed.text


def test_two_middlewares_coexist_with_their_own_registries() -> None:
    first = MetricsMiddleware(RecordingApp())
    second = MetricsMiddleware(RecordingApp())
    TestApp(first).get("/")
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value(
            "goodrepo_http_requests_total",
            {"method": "GET", "route": "unmatched", "status": "200"},
        )
        is None
    )


def test_default_counters_are_documented_names() -> None:
    assert set(DEFAULT_COUNTERS) == {
        "blob_bytes_in",
        "blob_bytes_out",
        "publishes",
        "cache_hits",
        "cache_misses",
    }


CONFIG_ERRORS = [
    pytest.param({"path": "metrics"}, "path", id="relative-path"),
    pytest.param({"token": "short"}, "token", id="short-token"),
    pytest.param({"allow_from": ["localhost"]}, "allow_from", id="name-not-address"),
    pytest.param({"buckets": [1.0, 0.5]}, "buckets", id="unsorted-buckets"),
    pytest.param({"buckets": []}, "buckets", id="no-buckets"),
    pytest.param({"counters": {"bad-name": "x"}}, "counters", id="bad-counter-name"),
    pytest.param({"namespace": "good repo"}, "namespace", id="bad-namespace"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MetricsMiddleware(RecordingApp(), registry=CollectorRegistry(), **options)


def test_a_server_file_wrapper_is_observed_when_it_closes(registry: CollectorRegistry) -> None:
    handle = io.BytesIO(b"x" * 100)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](handle)

    middleware = MetricsMiddleware(app, registry=registry)
    status, headers, body, _ = call(middleware, **{"wsgi.file_wrapper": FileWrapper})
    assert isinstance(body, FileWrapper)
    assert sample(registry, "goodrepo_http_requests_in_flight") == 1
    body.close()
    assert sample(registry, "goodrepo_http_requests_in_flight") == 0
    labels = {"method": "GET", "route": "unmatched", "status": "200"}
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 1


def test_the_histogram_counts_each_request_in_its_bucket_and_the_sum(
    registry: CollectorRegistry,
) -> None:
    def slow(environ: dict) -> None:
        time.sleep(0.03)

    app = MetricsMiddleware(RecordingApp(inspect=slow), registry=registry, buckets=(0.01, 30.0))
    TestApp(app).get("/")
    TestApp(app).get("/")
    labels = {"method": "GET", "route": "unmatched", "status": "200"}
    name = "goodrepo_http_request_duration_seconds"
    assert sample(registry, name + "_bucket", le="0.01", **labels) == 0
    assert sample(registry, name + "_bucket", le="30.0", **labels) == 2
    assert sample(registry, name + "_bucket", le="+Inf", **labels) == 2
    assert sample(registry, name + "_count", **labels) == 2
    assert 0.06 <= (sample(registry, name + "_sum", **labels) or 0) < 60
    assert sample(registry, "goodrepo_http_requests_total", **labels) == 2


@pytest.mark.parametrize("version", ['"1.0.0"', "abc", "1.a"])
def test_an_accept_parameter_prometheus_cannot_read_gets_the_text_format(
    registry: CollectorRegistry, version: str
) -> None:
    app = TestApp(MetricsMiddleware(RecordingApp(), registry=registry))
    accept = f"application/openmetrics-text; version={version}"
    response = app.get("/metrics", headers={"Accept": accept}, extra_environ=LOCAL)
    assert response.status_int == 200
    assert response.content_type == "text/plain"
