"""The real ``goodrepo serve`` driven over HTTP on 127.0.0.1: accounts, artifacts, admin,
operations endpoints, logging and a graceful stop with publishes in flight."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from goodrepo.cli import DRAIN_SECONDS

from .conftest import ADMIN_PASSWORD, START_TIMEOUT, ServerFactory, ServerProcess, server_env

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
USER_PASSWORD = "pale-orchid-meridian-4410"
NEW_PASSWORD = "quiet-lantern-harbour-8826"


# -- helpers ------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def jwt_header(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def forge(secret: bytes, kid: str, *, exp_in: int, **claims: Any) -> str:
    """A token shaped like the server's, signed with ``secret`` under ``kid``."""
    exact = time.time()
    now = int(exact)
    issued = exact + min(0, exp_in - 600)  # ten minutes before it expires, never ahead
    body: dict[str, Any] = {
        "sub": "admin",
        "scopes": ["admin"],
        "iat": issued,  # the exact time, as the server issues it
        "nbf": int(issued),
        "exp": now + exp_in,
        "jti": secrets.token_hex(16),
        "typ": "access",
    }
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256", headers={"kid": kid})


def precreate(data: Path) -> tuple[str, bytes]:
    """Set up a data directory in-process (no users yet) and return its signing key."""
    from goodrepo.stack import create_app

    app = create_app(data=str(data), env={})
    try:
        key = app.keyring.current()
        return key.kid, key.secret
    finally:
        app.close()


