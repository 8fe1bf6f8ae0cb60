"""JSON bodies of the auth, admin and tag endpoints: wrong types and repeated keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import webtest

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
        ("post", "/admin/users", {"username": None, "password": "x"}, "username is required"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_with_the_type_it_needs(
    web: webtest.TestApp, method: str, path: str, body: dict[str, object], message: str
) -> None:
    admin = bearer(login(web)["token"])
    res = getattr(web, f"{method}_json")(path, body, headers=admin, status=400)
    assert _error(res) == ("INVALID_REQUEST", message, message.split()[0])


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
