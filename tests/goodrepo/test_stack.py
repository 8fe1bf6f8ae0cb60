"""The standard stack in-process: auth endpoints, admin API, metrics, health, order."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import webtest
from argon2 import PasswordHasher
from prometheus_client import CollectorRegistry

from goodrepo import schema as schema_mod
from goodrepo.errors import ConfigurationError, InvalidConfig
from goodrepo.stack import GoodrepoApp, create_app

PASSWORD = "a long enough owner passphrase"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def make(tmp_path: Path, **overrides: Any) -> GoodrepoApp:
    app = create_app(
        env={},
        data=str(tmp_path / "data"),
        admin_password=PASSWORD,
        password_hasher=CHEAP,
        registry=CollectorRegistry(),
        **overrides,
    )
    assert app.bootstrap_admin() is None  # the configured password is used
    return app


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[GoodrepoApp]:
    app = make(tmp_path)
    yield app
    app.close()


@pytest.fixture
def web(stack: GoodrepoApp) -> webtest.TestApp:
    return webtest.TestApp(stack)


def login(web: webtest.TestApp, username: str = "admin", password: str = PASSWORD) -> Any:
    return web.post_json("/auth/login", {"username": username, "password": password}).json


def test_close_releases_the_rate_limit_storage(tmp_path: Path, redis_url: str) -> None:
    def clients() -> int:
        probe = redis.Redis.from_url(redis_url)
        try:
            return int(probe.info("clients")["connected_clients"])
        finally:
            probe.close()

    before = clients()
    app = make(tmp_path, ratelimit_storage=redis_url)
    try:
        login(webtest.TestApp(app))  # the login rule counts in Redis
        assert clients() == before + 1
    finally:
        app.close()
    assert clients() == before


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_answer_shape(web: webtest.TestApp) -> None:
    body = login(web)
    assert body["ok"] is True and body["token_type"] == "Bearer"
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 900
    assert body["user"] == {"username": "admin", "scopes": ["admin"]}
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "HS256" and header["kid"]
    me = web.get("/auth/me", headers=bearer(body["token"])).json
    assert me == {"ok": True, "user": {"username": "admin", "scopes": ["admin"]}}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(
            {"username": "admin", "password": "wrong password!"},
            401,
            "INVALID_CREDENTIALS",
            id="wrong-password",
        ),
        pytest.param(
            {"username": "nobody", "password": "wrong password!"},
            401,
            "INVALID_CREDENTIALS",
            id="unknown-user",
        ),
        pytest.param({"username": "admin"}, 400, "INVALID_REQUEST", id="missing-password"),
        pytest.param({"username": 5, "password": "x"}, 400, "INVALID_REQUEST", id="not-string"),
    ],
)
def test_login_failures(web: webtest.TestApp, body: Any, status: int, code: str) -> None:
    res = web.post_json("/auth/login", body, status=status)
    assert res.json["error"]["code"] == code
    assert res.headers["X-Request-ID"] == res.json["error"]["request_id"]


def test_unknown_user_and_wrong_password_answer_alike(web: webtest.TestApp) -> None:
    a = web.post_json("/auth/login", {"username": "admin", "password": "nope nope"}, status=401)
    b = web.post_json("/auth/login", {"username": "ghost", "password": "nope nope"}, status=401)
    assert a.json["error"]["message"] == b.json["error"]["message"]


def test_malformed_login_body(web: webtest.TestApp) -> None:
    res = web.post("/auth/login", b"{", headers={"Content-Type": "application/json"}, status=400)
    assert res.json["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/login", rb'{"username": "admin", "password": "a long one \ud800 yes"}'),
        ("/auth/refresh", rb'{"refresh_token": "\udc00"}'),
        ("/auth/login", b"[" * 50_000),
        # Not UTF-8: json.loads would read these, and the escape in them, as UTF-16/32.
        (
            "/auth/login",
            '{"username": "admin", "password": "a long one \\ud800"}'.encode("utf-16"),
        ),
        ("/auth/refresh", '{"refresh_token": "x"}'.encode("utf-32-le")),
    ],
    ids=["login-lone-surrogate", "refresh-lone-surrogate", "deep", "utf-16", "utf-32"],
)
def test_bodies_json_cannot_hold_are_refused(web: webtest.TestApp, path: str, body: bytes) -> None:
    res = web.post(path, body, headers={"Content-Type": "application/json"}, status=400)
    assert res.json["error"]["code"] == "INVALID_REQUEST"


def test_login_throttled_per_address(tmp_path: Path) -> None:
    app = make(tmp_path, login_rate_limit="3/minute")
    try:
        web = webtest.TestApp(app)
        for _ in range(3):
            web.post_json("/auth/login", {"username": "x", "password": "y"}, status=401)
        res = web.post_json("/auth/login", {"username": "x", "password": "y"}, status=429)
        assert res.json["error"]["code"] == "RATE_LIMITED"
        assert int(res.headers["Retry-After"]) > 0
    finally:
        app.close()


def logins_at_once(
    web: webtest.TestApp,
    stack: GoodrepoApp,
    monkeypatch: pytest.MonkeyPatch,
    passwords: list[str],
    seconds: float,
) -> list[int]:
    """The statuses of logins as admin with ``passwords``, all sent at once, each from an
    address of its own, each password check taking ``seconds`` more."""
    real = stack.users.authenticate

    def slow(*args: Any) -> Any:
        time.sleep(seconds)
        return real(*args)

    monkeypatch.setattr(stack.users, "authenticate", slow)
    start = threading.Barrier(len(passwords))
    statuses: list[int] = []

    def log_in(i: int) -> None:
        start.wait()
        res = web.post_json(
            "/auth/login",
            {"username": "admin", "password": passwords[i]},
            extra_environ={"REMOTE_ADDR": f"192.0.2.{i + 1}"},
            expect_errors=True,
        )
        statuses.append(res.status_int)

    threads = [threading.Thread(target=log_in, args=(i,)) for i in range(len(passwords))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(statuses)


def test_concurrent_guesses_get_no_more_than_the_limit(
    web: webtest.TestApp, stack: GoodrepoApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The per-username limit (5/minute) holds for guesses under way as for guesses done:
    # every guess is let in or held back before the first one ends.
    guesses = [f"guess number {i}" for i in range(12)]
    statuses = logins_at_once(web, stack, monkeypatch, guesses, 0.2)
    assert statuses == [401] * 5 + [429] * 7


def test_concurrent_logins_that_succeed_are_queued_not_refused(
    web: webtest.TestApp, stack: GoodrepoApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logins_at_once(web, stack, monkeypatch, [PASSWORD] * 8, 0.1) == [200] * 8


def test_refresh_rotates_and_replay_revokes_the_family(web: webtest.TestApp) -> None:
    first = login(web)["refresh_token"]
    second = web.post_json("/auth/refresh", {"refresh_token": first}).json
    assert second["refresh_token"] != first and second["token"]
    web.post_json("/auth/refresh", {"refresh_token": first}, status=401)
    web.post_json("/auth/refresh", {"refresh_token": second["refresh_token"]}, status=401)


def test_logout_revokes_the_refresh_token(web: webtest.TestApp) -> None:
    session = login(web)
    refresh, auth = session["refresh_token"], bearer(session["token"])
    web.post_json("/auth/logout", {"refresh_token": refresh}, status=401)  # needs a token
    web.post_json("/auth/logout", {"refresh_token": refresh}, headers=auth)
    web.post_json("/auth/refresh", {"refresh_token": refresh}, status=401)
    web.post_json("/auth/logout", {"refresh_token": refresh}, headers=auth, status=401)


def test_logout_ends_only_the_callers_own_sessions(web: webtest.TestApp) -> None:
    admin = login(web)
    body = {"username": "kim", "password": "a quiet long passphrase", "scopes": ["read"]}
    web.post_json("/admin/users", body, headers=bearer(admin["token"]), status=201)
    kim = login(web, "kim", "a quiet long passphrase")
    mine = {"refresh_token": admin["refresh_token"]}
    res = web.post_json("/auth/logout", mine, headers=bearer(kim["token"]), status=401)
    assert res.json["error"]["message"] == "invalid refresh token"
    web.post_json("/auth/refresh", mine)  # still alive


def test_logout_with_a_spent_refresh_token_is_a_replay(web: webtest.TestApp) -> None:
    session = login(web)
    first = session["refresh_token"]
    second = web.post_json("/auth/refresh", {"refresh_token": first}).json["refresh_token"]
    res = web.post_json(
        "/auth/logout", {"refresh_token": first}, headers=bearer(session["token"]), status=401
    )
    assert res.json["error"]["code"] == "UNAUTHORIZED"
    assert res.json["error"]["message"] == "refresh token already used; its session is revoked"
    assert res.headers["WWW-Authenticate"].startswith("Bearer")
    # As on refresh, the replay revoked the whole session, the newest token included.
    web.post_json("/auth/refresh", {"refresh_token": second}, status=401)


def test_change_password(web: webtest.TestApp) -> None:
    session = login(web)
    headers = bearer(session["token"])
    weak = web.post_json(
        "/auth/change-password",
        {"old_password": PASSWORD, "new_password": "password1234"},
        headers=headers,
        status=400,
    ).json["error"]
    assert weak["code"] == "PASSWORD_POLICY" and weak["details"]["reasons"]
    web.post_json(
        "/auth/change-password",
        {"old_password": "not it at all", "new_password": "another long passphrase"},
        headers=headers,
        status=401,
    )
    web.post_json(
        "/auth/change-password",
        {"old_password": PASSWORD, "new_password": "another long passphrase"},
        headers=headers,
    )
    web.post_json("/auth/refresh", {"refresh_token": session["refresh_token"]}, status=401)
    login(web, password="another long passphrase")


def test_users_admin_api(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    created = web.post_json(
        "/admin/users",
        {"username": "Carol", "password": "a quiet long passphrase", "scopes": ["read"]},
        headers=admin,
        status=201,
    ).json
    assert created["user"] == {
        **created["user"],
        "username": "carol",
        "scopes": ["read"],
        "disabled": False,
    }
    again = web.post_json(
        "/admin/users",
        {"username": "carol", "password": "a quiet long passphrase"},
        headers=admin,
        status=409,
    )
    assert again.json["error"]["code"] == "USER_EXISTS"
    listing = web.get("/admin/users", headers=admin).json
    assert [u["username"] for u in listing["users"]] == ["admin", "carol"]
    assert all("password" not in str(u) and "hash" not in str(u) for u in listing["users"])
    carol = bearer(login(web, "carol", "a quiet long passphrase")["token"])
    web.get("/admin/users", headers=carol, status=403)
    web.patch_json("/admin/users/carol", {"scopes": ["read", "write"]}, headers=admin)
    web.patch_json("/admin/users/carol", {"colour": "red"}, headers=admin, status=400)
    web.patch_json("/admin/users/carol", {"disabled": True}, headers=admin)
    web.get("/v1/acme/app/latest", headers=carol, status=401)  # her token stops at once
    web.post_json(
        "/auth/login", {"username": "carol", "password": "a quiet long passphrase"}, status=401
    )
    web.delete("/admin/users/carol", headers=admin, status=204)
    web.delete("/admin/users/carol", headers=admin, status=404)


def test_keys_rotation_keeps_old_tokens_valid(web: webtest.TestApp) -> None:
    old = login(web)["token"]
    keys = web.get("/admin/keys", headers=bearer(old)).json["keys"]
    assert all(set(k) == {"kid", "created_at", "retired_at", "current"} for k in keys)
    rotated = web.post("/admin/keys/rotate", headers=bearer(old)).json
    new = login(web)["token"]
    assert jwt.get_unverified_header(new)["kid"] == rotated["kid"]
    assert jwt.get_unverified_header(old)["kid"] != rotated["kid"]
    web.get("/admin/keys", headers=bearer(old))
    web.get("/admin/keys", headers=bearer(new))


def test_api_tokens(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    made = web.post_json(
        "/admin/tokens",
        {"name": "ci", "scopes": ["read", "write"], "expires_in": 3600},
        headers=admin,
        status=201,
    ).json
    assert set(made) >= {"ok", "id", "token", "name", "scopes", "expires_at"}
    ci = bearer(made["token"])
    web.put(
        "/v1/acme/app/1.0.0/linux/blob",
        b"x",
        headers={**ci, "Content-Type": "application/octet-stream"},
        status=201,
    )
    web.get("/admin/tokens", headers=ci, status=403)
    listed = web.get("/admin/tokens", headers=admin).json["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    web.delete(f"/admin/tokens/{made['id']}", headers=admin, status=204)
    web.get("/v1/acme/app/latest", headers=ci, status=401)


def _lifetime(made: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    return expires.timestamp() - time.time()


@pytest.mark.parametrize(("max_ttl", "expected"), [(None, 90 * 86400), (86400, 86400)])
def test_api_token_lifetime_defaults_within_the_maximum(
    tmp_path: Path, max_ttl: int | None, expected: int
) -> None:
    app = make(tmp_path, **({} if max_ttl is None else {"api_token_max_ttl": max_ttl}))
    try:
        web = webtest.TestApp(app)
        admin = bearer(login(web)["token"])
        made = web.post_json(
            "/admin/tokens", {"name": "ci", "scopes": ["read"]}, headers=admin, status=201
        ).json
        assert abs(_lifetime(made) - expected) < 600
    finally:
        app.close()


def test_config_and_features(web: webtest.TestApp, stack: GoodrepoApp) -> None:
    admin = bearer(login(web)["token"])
    config = web.get("/admin/config", headers=admin).json["config"]
    assert config == stack.repo.schema
    broken = {**config, "routes": []}
    res = web.put_json("/admin/config", broken, headers=admin, status=422)
    assert res.json["error"]["code"] == "INVALID_CONFIG"
    assert res.json["error"]["details"]["problems"][0]["path"].startswith("$")
    web.put("/admin/config", b'{"a": 1, "a": 2}', headers=admin, status=422)
    assert stack.repo.schema == config
    config["features"]["mutable_tags"] = False
    web.put_json("/admin/config", config, headers=admin)
    assert web.get("/admin/features", headers=admin).json["features"]["mutable_tags"] is False
    web.put_json("/admin/features", {"mutable_tags": True}, headers=admin)
    assert stack.repo.schema["features"]["mutable_tags"] is True
    res = web.put_json("/admin/features", {"teleport": True}, headers=admin, status=422)
    assert res.json["error"]["code"] == "INVALID_CONFIG"
    bad = {"teleport": "yes", "mutable_tags": "no", "allow_overwrite_artifacts": False}
    res = web.put_json("/admin/features", bad, headers=admin, status=422)
    assert res.json["error"]["details"]["problems"] == [  # one per bad member, in order
        {"path": "$.features.teleport", "message": "unknown feature"},
        {"path": "$.features.mutable_tags", "message": "must be true or false"},
    ]
    assert stack.repo.schema["features"]["mutable_tags"] is True  # nothing changed
    for path in ["/admin/entities", "/admin/routes", "/admin/blob-stores", "/admin/auth/scopes"]:
        assert web.get(path, headers=admin).json["ok"] is True


def test_rocksdb_and_events(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    for version in ("1.0.0", "2.0.0"):
        web.put(
            f"/v1/acme/app/{version}/linux/blob",
            b"x",
            headers={**admin, "Content-Type": "application/octet-stream"},
        )
    stats = web.get("/rocksdb/stats", headers=admin).json
    assert stats["approximate"] is True and stats["stats"]["estimate-num-keys"] >= 1
    keys = web.get("/rocksdb/keys?prefix=d:&limit=1", headers=admin).json
    assert len(keys["keys"]) == 1 and keys["truncated"] is True
    web.get("/rocksdb/keys?limit=5000", headers=admin, status=400)
    events = web.get("/v1/events?after=0&limit=10", headers=admin).json
    assert events["events"][0]["type"] == "artifact.published"
    assert events["next_after"] == events["events"][-1]["seq"]
    for query in ["after=%C2%B2", "limit=%D9%A1", "after=" + "1" * 5000, "after=-1", "limit=0"]:
        res = web.get(f"/v1/events?{query}", headers=admin, status=400)
        assert res.json["error"]["code"] == "VALIDATION_ERROR"


def test_admin_endpoints_need_admin(web: webtest.TestApp) -> None:
    for path in ["/admin/config", "/admin/users", "/rocksdb/stats", "/v1/events"]:
        res = web.get(path, status=401)
        assert res.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_access(tmp_path: Path) -> None:
    app = make(tmp_path, metrics_token="a-static-metrics-token-0123456789")
    try:
        web = webtest.TestApp(app)
        web.get("/metrics", status=401)
        web.get("/metrics", headers=bearer("nope"), status=401)
        text = web.get("/metrics", headers=bearer("a-static-metrics-token-0123456789")).text
        assert "goodrepo_http_requests_total" in text
        token = login(web)["token"]
        assert "goodrepo_http_requests_total" in web.get("/metrics", headers=bearer(token)).text
    finally:
        app.close()


def test_health_needs_no_token(web: webtest.TestApp) -> None:
    assert web.get("/health").json == {"status": "healthy"}
    web.get("/health/live")
    ready = web.get("/health/ready").json
    assert ready["status"] == "ready" or ready.get("checks")


def test_anonymous_read(tmp_path: Path) -> None:
    app = make(tmp_path, allow_anon_read=True)
    try:
        web = webtest.TestApp(app)
        admin = bearer(login(web)["token"])
        web.put(
            "/v1/acme/app/1.0.0/linux/blob",
            b"x",
            headers={**admin, "Content-Type": "application/octet-stream"},
        )
        assert web.get("/v1/acme/app/latest").json["version"] == "1.0.0"
        web.put(
            "/v1/acme/app/2.0.0/linux/blob",
            b"y",
            headers={"Content-Type": "application/octet-stream"},
            status=401,
        )
        web.get("/admin/users", status=401)
    finally:
        app.close()


def test_security_headers_and_request_id(web: webtest.TestApp) -> None:
    res = web.get("/v1/acme/app/latest", status=401, headers={"X-Request-ID": "abc-123"})
    assert res.headers["X-Request-ID"] == "abc-123"
    assert res.json["error"]["request_id"] == "abc-123"
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    bad = web.get("/health", headers={"X-Request-ID": "bad id\u00e9"[:6]})
    assert bad.headers["X-Request-ID"] != "bad id"


def test_a_refused_patch_changes_nothing(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    web.post_json(
        "/admin/users",
        {"username": "dave", "password": "a quiet long passphrase", "scopes": ["read"]},
        headers=admin,
        status=201,
    )
    res = web.patch_json(
        "/admin/users/dave",
        {"scopes": ["read", "write"], "password": "short"},
        headers=admin,
        status=400,
    )
    assert res.json["error"]["code"] == "PASSWORD_POLICY"
    users = web.get("/admin/users", headers=admin).json["users"]
    assert next(u for u in users if u["username"] == "dave")["scopes"] == ["read"]
    res = web.patch(
        "/admin/users/dave",
        b'{"scopes": ["admin"], "password": "a long new passphrase \\ud800"}',
        headers={**admin, "Content-Type": "application/json"},
        status=400,
    )
    assert res.json["error"]["code"] == "INVALID_REQUEST"
    users = web.get("/admin/users", headers=admin).json["users"]
    assert next(u for u in users if u["username"] == "dave")["scopes"] == ["read"]


def test_admin_listings_are_paginated_with_links(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    for name in ("erin", "frank"):
        web.post_json(
            "/admin/users",
            {"username": name, "password": "a quiet long passphrase"},
            headers=admin,
            status=201,
        )
    first = web.get("/admin/users?limit=2", headers=admin)
    assert first.json["next_cursor"] and 'rel="next"' in first.headers["Link"]
    rest = web.get(f"/admin/users?limit=2&cursor={first.json['next_cursor']}", headers=admin)
    assert [u["username"] for u in rest.json["users"]] == ["frank"]
    bad = web.get("/admin/users?limit=0", headers=admin, status=400)
    assert bad.json["error"]["code"] == "VALIDATION_ERROR"


def test_rocksdb_keys_without_a_prefix(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    keys = web.get("/rocksdb/keys?limit=5", headers=admin).json["keys"]
    assert len(keys) == 5
    assert all(k.isprintable() and k.isascii() for k in keys)


def test_rocksdb_keys_a_listed_key_is_a_prefix(stack: GoodrepoApp, web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    for key in (b"z:odd\x00\\key\xff", b"z:odd\x00\\key\xfe", b"z:odd\x01"):
        stack.repo.kv.put_json(key, {})
    listed = web.get("/rocksdb/keys?prefix=z:", headers=admin).json["keys"]
    assert listed == ["z:odd\\x00\\x5ckey\\xfe", "z:odd\\x00\\x5ckey\\xff", "z:odd\\x01"]
    for prefix, keys in [
        (listed[1], [listed[1]]),
        ("z:odd\\x00", listed[:2]),
        ("z:odd\\x00\\x5Ckey", listed[:2]),  # either case of hex digits
        ("z:odd\\x00" + "\\x00" * 61 + "key", []),  # 256 characters: the bound
    ]:
        res = web.get("/rocksdb/keys", {"prefix": prefix}, headers=admin)
        assert res.json["keys"] == keys, prefix


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        pytest.param("a\\", "malformed escape", id="lone-backslash"),
        pytest.param("a\\x4", "malformed escape", id="one-hex-digit"),
        pytest.param("a\\xg0", "malformed escape", id="not-hex"),
        pytest.param("a\\\\", "malformed escape", id="doubled-backslash"),
        pytest.param("a\\n", "malformed escape", id="c-escape"),
        pytest.param("a\tb", "printable ASCII", id="control"),
        pytest.param("caf\u00e9", "printable ASCII", id="non-ascii"),
        pytest.param("a" * 257, "longer than 256", id="too-long"),
        pytest.param("\\x00" * 64 + "a", "longer than 256", id="too-long-escaped"),
    ],
)
def test_rocksdb_keys_bad_prefixes(web: webtest.TestApp, prefix: str, message: str) -> None:
    admin = bearer(login(web)["token"])
    res = web.get("/rocksdb/keys", {"prefix": prefix}, headers=admin, status=400)
    assert res.json["error"]["code"] == "INVALID_REQUEST"
    assert res.json["error"]["details"] == {"field": "prefix"}
    assert message in res.json["error"]["message"]


def test_token_answers_are_not_cached(web: webtest.TestApp) -> None:
    res = web.post_json("/auth/login", {"username": "admin", "password": PASSWORD})
    assert res.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/auth/login/", "//auth/login"])
def test_a_slash_more_does_not_reach_login(tmp_path: Path, path: str) -> None:
    app = make(tmp_path, login_rate_limit="2/minute")
    try:
        web = webtest.TestApp(app)
        token = login(web)["token"]
        web.post_json("/auth/login", {"username": "x", "password": "y"}, status=401)
        web.post_json("/auth/login", {"username": "x", "password": "y"}, status=429)
        # Around the exact-path rate limit with a token and a slash: not the login route.
        res = web.post_json(
            path,
            {"username": "x", "password": "y"},
            headers=bearer(token),
            status=404,
        )
        assert res.json["error"]["code"] == "NOT_FOUND"
    finally:
        app.close()


def test_a_recreated_user_inherits_no_tokens(web: webtest.TestApp, stack: GoodrepoApp) -> None:
    admin = bearer(login(web)["token"])
    body = {"username": "gina", "password": "a quiet long passphrase", "scopes": ["read"]}
    web.post_json("/admin/users", body, headers=admin, status=201)
    made = stack.tokens.create_api_token("gina", "ci", ["read"], 3600)
    access = login(web, "gina", "a quiet long passphrase")["token"]
    for token in (made["token"], access):
        web.get("/v1/acme/app/latest", headers=bearer(token), status=404)
    web.delete("/admin/users/gina", headers=admin, status=204)
    web.post_json("/admin/users", body, headers=admin, status=201)
    web.get("/v1/acme/app/latest", headers=bearer(made["token"]), status=401)
    assert web.get("/admin/tokens", headers=admin).json["tokens"] == []


def test_metrics_refuse_a_disabled_admins_token(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    body = {"username": "hal", "password": "a quiet long passphrase", "scopes": ["admin"]}
    web.post_json("/admin/users", body, headers=admin, status=201)
    hal = bearer(login(web, "hal", "a quiet long passphrase")["token"])
    web.get("/metrics", headers=hal)
    web.patch_json("/admin/users/hal", {"disabled": True}, headers=admin)
    web.get("/metrics", headers=hal, status=401)


def test_password_change_and_disabling_end_access_tokens(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    body = {"username": "ivy", "password": "a quiet long passphrase", "scopes": ["read"]}
    web.post_json("/admin/users", body, headers=admin, status=201)
    # No pauses: tokens carry their exact issue time, so what happens within one second
    # is told apart as well.
    old = bearer(login(web, "ivy", "a quiet long passphrase")["token"])
    web.get("/v1/acme/app/latest", headers=old, status=404)
    web.patch_json("/admin/users/ivy", {"disabled": True}, headers=admin)
    web.patch_json("/admin/users/ivy", {"disabled": False}, headers=admin)
    web.get("/v1/acme/app/latest", headers=old, status=401)  # enabling does not revive it
    fresh = login(web, "ivy", "a quiet long passphrase")["token"]
    web.get("/v1/acme/app/latest", headers=bearer(fresh), status=404)
    web.post_json(
        "/auth/change-password",
        {"old_password": "a quiet long passphrase", "new_password": "another quiet passphrase"},
        headers=bearer(fresh),
    )
    web.get("/v1/acme/app/latest", headers=bearer(fresh), status=401)


JOY = {"username": "joy", "password": "a quiet long passphrase", "scopes": ["read"]}
CHANGES = {
    "password": lambda web, admin: web.patch_json(
        "/admin/users/joy", {"password": "another quiet passphrase"}, headers=admin
    ),
    "disabled": lambda web, admin: web.patch_json(
        "/admin/users/joy", {"disabled": True}, headers=admin
    ),
    "recreated": lambda web, admin: (
        web.delete("/admin/users/joy", headers=admin, status=204),
        web.post_json("/admin/users", {**JOY, "scopes": ["admin"]}, headers=admin, status=201),
    ),
}


def after(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, then: Any) -> None:
    """Run ``then()`` right after each call of ``obj.name``: a race, made certain."""
    real = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        then()
        return result

    monkeypatch.setattr(obj, name, wrapped)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_login_that_races_a_change_of_the_user_gets_no_session(
    web: webtest.TestApp, stack: GoodrepoApp, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    admin = bearer(login(web)["token"])
    web.post_json("/admin/users", JOY, headers=admin, status=201)
    # The change lands while the password is being checked: no session at all.
    with monkeypatch.context() as m:
        after(m, stack.users, "authenticate", lambda: CHANGES[change](web, admin))
        res = web.post_json("/auth/login", JOY, status=401)
    assert res.json["error"]["code"] == "INVALID_CREDENTIALS"
    if change == "disabled":
        web.patch_json("/admin/users/joy", {"disabled": False}, headers=admin)
    # The change lands once the session has started: it ends it like any other.
    password = "another quiet passphrase" if change == "password" else JOY["password"]
    with monkeypatch.context() as m:
        after(m, stack.tokens, "issue_refresh", lambda: CHANGES[change](web, admin))
        session = login(web, "joy", password)
    web.get("/auth/me", headers=bearer(session["token"]), status=401)
    web.post_json("/auth/refresh", {"refresh_token": session["refresh_token"]}, status=401)


def test_a_refresh_that_races_a_password_change_gets_a_dead_token(
    web: webtest.TestApp, stack: GoodrepoApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = bearer(login(web)["token"])
    web.post_json("/admin/users", JOY, headers=admin, status=201)
    session = login(web, "joy", JOY["password"])
    with monkeypatch.context() as m:
        after(m, stack.tokens, "rotate_refresh", lambda: CHANGES["password"](web, admin))
        fresh = web.post_json("/auth/refresh", {"refresh_token": session["refresh_token"]}).json
    web.get("/auth/me", headers=bearer(fresh["token"]), status=401)
    web.post_json("/auth/refresh", {"refresh_token": fresh["refresh_token"]}, status=401)


def test_a_rejected_schema_file_is_named_and_leaves_no_data_directory(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"entities": 5}')
    with pytest.raises(InvalidConfig) as caught:
        make(tmp_path, schema_file=str(schema))
    assert caught.value.message.startswith(f"schema file {schema} rejected with ")
    assert caught.value.problems
    assert not (tmp_path / "data").exists()


def test_a_schema_file_that_cannot_be_read_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text("{}")

    def refuse(path: Any) -> Any:  # what a file without read permission does
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(schema_mod, "load_file", refuse)
    with pytest.raises(ConfigurationError) as caught:
        make(tmp_path, schema_file=str(schema))
    assert str(caught.value) == f"schema_file: cannot read {schema}: Permission denied"
    assert not (tmp_path / "data").exists()


def test_the_schema_file_seeds_a_fresh_data_directory(tmp_path: Path) -> None:
    custom = schema_mod.default_schema()
    custom["description"] = "from the schema file"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(custom))
    app = make(tmp_path, schema_file=str(schema))
    try:
        assert app.repo.schema["description"] == "from the schema file"
    finally:
        app.close()