def assert_error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    """``r`` is the JSON error ``code`` with ``status``, its request id the header's."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code, r.text
    assert error["message"]
    assert error["request_id"] == r.headers["X-Request-ID"]
    return error


def assert_unauthorized(r: requests.Response) -> None:
    if r.request.method == "HEAD":
        assert r.status_code == 401 and r.content == b""
        assert r.headers["X-Request-ID"]
    else:
        assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, bytes]]:
    """One server with the default test settings for the module, and its signing key
    (read from the data directory before the server started). Tests using it work on
    coordinates and users of their own and change no global state (schema, keys)."""
    factory = ServerFactory(tmp_path_factory)
    try:
        data = tmp_path_factory.mktemp("keyed") / "data"
        kid, secret = precreate(data)
        yield factory(data=data), kid, secret
    finally:
        factory.close()


@pytest.fixture
def srv(keyed: tuple[ServerProcess, str, bytes]) -> ServerProcess:
    return keyed[0]


# -- first run --------------------------------------------------------------------------

GENERATED_RE = re.compile(r"created user 'admin' with this password[^\n]*\n\s+(\S+)\s*\n")


def test_first_run_prints_a_generated_admin_password_once(server: Any) -> None:
    s = server(admin_password=None)
    out, err = s.output_of(0)
    found = GENERATED_RE.findall(out)
    assert len(found) == 1, out
    password = found[0]
    assert len(password) >= 12 and password != "admin"
    assert password not in err, "the generated password must not be logged"
    s.login("admin", "admin", status=401)
    session = s.login("admin", password)
    assert session["user"] == {"username": "admin", "scopes": ["admin"]}

    s.restart()
    out1, err1 = s.output_of(1)
    assert "created user" not in out1 and password not in out1 and password not in err1
    assert s.login("admin", password)["user"]["username"] == "admin"
    s.login("admin", "admin", status=401)


def test_admin_password_from_the_environment_is_not_printed(server: Any) -> None:
    s = server(admin_password=ADMIN_PASSWORD)
    out, err = s.output_of(0)
    assert "created user" not in out
    assert ADMIN_PASSWORD not in out and ADMIN_PASSWORD not in err
    assert s.login()["user"]["scopes"] == ["admin"]
    s.login("admin", "admin", status=401)


@pytest.mark.parametrize("password", ["admin", "my-admin-passphrase-2024"])
def test_an_admin_password_breaking_the_policy_is_refused(tmp_path: Path, password: str) -> None:
    env = server_env(tmp_path / "data", {"GOODREPO_ADMIN_PASSWORD": password})
    done = subprocess.run(
        [sys.executable, "-m", "goodrepo.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 2
    assert "serving on" not in done.stdout
    assert "admin_password" in done.stderr
    assert password == "admin" or password not in done.stderr  # secrets are never echoed


# -- login, publish, fetch, latest, tag ---------------------------------------------------


def test_login_answer(srv: ServerProcess) -> None:
    session = srv.login()
    assert session["ok"] is True
    assert session["token"] == session["access_token"]
    assert session["token_type"] == "Bearer"
    assert 0 < session["expires_in"] <= 900
    assert session["refresh_token"] and session["refresh_token"] != session["token"]
    assert session["user"] == {"username": "admin", "scopes": ["admin"]}
    me = srv.request("GET", "/auth/me", token=session["token"])
    assert me.status_code == 200
    assert me.json() == {"ok": True, "user": {"username": "admin", "scopes": ["admin"]}}
    bad = srv.request("POST", "/auth/login", json={"username": "admin", "password": "wrong"})
    unknown = srv.request("POST", "/auth/login", json={"username": "nobody", "password": "x"})
    assert_error(bad, 401, "INVALID_CREDENTIALS")
    assert_error(unknown, 401, "INVALID_CREDENTIALS")
    assert bad.json()["error"]["message"] == unknown.json()["error"]["message"]
    assert_error(
        srv.request("POST", "/auth/login", json={"username": "admin"}), 400, "INVALID_REQUEST"
    )


def test_publish_fetch_latest_and_tag(srv: ServerProcess) -> None:
    token = srv.admin_token
    bodies = {v: f"payload of {v}\n".encode() * 100 for v in ("1.0.0", "1.9.0", "1.10.0")}
    bodies["2.0.0-rc.1"] = b"release candidate"
    for version, body in bodies.items():
        r = srv.publish(f"acme/widget/{version}/linux-amd64", body, token)
        assert r.json() == {"ok": True, "digest": sha256(body), "size": len(body)}
        assert r.headers["Location"] == f"/v1/acme/widget/{version}/linux-amd64/blob"

    body = bodies["1.10.0"]
    r = srv.request("GET", "/v1/acme/widget/1.10.0/linux-amd64/blob", token=token)
    assert r.status_code == 200
    assert r.content == body
    h = r.headers
    digest = sha256(body)
    b64 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert h["Content-Type"] == "application/octet-stream"
    assert h["Content-Length"] == str(len(body))
    assert h["ETag"] == f'"{digest}"'
    assert h["Docker-Content-Digest"] == digest
    assert h["X-Checksum-Sha256"] == digest.removeprefix("sha256:")
    assert f"sha-256=:{b64}:" in h["Repr-Digest"]
    assert h["Accept-Ranges"] == "bytes"
    assert h["Content-Disposition"].startswith("attachment;")
    assert h["X-Content-Type-Options"] == "nosniff"

    head = srv.request("HEAD", "/v1/acme/widget/1.10.0/linux-amd64/blob", token=token)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(body))
    part = srv.request(
        "GET",
        "/v1/acme/widget/1.10.0/linux-amd64/blob",
        token=token,
        headers={"Range": "bytes=10-19"},
    )
    assert part.status_code == 206 and part.content == body[10:20]
    cached = srv.request(
        "GET",
        "/v1/acme/widget/1.10.0/linux-amd64/blob",
        token=token,
        headers={"If-None-Match": h["ETag"]},
    )
    assert cached.status_code == 304

    meta = srv.request("GET", "/v1/acme/widget/1.10.0/linux-amd64", token=token).json()
    assert meta["blob_digest"] == digest and meta["blob_size"] == len(body)
    assert meta["created_by"] == "admin"

    latest = srv.request("GET", "/v1/acme/widget/latest", token=token)
    assert latest.status_code == 200
    assert latest.json() == {
        "namespace": "acme",
        "name": "widget",
        "version": "1.10.0",
        "variant": "linux-amd64",
        "blob_digest": digest,
    }
    pre = srv.request("GET", "/v1/acme/widget/latest?prerelease=true", token=token).json()
    assert pre["version"] == "2.0.0-rc.1"
    versions = srv.request("GET", "/v1/acme/widget/versions", token=token).json()["versions"]
    assert [v["version"] for v in versions][:3] == ["2.0.0-rc.1", "1.10.0", "1.9.0"]

    tag_url = "/v1/acme/widget/tags/stable"
    target = {"target_version": "1.9.0", "target_variant": "linux-amd64"}
    r = srv.request("PUT", tag_url, token=token, json=target)
    assert r.status_code == 200 and r.json() == {"ok": True}
    tag = srv.request("GET", tag_url, token=token)
    assert tag.status_code == 200 and tag.headers["ETag"]
    assert tag.json()["target_version"] == "1.9.0"
    assert tag.json()["updated_by"] == "admin"
    moved = srv.request("PUT", tag_url, token=token, json=dict(target, target_version="1.10.0"))
    assert moved.status_code == 200  # tags are mutable by default
    assert srv.request("GET", tag_url, token=token).json()["target_version"] == "1.10.0"
    missing = srv.request("PUT", tag_url, token=token, json=dict(target, target_version="9.9.9"))
    assert_error(missing, 404, "TARGET_NOT_FOUND")

    again = srv.publish("acme/widget/1.10.0/linux-amd64", body, token, status=409)
    error = assert_error(again, 409, "ALREADY_EXISTS")
    assert error["details"]["identical"] is True
    assert error["details"]["blob_digest"] == digest
    absent = srv.request("GET", "/v1/acme/widget/3.0.0/linux-amd64/blob", token=token)
    assert_error(absent, 404, "NOT_FOUND")


def schema_with_blob_limit(tmp_path: Path, max_blob_bytes: int | None) -> Path:
    """The packaged schema with the primary blob store's ``max_blob_bytes`` replaced (or
    removed: no limit), written to a file for ``GOODREPO_SCHEMA_FILE``."""
    schema = json.loads(resources.files("goodrepo.schema").joinpath("default.json").read_text())
    store = schema["storage"]["blob_stores"]["primary"]
    store.pop("max_blob_bytes")
    if max_blob_bytes is not None:
        store["max_blob_bytes"] = max_blob_bytes
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    return path


def test_the_body_limit_follows_the_blob_stores(server: Any, tmp_path: Path) -> None:
    limit = 5 << 20  # above the 4 MiB a schema body may have
    s = server(env={"GOODREPO_SCHEMA_FILE": str(schema_with_blob_limit(tmp_path, limit))})
    s.publish("acme/sized/1.0.0/any", b"x" * limit)  # exactly the limit: accepted
    # One byte more is refused from the headers alone, before any of the body is sent.
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /v1/acme/sized/2.0.0/any/blob HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {s.admin_token}\r\n".encode()
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        head, body = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 413 "), head
    error = json.loads(body)["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["message"] == f"the request body is over {limit} bytes"
    assert s.request("GET", "/v1/acme/sized/2.0.0/any", token=s.admin_token).status_code == 404

    # Raised by a schema swap: the server takes larger bodies at once, without a restart.
    config = s.request("GET", "/admin/config", token=s.admin_token).json()["config"]
    config["storage"]["blob_stores"]["primary"]["max_blob_bytes"] = 2 * limit
    r = s.request("PUT", "/admin/config", token=s.admin_token, json=config)
    assert r.status_code == 200, r.text
    assert s.publish("acme/sized/2.0.0/any", b"z" * (limit + 1)).status_code == 201

    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    s = server(env={"GOODREPO_SCHEMA_FILE": str(schema_with_blob_limit(unlimited, None))})
    big = b"y" * (6 << 20)
    r = s.publish("acme/sized/1.0.0/any", big)
    assert r.json()["size"] == len(big)


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one answer up to the server's close: its head and body."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer to the close: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        head, body = read_answer(sock)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code", "message", "headers_read"),
    [
        (b"GET /\xff HTTP/1.1\r\nHost: x\r\n", 400, "INVALID_REQUEST", "Bad URI", True),
        (
            b"PUT /v1/a/b/1/any/blob HTTP/1.1\r\nContent-Length: 12abc\r\n",
            400,
            "INVALID_REQUEST",
            "Content-Length is invalid",
            True,
        ),
        (
            b"PUT /v1/a/b/1/any/blob HTTP/1.1\r\nTransfer-Encoding: gzip\r\n",
            501,
            "NOT_IMPLEMENTED",
            "chunked",
            True,
        ),
        (
            b"GET / HTTP/1.1\r\n Authorization: Bearer s3cret-token\r\n",
            400,
            "INVALID_REQUEST",
            "Malformed header line",
            False,
        ),
        (
            b"GET / HTTP/1.1\r\nX-Padding: " + b"p" * (256 << 10) + b"\r\n",
            431,
            "INVALID_REQUEST",
            "request line and headers are over",
            False,
        ),
        # Refused at once, not invited with "100 Continue" to send a body never read.
        (
            b"PUT /v1/a/b/1/any/blob HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: 20000000000000\r\n",
            413,
            "PAYLOAD_TOO_LARGE",
            "the request body is over",
            True,
        ),
        (
            b"PUT /v1/a/b/1/any/blob HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: 12abc\r\n",
            400,
            "INVALID_REQUEST",
            "Content-Length is invalid",
            True,
        ),
    ],
    ids=["bad-uri", "bad-length", "transfer-encoding", "bad-header-line", "huge-headers"]
    + ["too-large-expecting-continue", "bad-length-expecting-continue"],
)
def test_requests_the_http_server_refuses_are_answered_in_json(
    srv: ServerProcess,
    request_bytes: bytes,
    status: int,
    code: str,
    message: str,
    headers_read: bool,
) -> None:
    # The refused request gets the client's request ID when its headers were read (else
    # a fresh one), the security headers, an access-log line and a closed connection, and
    # none of its bytes are echoed.
    sent_id = f"refused.{secrets.token_hex(8)}"
    request_bytes += f"X-Request-ID: {sent_id}\r\nOrigin: https://ui.example.com\r\n\r\n".encode()
    got, headers, body = exchange(srv.port, request_bytes)
    error = json.loads(body)["error"]
    assert (got, error["code"]) == (status, code)
    assert message in error["message"]
    assert b"s3cret" not in body
    rid = headers["x-request-id"]
    assert error["request_id"] == rid and REQUEST_ID_RE.fullmatch(rid)
    assert (rid == sent_id) is headers_read
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"
    deadline = time.monotonic() + 10
    while not (lines := [r for r in srv.log_records() if r.get("request_id") == rid]):
        assert time.monotonic() < deadline, "no access-log line"
        time.sleep(0.05)
    assert (lines[0]["status"], lines[0]["error_code"]) == (status, code)
    assert srv.request("GET", "/health").status_code == 200  # the server carries on


# -- 401 and 403 ------------------------------------------------------------------------


def test_a_blob_needs_a_length_or_chunks(srv: ServerProcess) -> None:
    token = srv.admin_token
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        conn.request("PUT", "/v1/acme/chunks/1.0.0/any/blob", iter([b"one ", b"two"]), auth)
        r = conn.getresponse()
        assert (r.status, json.loads(r.read())["digest"]) == (201, sha256(b"one two"))
    finally:
        conn.close()
    # Neither Content-Length nor Transfer-Encoding: no body, which is not an empty blob.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /v1/acme/chunks/2.0.0/any/blob HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411 "), head
    assert json.loads(body)["error"]["code"] == "LENGTH_REQUIRED"
    assert srv.request("GET", "/v1/acme/chunks/2.0.0/any", token=token).status_code == 404


def test_requests_without_a_token_get_401(srv: ServerProcess) -> None:
    srv.publish("acme/locked/1.0.0/any", b"locked")
    for method, path in [
        ("GET", "/v1/acme/locked/1.0.0/any/blob"),
        ("GET", "/v1/acme/locked/latest"),
        ("PUT", "/v1/acme/locked/2.0.0/any/blob"),
        ("GET", "/admin/config"),
        ("GET", "/auth/me"),
    ]:
        assert_unauthorized(srv.request(method, path, data=b"x" if method == "PUT" else None))
    assert (
        srv.request("GET", "/v1/acme/locked/2.0.0/any", token=srv.admin_token).status_code == 404
    )


def test_bad_expired_and_foreign_tokens_get_401(keyed: tuple[ServerProcess, str, bytes]) -> None:
    srv, kid, secret = keyed
    path = "/v1/acme/forged/1.0.0/any/blob"
    # The forging is right: the same claims with a live date are accepted.
    good = forge(secret, kid, exp_in=600)
    assert srv.request("GET", "/auth/me", token=good).status_code == 200

    expired = forge(secret, kid, exp_in=-3600)
    r = srv.request("PUT", path, token=expired, data=b"x")
    assert_unauthorized(r)
    assert "expired" in r.json()["error"]["message"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]

    real = srv.admin_token
    assert jwt_header(real)["kid"] == kid
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    elevated = dict(claims, sub="someone-else")
    tampered_payload = base64.urlsafe_b64encode(json.dumps(elevated).encode()).rstrip(b"=")
    for token in [
        forge(secrets.token_bytes(32), kid, exp_in=600),  # the right kid, a wrong key
        forge(secret, "no-such-kid", exp_in=600),
        jwt.encode(claims, secrets.token_bytes(32), "HS256"),  # no kid
        f"{header}.{tampered_payload.decode()}.{signature}",
        jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "not-a-jwt",
        real + "x",
    ]:
        assert_unauthorized(srv.request("PUT", path, token=token, data=b"x"))
        assert_unauthorized(srv.request("GET", "/auth/me", token=token))
    r = srv.request("PUT", path, data=b"x", headers={"Authorization": f"Basic {real}"})
    assert_unauthorized(r)
    assert srv.request("GET", "/v1/acme/forged/1.0.0/any", token=real).status_code == 404


def test_read_only_user_gets_403_on_writes(srv: ServerProcess) -> None:
    admin = srv.admin_token
    r = srv.request(
        "POST",
        "/admin/users",
        token=admin,
        json={"username": "reader403", "password": USER_PASSWORD, "scopes": ["read"]},
    )
    assert r.status_code == 201, r.text
    assert r.json()["ok"] is True
    user = r.json()["user"]
    assert (user["username"], user["scopes"], user["disabled"]) == ("reader403", ["read"], False)
    assert not {"password", "password_hash", "hash"} & set(user)
    again = srv.request(
        "POST",
        "/admin/users",
        token=admin,
        json={"username": "reader403", "password": USER_PASSWORD, "scopes": ["read"]},
    )
    assert_error(again, 409, "USER_EXISTS")
    srv.publish("acme/readable/1.0.0/any", b"readable")

    reader = srv.login("reader403", USER_PASSWORD)["token"]
    assert srv.request("GET", "/v1/acme/readable/1.0.0/any/blob", token=reader).content == (
        b"readable"
    )
    r = srv.request("PUT", "/v1/acme/readable/2.0.0/any/blob", token=reader, data=b"nope")
    assert_error(r, 403, "FORBIDDEN")
    tag = {"target_version": "1.0.0", "target_variant": "any"}
    r = srv.request("PUT", "/v1/acme/readable/tags/stable", token=reader, json=tag)
    assert_error(r, 403, "FORBIDDEN")
    assert_error(srv.request("GET", "/admin/users", token=reader), 403, "FORBIDDEN")
    assert_error(srv.request("GET", "/metrics", token=reader), 403, "FORBIDDEN")
    assert srv.request("GET", "/v1/acme/readable/2.0.0/any", token=admin).status_code == 404


# -- rate limit ---------------------------------------------------------------------------


def test_fourth_login_from_one_address_gets_429(server: Any) -> None:
    s = server({"GOODREPO_LOGIN_RATE_LIMIT": "3/minute"})
    s.login("ghost-one", "wrong-password-1", status=401)
    s.login("ghost-two", "wrong-password-2", status=401)
    token = s.login()["token"]  # the third attempt, a good one
    r = s.request("POST", "/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert_error(r, 429, "RATE_LIMITED")
    assert int(r.headers["Retry-After"]) >= 1
    # Only logins are limited: the token from the third attempt keeps working.
    assert s.request("GET", "/auth/me", token=token).status_code == 200


# -- anonymous reads ---------------------------------------------------------------------


def test_anonymous_read_when_allowed(server: Any) -> None:
    s = server({"ALLOW_ANON_READ": "true"})
    s.publish("acme/open/1.0.0/any", b"open data")
    assert s.request("GET", "/v1/acme/open/latest").json()["version"] == "1.0.0"
    blob = s.request("GET", "/v1/acme/open/1.0.0/any/blob")
    assert blob.status_code == 200 and blob.content == b"open data"
    assert s.request("HEAD", "/v1/acme/open/1.0.0/any/blob").status_code == 200
    assert s.request("GET", "/v1/acme/open/versions").status_code == 200
    assert_unauthorized(s.request("PUT", "/v1/acme/open/2.0.0/any/blob", data=b"anon"))
    tag = {"target_version": "1.0.0", "target_variant": "any"}
    assert_unauthorized(s.request("PUT", "/v1/acme/open/tags/stable", json=tag))
    assert_unauthorized(s.request("GET", "/admin/config"))
    assert_unauthorized(s.request("GET", "/metrics"))
    # A token that is sent is still verified.
    assert_unauthorized(s.request("GET", "/v1/acme/open/latest", token="not-a-jwt"))


def test_anonymous_read_off_by_default(srv: ServerProcess) -> None:
    srv.publish("acme/closed/1.0.0/any", b"closed data")
    assert_unauthorized(srv.request("GET", "/v1/acme/closed/latest"))
    assert_unauthorized(srv.request("GET", "/v1/acme/closed/1.0.0/any/blob"))
    assert_unauthorized(srv.request("HEAD", "/v1/acme/closed/1.0.0/any/blob"))


# -- keys, tokens, config ---------------------------------------------------------------


def test_key_rotation_keeps_old_tokens_valid(server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_kid, first_secret = precreate(data)
    s = server(data=data)
    old = s.login()["token"]
    assert jwt_header(old)["kid"] == first_kid

    r = s.request("POST", "/admin/keys/rotate", token=old)
    assert r.status_code == 200, r.text
    new_kid = r.json()["kid"]
    assert new_kid != first_kid

    assert s.request("GET", "/auth/me", token=old).status_code == 200
    assert s.publish("acme/rotated/1.0.0/any", b"after rotation", old).status_code == 201
    new = s.login()["token"]
    assert jwt_header(new)["kid"] == new_kid
    assert s.request("GET", "/auth/me", token=new).status_code == 200

    r = s.request("GET", "/admin/keys", token=new)
    assert r.status_code == 200
    keys = {k["kid"]: k for k in r.json()["keys"]}
    assert set(keys) == {first_kid, new_kid}
    assert keys[new_kid]["current"] is True and keys[new_kid]["retired_at"] is None
    assert keys[first_kid]["current"] is False and keys[first_kid]["retired_at"]
    for key in keys.values():
        assert set(key) <= {"kid", "created_at", "retired_at", "current"}
    assert "secret" not in r.text.lower()
    assert base64.b64encode(first_secret).decode() not in r.text
    assert first_secret.hex() not in r.text


def test_api_token_revocation_is_immediate(srv: ServerProcess) -> None:
    admin = srv.admin_token
    r = srv.request(
        "POST",
        "/admin/tokens",
        token=admin,
        json={"name": "ci nightly", "scopes": ["read", "write"], "expires_in": 3600},
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["ok"] is True and made["name"] == "ci nightly"
    assert sorted(made["scopes"]) == ["read", "write"] and made["expires_at"]
    ci = made["token"]

    listed = srv.request("GET", "/admin/tokens", token=admin)
    assert made["id"] in [t["id"] for t in listed.json()["tokens"]]
    assert ci not in listed.text

    srv.publish("acme/ci-built/1.0.0/any", b"built by ci", ci)
    assert srv.request("GET", "/v1/acme/ci-built/latest", token=ci).status_code == 200
    assert_error(srv.request("GET", "/admin/users", token=ci), 403, "FORBIDDEN")

    r = srv.request("DELETE", f"/admin/tokens/{made['id']}", token=admin)
    assert r.status_code == 204
    assert_unauthorized(srv.request("GET", "/v1/acme/ci-built/latest", token=ci))
    assert_unauthorized(
        srv.request("PUT", "/v1/acme/ci-built/2.0.0/any/blob", token=ci, data=b"x")
    )
    listed = srv.request("GET", "/admin/tokens", token=admin).json()["tokens"]
    assert made["id"] not in [t["id"] for t in listed]
    r = srv.request("DELETE", f"/admin/tokens/{made['id']}", token=admin)
    assert_error(r, 404, "NOT_FOUND")


def test_config_hot_swap(server: Any) -> None:
    s = server()
    token = s.admin_token
    for version in ("1.0.0", "2.0.0"):
        s.publish(f"acme/swap/{version}/any", version.encode(), token)
    tag_url = "/v1/acme/swap/tags/stable"
    to_one = {"target_version": "1.0.0", "target_variant": "any"}
    to_two = {"target_version": "2.0.0", "target_variant": "any"}
    assert s.request("PUT", tag_url, token=token, json=to_one).status_code == 200

    r = s.request("GET", "/admin/config", token=token)
    assert r.status_code == 200 and r.json()["ok"] is True
    config = r.json()["config"]
    assert config["features"]["mutable_tags"] is True

    broken = json.loads(json.dumps(config))
    broken["features"]["mutable_tags"] = "no"
    broken["entities"] = 5
    r = s.request(
        "PUT",
        "/admin/config",
        token=token,
        data=json.dumps(broken),
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(r, 422, "INVALID_CONFIG")
    problems = error["details"]["problems"]
    paths = {p["path"] for p in problems}
    assert {"$.features.mutable_tags", "$.entities"} <= paths, problems
    assert all(p["message"] for p in problems)
    assert s.request("GET", "/admin/config", token=token).json()["config"] == config
    not_json = s.request("PUT", "/admin/config", token=token, data=b"{not json")
    assert_error(not_json, 422, "INVALID_CONFIG")
    assert s.request("GET", "/admin/config", token=token).json()["config"] == config

    immutable = json.loads(json.dumps(config))
    immutable["features"]["mutable_tags"] = False
    r = s.request(
        "PUT",
        "/admin/config",
        token=token,
        data=json.dumps(immutable),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["features"]["mutable_tags"] is False
    features = s.request("GET", "/admin/features", token=token).json()["features"]
    assert features["mutable_tags"] is False

    assert_error(s.request("PUT", tag_url, token=token, json=to_two), 409, "TAG_IMMUTABLE")
    assert s.request("GET", tag_url, token=token).json()["target_version"] == "1.0.0"
    assert s.request("PUT", "/v1/acme/swap/tags/new", token=token, json=to_two).status_code == 200

    s.restart()  # the swapped schema was stored
    token = s.admin_token
    assert (
        s.request("GET", "/admin/features", token=token).json()["features"]["mutable_tags"]
        is False
    )
    assert_error(s.request("PUT", tag_url, token=token, json=to_two), 409, "TAG_IMMUTABLE")


# -- refresh tokens and passwords --------------------------------------------------------


def test_refresh_rotation_and_replay(srv: ServerProcess) -> None:
    srv.create_user("refresher", USER_PASSWORD, ["read"])
    first = srv.login("refresher", USER_PASSWORD)
    r = srv.request("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["token"] == second["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user"] == {"username": "refresher", "scopes": ["read"]}
    assert srv.request("GET", "/auth/me", token=second["token"]).status_code == 200

    replay = srv.request("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_error(replay, 401, "UNAUTHORIZED")
    # The replay revoked the whole family: the newer token stops working too.
    newer = srv.request("POST", "/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_error(newer, 401, "UNAUTHORIZED")
    unknown = srv.request("POST", "/auth/refresh", json={"refresh_token": "made-up"})
    assert_error(unknown, 401, "UNAUTHORIZED")

    # Logout, with a token like every endpoint but login and refresh, revokes the
    # refresh token it is given.
    third = srv.login("refresher", USER_PASSWORD)
    body = {"refresh_token": third["refresh_token"]}
    assert_error(srv.request("POST", "/auth/logout", json=body), 401, "UNAUTHORIZED")
    r = srv.request("POST", "/auth/logout", json=body, token=third["token"])
    assert r.status_code == 200
    gone = srv.request("POST", "/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert_error(gone, 401, "UNAUTHORIZED")


def test_change_password_revokes_refresh_tokens(srv: ServerProcess) -> None:
    srv.create_user("changer", USER_PASSWORD, ["read"])
    one = srv.login("changer", USER_PASSWORD)
    two = srv.login("changer", USER_PASSWORD)
    url = "/auth/change-password"

    weak = srv.request(
        "POST",
        url,
        token=one["token"],
        json={"old_password": USER_PASSWORD, "new_password": "changer"},
    )
    error = assert_error(weak, 400, "PASSWORD_POLICY")
    assert len(error["details"]["reasons"]) >= 2  # too short, contains the user name
    wrong_old = srv.request(
        "POST",
        url,
        token=one["token"],
        json={"old_password": "not-the-password", "new_password": NEW_PASSWORD},
    )
    assert wrong_old.status_code == 401

    r = srv.request(
        "POST",
        url,
        token=one["token"],
        json={"old_password": USER_PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert r.status_code == 200, r.text
    for session in (one, two):
        r = srv.request("POST", "/auth/refresh", json={"refresh_token": session["refresh_token"]})
        assert_error(r, 401, "UNAUTHORIZED")
    srv.login("changer", USER_PASSWORD, status=401)
    assert srv.login("changer", NEW_PASSWORD)["user"]["username"] == "changer"


# -- operations endpoints, request ids, logs ---------------------------------------------


def test_health_endpoints_need_no_token(srv: ServerProcess) -> None:
    r = srv.request("GET", "/health")
    assert r.status_code == 200 and r.json() == {"status": "healthy"}
    assert srv.request("GET", "/health/live").status_code == 200
    ready = srv.request("GET", "/health/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert {"kv", "blob_stores", "disk"} <= set(checks)
    assert all(c["status"] == "pass" for c in checks.values())


def test_metrics_need_the_admin_scope(srv: ServerProcess) -> None:
    assert_unauthorized(srv.request("GET", "/metrics"))
    assert_unauthorized(srv.request("GET", "/metrics", token="not-a-jwt"))
    srv.publish("acme/counted/1.0.0/any", b"counted")
    r = srv.request("GET", "/metrics", token=srv.admin_token)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE goodrepo_http_requests_total counter" in r.text
    assert re.search(
        r'goodrepo_http_requests_total\{[^}]*route="/v1/\{namespace\}/\{name\}/\{version\}'
        r'/\{variant\}/blob"[^}]*status="201"[^}]*\} [1-9]',
        r.text,
    ), r.text[:2000]


def test_every_response_carries_a_request_id(srv: ServerProcess) -> None:
    token = srv.admin_token
    srv.publish("acme/ids/1.0.0/any", b"ids")
    answers = [
        srv.request("GET", "/health"),
        srv.request("GET", "/health/ready"),
        srv.request("GET", "/v1/acme/ids/latest", token=token),
        srv.request("GET", "/v1/acme/ids/1.0.0/any/blob", token=token),
        srv.request("GET", "/v1/acme/ids/9.9.9/any/blob", token=token),  # 404
        srv.request("PUT", "/v1/acme/ids/1.0.0/any/blob", token=token, data=b"ids"),  # 409
        srv.request("PUT", "/v1/Bad%20Name/x/1.0.0/any/blob", token=token, data=b"x"),  # 400
        srv.request("GET", "/v1/acme/ids/latest"),  # 401
        srv.request("GET", "/v1/acme/ids/latest", token="not-a-jwt"),  # 401
        srv.request("POST", "/auth/login", json={"username": "admin", "password": "no"}),
        srv.request("POST", "/auth/login", data=b"not json"),  # 400
        srv.request("GET", "/metrics"),
        srv.request("GET", "/metrics", token=token),
        srv.request("GET", "/no/such/path", token=token),
    ]
    statuses = {r.status_code for r in answers}
    assert {200, 400, 401, 404, 409} <= statuses, statuses
    ids = [r.headers.get("X-Request-ID") for r in answers]
    for r, rid in zip(answers, ids, strict=True):
        assert rid and REQUEST_ID_RE.fullmatch(rid), (r.status_code, r.url, rid)
        if r.status_code >= 400 and r.content:
            assert r.json()["error"]["request_id"] == rid
    assert len(set(ids)) == len(ids)

    mine = srv.request("GET", "/health", headers={"X-Request-ID": "client-chosen.id_42"})
    assert mine.headers["X-Request-ID"] == "client-chosen.id_42"
    error = srv.request("GET", "/auth/me", headers={"X-Request-ID": "client-err-7"})
    assert_unauthorized(error)
    assert error.headers["X-Request-ID"] == "client-err-7"
    for bad in ("has space", "x" * 129, "semi;colon"):
        r = srv.request("GET", "/health", headers={"X-Request-ID": bad})
        rid = r.headers["X-Request-ID"]
        assert rid != bad and REQUEST_ID_RE.fullmatch(rid)


def wait_for_log(srv: ServerProcess, request_ids: set[str], timeout: float = 15.0) -> list[Any]:
    """The server's JSON log records once access lines for all ``request_ids`` are in."""
    deadline = time.monotonic() + timeout
    while True:
        records = srv.log_records()
        seen = {r.get("request_id") for r in records if r.get("logger") == "goodrepo.access"}
        if request_ids <= seen or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_json_access_log_has_request_ids_and_no_secrets(srv: ServerProcess) -> None:
    srv.create_user("logged", USER_PASSWORD, ["read", "write"])
    session = srv.login("logged", USER_PASSWORD)
    token, refresh = session["token"], session["refresh_token"]
    answers = [
        srv.request("GET", "/auth/me", token=token),
        srv.publish("acme/logged/1.0.0/any", b"logged", token),
        srv.request("GET", "/v1/acme/logged/1.0.0/any/blob", token=token),
        srv.request("GET", "/v1/acme/logged/latest", token="not-a-jwt"),
        srv.request("POST", "/auth/refresh", json={"refresh_token": refresh}),
    ]
    new_refresh = answers[-1].json()["refresh_token"]
    ids = {r.headers["X-Request-ID"] for r in answers}
    records = wait_for_log(srv, ids)
    access = {r["request_id"]: r for r in records if r.get("logger") == "goodrepo.access"}
    assert ids <= set(access), "every request has an access line with its request id"
    for r in answers:
        line = access[r.headers["X-Request-ID"]]
        assert line["status"] == r.status_code
        assert line["method"] == r.request.method
        assert line["path"] == r.request.path_url.split("?")[0]
    assert access[answers[1].headers["X-Request-ID"]]["user"] == "logged"
    assert all("request_id" in rec for rec in records)

    text = srv.stderr + srv.stdout
    for secret in (token, refresh, new_refresh, USER_PASSWORD, ADMIN_PASSWORD, srv.admin_token):
        assert secret not in text
    assert "bearer " not in text.lower()
    assert "eyJ" not in text  # no JWT at all
    for rec in records:
        assert not any("authorization" in str(k).lower() for k in rec)
        assert "authorization" not in json.dumps(rec).lower()


