"""RateLimitMiddleware: rules, keys, strategies, headers, trusted proxies, storage failures."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import pytest
import redis
from limits.storage import storage_from_string
from mwhelpers import Outer, RecordingApp, call, free_port
from webtest import TestApp

from middleware import ratelimit
from middleware.keys import CLIENT_ADDR, ERROR_CODE, PRINCIPAL
from middleware.ratelimit import RateLimitMiddleware, Rule


def limited(app: Any, *rules: Rule | dict, **options: Any) -> TestApp:
    return TestApp(RateLimitMiddleware(app, rules=list(rules), **options))


def addr(ip: str, **more: Any) -> dict[str, Any]:
    return {"REMOTE_ADDR": ip, **more}


def test_limit_then_429_with_retry_after_and_headers(recording_app: RecordingApp) -> None:
    outer = Outer(RateLimitMiddleware(recording_app, rules=[Rule("2/minute")]))
    app = TestApp(outer)
    first = app.get("/x")
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert 0 < int(first.headers["RateLimit-Reset"]) <= 60
    second = app.get("/x")
    assert second.headers["RateLimit-Remaining"] == "0"
    refused = app.get("/x", status=429)
    assert refused.json["error"]["code"] == "RATE_LIMITED"
    assert set(refused.json["error"]) == {"code", "message", "request_id"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert outer.environ[ERROR_CODE] == "RATE_LIMITED"
    assert len(recording_app.calls) == 2


@pytest.mark.parametrize(
    ("rule", "method", "path", "applies"),
    [
        pytest.param(
            Rule("1/minute", path="/auth/login"), "POST", "/auth/login", True, id="exact"
        ),
        pytest.param(
            Rule("1/minute", path="/auth/login"),
            "POST",
            "/auth/login/",
            False,
            id="exact-not-below",
        ),
        pytest.param(Rule("1/minute", prefix="/v1/"), "GET", "/v1/a/b", True, id="prefix"),
        pytest.param(Rule("1/minute", prefix="/v1/"), "GET", "/v2/a", False, id="prefix-other"),
        pytest.param(
            Rule("1/minute", regex=r"/blob$"), "GET", "/v1/a/b/1/x/blob", True, id="regex"
        ),
        pytest.param(
            Rule("1/minute", regex=r"^/blob$"), "GET", "/v1/blob", False, id="regex-anchored"
        ),
        pytest.param(Rule("1/minute", methods=["post"]), "POST", "/x", True, id="method"),
        pytest.param(Rule("1/minute", methods=["POST"]), "GET", "/x", False, id="other-method"),
        pytest.param(Rule("1/minute"), "DELETE", "/anything", True, id="everything"),
    ],
)
def test_rule_matching(
    recording_app: RecordingApp, rule: Rule, method: str, path: str, applies: bool
) -> None:
    app = limited(recording_app, rule)
    first = app.request(path, method=method)
    assert ("RateLimit-Limit" in first.headers) is applies
    app.request(path, method=method, status=429 if applies else 200)


def test_a_method_counts_whatever_its_case(recording_app: RecordingApp) -> None:
    # The core app, like other werkzeug apps, routes "post" as a POST; so must the rule.
    # (PEP 3333's lint wants methods upper-case, hence lint off.)
    app = TestApp(
        RateLimitMiddleware(recording_app, rules=[Rule("1/minute", methods=["POST"])]), lint=False
    )
    app.request("/auth/login", method="post")
    app.request("/auth/login", method="POST", status=429)


def test_clients_are_counted_apart_by_address(recording_app: RecordingApp) -> None:
    app = limited(recording_app, Rule("1/minute"))
    app.get("/x", extra_environ=addr("10.0.0.1"))
    app.get("/x", extra_environ=addr("10.0.0.2"))
    app.get("/x", extra_environ=addr("10.0.0.1"), status=429)
    assert recording_app.environ[CLIENT_ADDR] == "10.0.0.2"


def with_principal(sub: str, anonymous: bool = False) -> dict[str, Any]:
    return {PRINCIPAL: {"sub": sub, "scopes": [], "anonymous": anonymous}}


def test_principal_key_counts_subjects_and_falls_back_to_the_address(
    recording_app: RecordingApp,
) -> None:
    app = limited(recording_app, Rule("1/minute", key="principal"))
    app.get("/x", extra_environ=addr("10.0.0.1", **with_principal("alice")))
    app.get("/x", extra_environ=addr("10.0.0.1", **with_principal("bob")))
    app.get("/x", extra_environ=addr("10.0.0.9", **with_principal("alice")), status=429)
    anonymous = with_principal("anonymous", anonymous=True)
    app.get("/x", extra_environ=addr("10.0.0.1", **anonymous))
    app.get("/x", extra_environ=addr("10.0.0.2", **anonymous))
    app.get("/x", extra_environ=addr("10.0.0.1"), status=429)  # no principal: address


def test_custom_key_and_exemption(recording_app: RecordingApp) -> None:
    def tenant(environ: dict) -> str | None:
        return environ.get("HTTP_X_TENANT")  # None: not limited

    app = limited(recording_app, Rule("1/minute", key=tenant))
    app.get("/x", headers={"X-Tenant": "a"})
    app.get("/x", headers={"X-Tenant": "b"})
    app.get("/x", headers={"X-Tenant": "a"}, status=429)
    for _ in range(3):
        response = app.get("/x")
        assert "RateLimit-Limit" not in response.headers


def test_several_limits_in_one_rule_and_the_tightest_is_reported(
    recording_app: RecordingApp,
) -> None:
    app = limited(recording_app, Rule("3/minute;2/hour"))
    response = app.get("/x")
    assert response.headers["RateLimit-Limit"] == "2"
    assert response.headers["RateLimit-Remaining"] == "1"
    app.get("/x")
    refused = app.get("/x", status=429)
    assert refused.headers["RateLimit-Limit"] == "2"
    assert int(refused.headers["Retry-After"]) > 60


def test_every_matching_rule_is_charged(recording_app: RecordingApp) -> None:
    app = limited(
        recording_app,
        Rule("5/minute", name="all"),
        {"limit": "1/minute", "path": "/auth/login", "methods": ["POST"], "name": "login"},
    )
    login = app.post("/auth/login")
    assert login.headers["RateLimit-Limit"] == "1"
    app.post("/auth/login", status=429)
    other = app.get("/v1/x")
    assert other.headers["RateLimit-Limit"] == "5"
    assert other.headers["RateLimit-Remaining"] == "2"


STRATEGY_NAMES = ["moving-window", "fixed-window", "sliding-window-counter"]


def check_strategy(app: TestApp) -> None:
    """Two allowed requests counting down, then a refusal, with consistent headers."""
    for remaining in ("1", "0"):
        response = app.get("/x")
        assert response.headers["RateLimit-Remaining"] == remaining
        assert 0 <= int(response.headers["RateLimit-Reset"]) <= 60
    refused = app.get("/x", status=429)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_strategies(recording_app: RecordingApp, strategy: str) -> None:
    check_strategy(limited(recording_app, Rule("2/minute"), strategy=strategy))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_counters_live_under_the_keys_limits_uses(
    recording_app: RecordingApp, strategy: str
) -> None:
    """The keys made once per limit are the ones ``limits``' own strategies read."""
    from limits import parse
    from limits.strategies import STRATEGIES

    middleware = RateLimitMiddleware(
        recording_app, rules=[Rule("5/minute", name="keyed")], strategy=strategy, key_prefix="kp"
    )
    TestApp(middleware).get("/x", extra_environ=addr("10.1.2.3"))
    limiter = STRATEGIES[strategy](middleware.storage)
    stats = limiter.get_window_stats(parse("5/minute"), "kp", "keyed", "addr:10.1.2.3")
    assert stats.remaining == 4


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded", "client"),
    [
        pytest.param([], "10.0.0.1", "1.2.3.4", "10.0.0.1", id="no-trusted-proxies"),
        pytest.param(["10.0.0.1"], "10.0.0.2", "1.2.3.4", "10.0.0.2", id="untrusted-peer"),
        pytest.param(["10.0.0.1"], "10.0.0.1", "1.2.3.4", "1.2.3.4", id="trusted-peer"),
        pytest.param(["10.0.0.1"], "10.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4", id="spoofed-left"),
        pytest.param(["10.0.0.0/8"], "10.0.0.1", "1.2.3.4, 10.9.9.9", "1.2.3.4", id="proxy-chain"),
        pytest.param(
            ["10.0.0.0/8"], "10.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1", id="all-trusted"
        ),
        pytest.param(["10.0.0.1"], "10.0.0.1", "garbage", "10.0.0.1", id="garbage-hop"),
        pytest.param(["10.0.0.1"], "10.0.0.1", "", "10.0.0.1", id="empty-header"),
        pytest.param(["::1"], "::1", "2001:db8::1", "2001:db8::1", id="ipv6"),
        pytest.param(["10.0.0.1"], "10.0.0.1", " 1.2.3.4 ", "1.2.3.4", id="spaces"),
    ],
)
def test_x_forwarded_for_only_from_trusted_proxies(
    recording_app: RecordingApp, trusted: list, remote: str, forwarded: str, client: str
) -> None:
    app = limited(recording_app, Rule("100/minute"), trusted_proxies=trusted)
    app.get("/x", extra_environ=addr(remote, HTTP_X_FORWARDED_FOR=forwarded))
    assert recording_app.environ[CLIENT_ADDR] == client


