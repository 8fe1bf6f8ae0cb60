"""HealthMiddleware: the three probes, checks with timeouts, 503s, paths and methods."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mwhelpers import Outer, RecordingApp
from webtest import TestApp

from middleware.health import Check, HealthMiddleware
from middleware.keys import ERROR_CODE, ROUTE


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that hung checks wait on; set at the end so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def fail() -> bool:
    return False


def boom() -> None:
    raise OSError("disk /secret/path is full")


@pytest.mark.parametrize("path", ["/health", "/health/live"])
def test_liveness_paths(recording_app: RecordingApp, path: str) -> None:
    app = TestApp(HealthMiddleware(recording_app, checks={"fails": fail}))
    response = app.get(path)
    assert response.json == {"status": "healthy"}
    assert response.headers["Cache-Control"] == "no-store"
    assert recording_app.calls == []


def test_ready_with_passing_checks(recording_app: RecordingApp) -> None:
    outer = Outer(HealthMiddleware(recording_app, checks={"kv": lambda: None, "disk": lambda: 1}))
    response = TestApp(outer).get("/health/ready")
    assert response.json["status"] == "healthy"
    assert set(response.json["checks"]) == {"kv", "disk"}
    for result in response.json["checks"].values():
        assert result["status"] == "pass"
        assert result["duration_ms"] >= 0
    assert outer.environ[ROUTE] == "/health/ready"


@pytest.mark.parametrize(
    ("check", "error"),
    [
        pytest.param(fail, None, id="returns-false"),
        pytest.param(boom, "OSError", id="raises"),
    ],
)
def test_a_failing_check_makes_ready_503(
    recording_app: RecordingApp, check: Any, error: str | None
) -> None:
    app = TestApp(HealthMiddleware(recording_app, checks={"ok": lambda: True, "bad": check}))
    response = app.get("/health/ready", status=503)
    assert response.json["status"] == "unhealthy"
    assert response.json["checks"]["ok"]["status"] == "pass"
    bad = response.json["checks"]["bad"]
    assert bad["status"] == "fail"
    assert bad.get("error") == error
    assert "/secret/path" not in response.text


def test_a_slow_check_times_out(recording_app: RecordingApp, release: threading.Event) -> None:
    checks = {"slow": Check(lambda: release.wait(5), timeout=0.1), "fast": lambda: True}
    app = TestApp(HealthMiddleware(recording_app, checks=checks))
    started = time.monotonic()
    response = app.get("/health/ready", status=503)
    assert time.monotonic() - started < 1.0
    assert response.json["checks"]["slow"]["status"] == "timeout"
    assert response.json["checks"]["slow"]["duration_ms"] >= 100
    assert response.json["checks"]["fast"]["status"] == "pass"


def test_a_hung_check_is_not_started_again(
    recording_app: RecordingApp, release: threading.Event
) -> None:
    calls = []

    def hangs() -> None:
        calls.append(1)
        release.wait(5)

    app = TestApp(HealthMiddleware(recording_app, checks={"hangs": hangs}, timeout=0.05))
    for _ in range(3):
        app.get("/health/ready", status=503)
    assert len(calls) == 1
    release.set()  # the hung run ends; the next probes see it pass, then start new runs
    deadline = time.monotonic() + 5
    while app.get("/health/ready", expect_errors=True).status_int != 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    before = len(calls)
    app.get("/health/ready", status=200)
    assert len(calls) == before + 1


def test_checks_run_in_parallel(recording_app: RecordingApp) -> None:
    checks = {f"c{i}": (lambda: time.sleep(0.2)) for i in range(4)}
    app = TestApp(HealthMiddleware(recording_app, checks=checks))
    started = time.monotonic()
    app.get("/health/ready")
    assert time.monotonic() - started < 0.6


def test_paths_are_configurable_and_can_be_disabled(recording_app: RecordingApp) -> None:
    middleware = HealthMiddleware(
        recording_app, health_path=None, live_path="/livez", ready_path="/readyz"
    )
    app = TestApp(middleware)
    app.get("/livez")
    app.get("/readyz")
    app.get("/health")
    app.get("/health/ready")
    assert [c["PATH_INFO"] for c in recording_app.calls] == ["/health", "/health/ready"]


def test_head_and_other_methods(recording_app: RecordingApp) -> None:
    outer = Outer(HealthMiddleware(recording_app))
    app = TestApp(outer)
    head = app.head("/health/ready")
    assert head.body == b""
    refused = app.post("/health/live", status=405)
    assert refused.headers["Allow"] == "GET, HEAD"
    assert refused.json["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert outer.environ[ERROR_CODE] == "METHOD_NOT_ALLOWED"
    assert recording_app.calls == []


def test_other_paths_pass_through(recording_app: RecordingApp) -> None:
    TestApp(HealthMiddleware(recording_app)).get("/healthz")
    assert recording_app.environ["PATH_INFO"] == "/healthz"


CONFIG_ERRORS = [
    pytest.param({"timeout": 0}, "timeout", id="zero-timeout"),
    pytest.param({"checks": {"x": "not callable"}}, "checks", id="not-callable"),
    pytest.param({"checks": {"": fail}}, "checks", id="empty-name"),
    pytest.param(
        {"checks": {"x": Check(fail, timeout=-1)}}, "checks", id="negative-check-timeout"
    ),
    pytest.param({"ready_path": "ready"}, "ready_path", id="relative-path"),
    pytest.param({"live_path": "/health"}, "live_path", id="duplicate-path"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        HealthMiddleware(RecordingApp(), **options)