# -- SIGTERM with publishes in flight ------------------------------------------------------


def slow_body(size: int, chunk: int, pause: float, seed: bytes) -> tuple[Iterator[bytes], str]:
    """A body of ``size`` bytes yielded in ``chunk``-sized pieces with a pause before
    each (generated on the fly), and its digest."""
    block = hashlib.sha256(seed).digest() * (chunk // 32)

    def piece(i: int) -> bytes:
        return bytes([i % 251]) + block[1:]

    digest = hashlib.sha256()
    for i in range(size // chunk):
        digest.update(piece(i))

    def gen() -> Iterator[bytes]:
        for i in range(size // chunk):
            time.sleep(pause)
            yield piece(i)

    return gen(), "sha256:" + digest.hexdigest()


def put_blob(
    port: int, token: str, coords: str, body: Any, length: int, conn: Any = None
) -> tuple[int | None, str]:
    """PUT with http.client; returns (status, text) or (None, the error's name)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "PUT",
            f"/v1/{coords}/blob",
            body=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
            },
        )
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as err:
        return None, type(err).__name__
    finally:
        if own:
            conn.close()


def wait_refused(port: int, timeout: float = 15.0) -> bool:
    """True once a new connection to ``port`` is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        else:
            sock.close()
        time.sleep(0.05)
    return False


def fetch_digest(srv: ServerProcess, coords: str) -> str | None:
    """The sha256 of the bytes served at ``coords`` (streamed), None on 404."""
    with srv.request("GET", f"/v1/{coords}/blob", token=srv.admin_token, stream=True) as r:
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        digest = hashlib.sha256()
        for piece in r.iter_content(1 << 20):
            digest.update(piece)
        return "sha256:" + digest.hexdigest()


def test_sigint_stops_cleanly_and_the_directory_reopens(server: Any) -> None:
    s = server()
    s.publish("acme/interrupted/1.0.0/any", b"before sigint")
    s.send_signal(signal.SIGINT)
    assert s.wait(DRAIN_SECONDS + 20) == 0
    assert "goodrepo stopped" in s.stdout
    assert "Traceback" not in s.stderr
    s.start()
    assert fetch_digest(s, "acme/interrupted/1.0.0/any") == sha256(b"before sigint")


@pytest.mark.slow
def test_sigterm_with_publishes_in_flight_loses_nothing_acknowledged(server: Any) -> None:
    s = server()
    token, port = s.admin_token, s.port
    # (coords, digest, status or None, detail) of every publish attempted
    attempts: list[tuple[str, str, int | None, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    size = 96 << 20
    big_body, big_digest = slow_body(size, 1 << 20, 0.04, b"big")

    def big() -> None:
        status, text = put_blob(port, token, "acme/big/1.0.0/any", big_body, size)
        with lock:
            attempts.append(("acme/big/1.0.0/any", big_digest, status, text))

    def small(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for n in range(10_000):
                if stop.is_set():
                    return
                body = os.urandom(1 << 20) + f"{worker}-{n}".encode()
                coords = f"acme/small-{worker}/1.0.{n}/any"
                status, text = put_blob(port, token, coords, body, len(body), conn)
                with lock:
                    attempts.append((coords, sha256(body), status, text))
                if status is None:
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=big)]
    threads += [threading.Thread(target=small, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # some publishes are through, the big one is not
            with lock:
                done = sum(1 for a in attempts if a[2] == 201)
            if done >= 4:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        signalled = time.monotonic()
        s.send_signal(signal.SIGTERM)
        stop.set()
        assert wait_refused(port), "a new connection after SIGTERM must be refused"
        code = s.wait(DRAIN_SECONDS + 20)
        assert time.monotonic() - signalled < DRAIN_SECONDS + 15
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert code == 0, s.stderr[-3000:]
    assert "goodrepo stopped" in s.stdout

    acknowledged = [a for a in attempts if a[2] == 201]
    assert len(acknowledged) >= 4, attempts
    s.start()  # the same data directory
    for coords, digest, status, detail in attempts:
        served = fetch_digest(s, coords)
        if status == 201:
            assert served == digest, f"acknowledged publish {coords} lost or damaged"
        else:
            assert served in (None, digest), f"partial publish {coords} ({status} {detail})"


@pytest.mark.slow
def test_sigterm_lets_an_upload_in_progress_finish(server: Any) -> None:
    s = server()
    token, port = s.admin_token, s.port
    size = 64 << 20
    body, digest = slow_body(size, 1 << 20, 0.06, b"in-progress")  # about 4 s
    result: list[tuple[int | None, str]] = []
    t = threading.Thread(
        target=lambda: result.append(put_blob(port, token, "acme/inflight/1.0.0/any", body, size))
    )
    t.start()
    try:
        time.sleep(1.0)
        s.send_signal(signal.SIGTERM)
        code = s.wait(DRAIN_SECONDS + 20)
    finally:
        t.join(120)
    assert code == 0
    status, text = result[0]
    assert status == 201, f"the upload in flight at SIGTERM was cut off: {text}"
    s.start()
    assert fetch_digest(s, "acme/inflight/1.0.0/any") == digest