def test_a_spoofed_header_cannot_dodge_the_limit(recording_app: RecordingApp) -> None:
    app = limited(recording_app, Rule("1/minute"), trusted_proxies=["10.0.0.1"])
    app.get("/x", extra_environ=addr("10.0.0.1", HTTP_X_FORWARDED_FOR="9.9.9.1, 1.2.3.4"))
    app.get(
        "/x", extra_environ=addr("10.0.0.1", HTTP_X_FORWARDED_FOR="9.9.9.2, 1.2.3.4"), status=429
    )


def dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_storage_failure_fails_open_and_logs(
    recording_app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = limited(recording_app, Rule("1/minute"), storage=dead_redis())
    with caplog.at_level(logging.ERROR, logger="middleware.ratelimit"):
        app.get("/x")
        app.get("/x")
    assert len(recording_app.calls) == 2
    assert "letting the request through" in caplog.text


def test_storage_failure_fails_closed_when_asked(
    recording_app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = limited(recording_app, Rule("1/minute"), storage=dead_redis(), on_storage_error="closed")
    with caplog.at_level(logging.ERROR, logger="middleware.ratelimit"):
        response = app.get("/x", status=503)
    assert response.json["error"]["code"] == "RATE_LIMIT_UNAVAILABLE"
    assert response.headers["Retry-After"] == "1"
    assert recording_app.calls == []
    assert "refusing the request" in caplog.text


def test_requests_without_matching_rules_skip_the_storage(recording_app: RecordingApp) -> None:
    app = limited(recording_app, Rule("1/minute", prefix="/v1/"), storage=dead_redis())
    response = app.get("/health")
    assert "RateLimit-Limit" not in response.headers


def test_redis_storage_is_shared_between_instances(
    redis_url: str, recording_app: RecordingApp
) -> None:
    """Two middlewares on one Redis behave like two processes sharing a limit."""
    rules = [Rule("3/minute", name="shared-test")]
    first = limited(recording_app, *rules, storage=redis_url, key_prefix="t-shared")
    second = limited(recording_app, *rules, storage=redis_url, key_prefix="t-shared")
    other_prefix = limited(recording_app, *rules, storage=redis_url, key_prefix="t-other")
    try:
        first.get("/x")
        second.get("/x")
        response = first.get("/x")
        assert response.headers["RateLimit-Remaining"] == "0"
        second.get("/x", status=429)
        other_prefix.get("/x", status=200)
    finally:
        for app in (first, second, other_prefix):
            app.app.close()


def redis_clients(url: str) -> int:
    """How many clients the Redis server at ``url`` has connected, this query's included."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


def test_close_releases_the_redis_connections(redis_url: str, recording_app: RecordingApp) -> None:
    before = redis_clients(redis_url)
    middleware = RateLimitMiddleware(
        recording_app,
        rules=[Rule("5/minute")],
        storage=redis_url,
        key_prefix=f"t-close-{free_port()}",
    )
    app = TestApp(middleware)
    app.get("/x")
    assert redis_clients(redis_url) == before + 1
    middleware.close()
    assert redis_clients(redis_url) == before
    middleware.close()  # again: nothing left to close
    # A request after close() connects again and still counts against the same limit.
    assert app.get("/x").headers["RateLimit-Remaining"] == "3"
    middleware.close()
    assert redis_clients(redis_url) == before


def test_close_leaves_a_storage_instance_to_its_owner(
    redis_url: str, recording_app: RecordingApp
) -> None:
    storage = storage_from_string(redis_url)
    try:
        middleware = RateLimitMiddleware(
            recording_app,
            rules=[Rule("5/minute")],
            storage=storage,
            key_prefix=f"t-own-{free_port()}",
        )
        TestApp(middleware).get("/x")
        before = redis_clients(redis_url)
        middleware.close()
        assert redis_clients(redis_url) == before
    finally:
        storage.storage.close()


def test_close_with_memory_storage_does_nothing(recording_app: RecordingApp) -> None:
    middleware = RateLimitMiddleware(recording_app, rules=[Rule("2/minute")])
    app = TestApp(middleware)
    app.get("/x")
    middleware.close()
    assert app.get("/x").headers["RateLimit-Remaining"] == "0"  # the window was kept


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_redis_strategies(redis_url: str, recording_app: RecordingApp, strategy: str) -> None:
    prefix = f"{strategy}-{free_port()}"  # fresh counters on every run
    options = {"storage": redis_url, "strategy": strategy, "key_prefix": prefix}
    app = limited(recording_app, Rule("2/minute"), **options)
    try:
        check_strategy(app)
    finally:
        app.app.close()


CONFIG_ERRORS = [
    pytest.param({"rules": [Rule("lots")]}, "rules\\[0\\].limit", id="bad-limit"),
    pytest.param({"rules": [Rule("0/minute")]}, "no requests", id="zero-requests"),
    pytest.param({"rules": [Rule("5/0 minutes")]}, "zero periods", id="zero-periods"),
    pytest.param({"rules": [Rule("10/second;2/2 years")]}, "longer than a year", id="year+"),
    pytest.param(
        {"rules": [Rule("1/minute", path="/a", prefix="/b")]}, "rules\\[0\\]", id="two-matchers"
    ),
    pytest.param({"rules": [Rule("1/minute", regex="(")]}, "regex", id="bad-regex"),
    pytest.param({"rules": [Rule("1/minute", path="a")]}, "path", id="relative-path"),
    pytest.param({"rules": [Rule("1/minute", methods="GET")]}, "methods", id="methods-string"),
    pytest.param({"rules": [Rule("1/minute", key="user")]}, "key", id="unknown-key"),
    pytest.param(
        {"rules": [{"limit": "1/minute", "paht": "/x"}]}, "unknown fields", id="typo-field"
    ),
    pytest.param({"rules": ["1/minute"]}, "rules\\[0\\]", id="rule-not-a-rule"),
    pytest.param({"strategy": "leaky-bucket"}, "strategy", id="unknown-strategy"),
    pytest.param({"key_prefix": "a\x00b"}, "key_prefix", id="nul-in-prefix"),
    pytest.param({"rules": [Rule("1/minute", name="a\x00b")]}, "name", id="nul-in-name"),
    pytest.param({"storage": "memcache-ish://x"}, "storage", id="unknown-storage"),
    pytest.param({"storage": 42}, "storage", id="storage-not-a-uri"),
    pytest.param({"trusted_proxies": ["proxy.local"]}, "trusted_proxies", id="proxy-not-an-ip"),
    pytest.param({"on_storage_error": "maybe"}, "on_storage_error", id="bad-failure-mode"),
    pytest.param({"key_prefix": ""}, "key_prefix", id="empty-prefix"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    options = {"rules": [Rule("1/minute")], **options}
    with pytest.raises(ValueError, match=named):
        RateLimitMiddleware(RecordingApp(), **options)


def test_memory_windows_hold_no_objects_the_collector_tracks(recording_app: RecordingApp) -> None:
    middleware = RateLimitMiddleware(recording_app, rules=[Rule("1000/minute")])

    def hit() -> None:
        body = call(middleware, REMOTE_ADDR="10.0.0.1")[2]
        body.close()

    for _ in range(20):  # warm up caches
        hit()
    threads_before = threading.active_count()
    gc.collect()
    tracked_before = len(gc.get_objects())
    for _ in range(300):
        hit()
    recording_app.calls.clear()
    gc.collect()
    assert len(gc.get_objects()) - tracked_before < 30  # not one object per hit
    assert threading.active_count() <= threads_before  # no timer threads


def test_memory_moving_window_slides(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: clock[0])
    middleware = RateLimitMiddleware(recording_app, rules=[Rule("2/minute")])
    app = TestApp(middleware)
    app.get("/x")
    clock[0] += 30
    second = app.get("/x")
    assert second.headers["RateLimit-Reset"] == "30"  # the first hit leaves the window then
    refused = app.get("/x", status=429)
    assert refused.headers["Retry-After"] == "30"
    clock[0] += 30.5
    app.get("/x")  # the first hit has left the window
    app.get("/x", status=429)  # the second is still in it
    clock[0] += 61
    response = app.get("/x")
    assert response.headers["RateLimit-Remaining"] == "1"


def test_memory_windows_of_idle_clients_are_swept(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [2_000_000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: clock[0])
    middleware = RateLimitMiddleware(recording_app, rules=[Rule("5/second")])
    app = TestApp(middleware)
    for n in range(20):
        app.get("/x", extra_environ=addr(f"10.0.0.{n}"))
    storage = middleware.storage
    assert storage.get_moving_window("unknown", 5, 1) == (clock[0], 0)
    clock[0] += 60
    app.get("/x", extra_environ=addr("10.9.9.9"))  # the next hit after the interval sweeps
    assert len(storage._windows) == 1
    storage.clear("anything")
    assert storage.reset() == 1
    assert len(storage._windows) == 0


def test_two_instances_stacked_answer_with_the_tighter_limit(recording_app: RecordingApp) -> None:
    inner = RateLimitMiddleware(recording_app, rules=[Rule("2/minute")], key_prefix="inner")
    app = limited(inner, Rule("50/second"), key_prefix="outer")

    def limits(response: Any) -> list[tuple[str, str]]:
        return [(k, v) for k, v in response.headerlist if k.lower().startswith("ratelimit-")]

    first = app.get("/x")
    assert [v for _, v in limits(first)][:2] == ["2", "1"]  # the inner one: 1 left of 2
    app.get("/x")
    refused = app.get("/x", status=429)
    assert [v for _, v in limits(refused)][:2] == ["2", "0"]
    assert len(limits(refused)) == 3
