"""Request bodies of the auth, admin, tag and blob endpoints: wrong types, repeated keys,
bodies shorter than announced and lengths that are not numbers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from .test_stack import bearer, login, make


@pytest.fixture
def web(tmp_path: Path) -> Iterator[webtest.TestApp]:
    app = make(tmp_path)
    yield webtest.TestApp(app)
    app.close()


def _error(res: webtest.TestResponse) -> tuple[str, str, str]:
    err = res.json["error"]
    return err["code"], err["message"], err["details"]["field"]


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        (
            "post",
            "/admin/tokens",
            {"name": "ci", "scopes": ["read"], "expires_in": "60"},
            "expires_in must be a whole number",
        ),
        (
            "post",
            "/admin/tokens",
            {"name": "ci", "scopes": ["read"], "expires_in": True},
            "expires_in must be a whole number",
        ),
        ("post", "/admin/tokens", {"name": "ci", "scopes": "read"}, "scopes must be an array"),
        ("patch", "/admin/users/admin", {"disabled": "yes"}, "disabled must be true or false"),
        ("post", "/admin/users", {"username": 5, "password": "x"}, "username must be a string"),
        ("post", "/admin/users", {"password": "x"}, "username is required"),
        ("post", "/admin/users", {"username": None, "password": "x"}, "username must be a string"),
        (
            "post",
            "/admin/tokens",
            {"name": "ci", "scopes": ["read"], "expires_in": None},
            "expires_in must be a whole number",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_named_with_the_type_it_needs(
    web: webtest.TestApp, method: str, path: str, body: dict[str, object], message: str
) -> None:
    admin = bearer(login(web)["token"])
    res = getattr(web, f"{method}_json")(path, body, headers=admin, status=400)
    assert _error(res) == ("INVALID_REQUEST", message, message.split()[0])


def test_an_empty_patch_says_what_it_takes(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    res = web.patch_json("/admin/users/admin", {}, headers=admin, status=400)
    error = res.json["error"]
    assert (error["code"], error["message"]) == (
        "INVALID_REQUEST",
        "PATCH takes one or more of scopes, disabled, password",
    )


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/admin/tokens",
            {"name": "ci", "scopes": ["read"], "expires": 3600},
            "POST /admin/tokens takes name, scopes, expires_in; not expires",
        ),
        (
            "/admin/users",
            {"username": "ci", "password": "a quiet long passphrase", "scope": ["write"]},
            "POST /admin/users takes username, password, scopes; not scope",
        ),
    ],
)
def test_a_misspelt_member_is_refused_and_nothing_is_created(
    web: webtest.TestApp, path: str, body: dict[str, object], message: str
) -> None:
    # Taken quietly, the misspelt member would get its default: a 90-day token for one
    # meant to last an hour, a read-only user for one meant to write.
    admin = bearer(login(web)["token"])
    res = web.post_json(path, body, headers=admin, status=400)
    error = res.json["error"]
    assert (error["code"], error["message"]) == ("INVALID_REQUEST", message)
    assert error["details"]["unknown"] == [message.rsplit(" ", 1)[1]]
    assert [row["username"] for row in web.get("/admin/users", headers=admin).json["users"]] == [
        "admin"
    ]
    assert web.get("/admin/tokens", headers=admin).json["tokens"] == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", "/admin/features", b'{"mutable_tags": true, "mutable_tags": false}'),
        (
            "put",
            "/v1/acme/app/tags/stable",
            b'{"target_version": "1.0.0", "target_variant": "x", "target_version": "2.0.0"}',
        ),
        ("post", "/auth/login", b'{"username": "admin", "password": "a", "password": "b"}'),
        ("post", "/admin/users", b'{"username": "u", "password": "p", "extra": {"a": 1, "a": 1}}'),
    ],
)
def test_a_repeated_key_is_refused(
    web: webtest.TestApp, method: str, path: str, body: bytes
) -> None:
    # Parsers disagree on which of two values counts; a request that means two things is
    # not guessed at.
    admin = bearer(login(web)["token"])
    res = getattr(web, method)(
        path, body, headers={**admin, "Content-Type": "application/json"}, status=400
    )
    err = res.json["error"]
    assert err["code"] == "INVALID_REQUEST"
    assert "duplicate key" in err["message"]


def test_the_features_are_unchanged_by_a_refused_body(web: webtest.TestApp) -> None:
    admin = bearer(login(web)["token"])
    before = web.get("/admin/features", headers=admin).json
    web.put(
        "/admin/features",
        b'{"mutable_tags": false, "mutable_tags": true}',
        headers={**admin, "Content-Type": "application/json"},
        status=400,
    )
    assert web.get("/admin/features", headers=admin).json == before


def raw(app: Any, method: str, path: str, body: bytes, length: str, **headers: str) -> Any:
    """Send ``body`` with whatever ``Content-Length`` header ``length`` says."""
    environ = EnvironBuilder(method=method, path=path, headers=headers).get_environ()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = length
    return Response.from_app(app, environ, buffered=True)  # read and closed, as servers do


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("PUT", "/admin/config"),
        ("POST", "/admin/users"),
        ("PUT", "/v1/acme/app/tags/stable"),
    ],
)
def test_a_body_shorter_than_its_content_length_is_a_400(
    tmp_path: Path, method: str, path: str
) -> None:
    app = make(tmp_path)
    try:
        token = login(webtest.TestApp(app))["token"]
        res = raw(app, method, path, b'{"a":', "100", Authorization=f"Bearer {token}")
        assert res.status_code == 400, res.get_data()
        assert res.get_json()["error"]["code"] == "INVALID_REQUEST"
    finally:
        app.close()


@pytest.mark.parametrize("length", ["-5", "abc", "5 5", "٥"])
def test_a_content_length_that_is_not_a_number_is_a_400_and_stores_nothing(
    tmp_path: Path, length: str
) -> None:
    app = make(tmp_path)
    try:
        web = webtest.TestApp(app)
        token = login(web)["token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        res = raw(app, "PUT", "/v1/acme/app/1.0.0/linux/blob", b"hello", length, **auth)
        assert res.status_code == 400, res.get_data()
        assert res.get_json()["error"]["message"] == "Content-Length is not a number of bytes"
        res = raw(app, "POST", "/auth/login", b"{}", length)
        assert res.status_code == 400, res.get_data()
        web.get(
            "/v1/acme/app/1.0.0/linux",
            headers={"Authorization": auth["Authorization"]},
            status=404,
        )
    finally:
        app.close()


@pytest.mark.parametrize("depth", [120, 600, 990])
def test_a_config_nested_too_deeply_is_a_422(web: webtest.TestApp, depth: int) -> None:
    admin = {**bearer(login(web)["token"]), "Content-Type": "application/json"}
    before = web.get("/admin/config", headers=admin).json["config"]
    body = '{"a":' * depth + "1" + "}" * depth
    res = web.put("/admin/config", body.encode(), headers=admin, status=422)
    message = res.json["error"]["details"]["problems"][0]["message"]
    assert "nested" in message and "deep" in message  # by the JSON parser, or after it
    assert web.get("/admin/config", headers=admin).json["config"] == before
