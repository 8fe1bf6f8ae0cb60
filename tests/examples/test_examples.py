"""The runnable examples: each one is started as a real server on 127.0.0.1 and driven over
HTTP, then stopped with SIGTERM; the embeddable ones are also driven in-process."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest
import requests
import webtest
from argon2 import PasswordHasher

from goodrepo import Repository

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PASSWORD = "a long passphrase for the examples"
JWT_KEY = "0123456789abcdef0123456789abcdef-example-key"
OCTETS = {"Content-Type": "application/octet-stream"}
BLOB = "/v1/acme/app/1.0.0/linux-amd64/blob"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0

# requests with a timeout on every call: no wait in these tests is unbounded.
get = functools.partial(requests.get, timeout=HTTP_TIMEOUT)
put = functools.partial(requests.put, timeout=HTTP_TIMEOUT)
post = functools.partial(requests.post, timeout=HTTP_TIMEOUT)


@functools.cache
def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` once (Django can be configured once per process)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask and Django look their module up by name
    spec.loader.exec_module(module)
    return module


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings of the machine running the tests must not leak into in-process apps."""
    for name in list(os.environ):
        if name.startswith("GOODREPO_") or name in ("ALLOW_ANON_READ", "CUSTOM_STACK_JWT_KEY"):
            monkeypatch.delenv(name)


# -- running an example as a server ------------------------------------------------------


@dataclass
class Server:
    """An example running as a subprocess, with its output captured in files."""

    proc: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace")

    def logs(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds ``text``: an access-log line is written when the server
        closes the response, which may be just after the client has read it."""
        deadline = time.monotonic() + timeout
        while text not in (logs := self.logs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return logs

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            pytest.fail(f"{self.proc.args} ignored SIGTERM\n{self.logs()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOODREPO_")}
    env.pop("ALLOW_ANON_READ", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["GOODREPO_MIN_FREE_DISK"] = "0"  # readiness must not depend on this machine's disk
    env.update(extra)
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``examples/<name>.py --port P --data D``; every server is stopped at the end."""
    servers: list[Server] = []

    def run(name: str, data: Path, *, ready: str = "/health/live", **env: str) -> Server:
        port = free_port()
        n = len(servers)
        stdout, stderr = tmp_path / f"{name}-{n}.out", tmp_path / f"{name}-{n}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port)]
                + ["--data", str(data)],
                cwd=tmp_path,
                env=example_env(**env),
                stdout=out,
                stderr=err,
            )
        server = Server(proc, f"http://127.0.0.1:{port}", stdout, stderr)
        servers.append(server)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{server.logs()}")
            try:
                if requests.get(server.url + ready, timeout=1).status_code == 200:
                    return server
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not answer {ready} in {START_TIMEOUT} s\n{server.logs()}")
            time.sleep(0.05)

    yield run
    for server in servers:
        server.stop()


def login(base: str, password: str = PASSWORD) -> str:
    answer = post(base + "/auth/login", json={"username": "admin", "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def generated_password(output: str) -> str:
    lines = output.splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("created user 'admin'"))
    return lines[marker + 1].strip()


# -- the examples over HTTP -----------------------------------------------------------------


def test_waitress_server(start: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start("waitress_server", data)
    password = generated_password(server.output())
    token = login(server.url, password)
    blob = server.url + BLOB

    published = put(blob, data=b"app bytes", headers={**bearer(token), **OCTETS})
    assert published.status_code == 201, published.text
    assert published.headers["Location"] == BLOB
    assert published.headers["X-Content-Type-Options"] == "nosniff"
    fetched = get(blob, headers=bearer(token))
    assert fetched.content == b"app bytes"
    assert fetched.headers["ETag"] == f'"{published.json()["digest"]}"'
    latest = get(server.url + "/v1/acme/app/latest", headers=bearer(token))
    assert latest.json()["version"] == "1.0.0"
    refused = get(blob)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused.json()["error"]["request_id"] == refused.headers["X-Request-ID"]
    assert get(server.url + "/health/ready").json()["status"] == "healthy"
    assert server.stop() == 0

    # A restart on the same data directory: no new password, the artifact is still there.
    again = start("waitress_server", data)
    assert "created user" not in again.output()
    token = login(again.url, password)
    assert get(again.url + BLOB, headers=bearer(token)).content == b"app bytes"
    assert again.stop() == 0


def test_waitress_server_behind_a_trusted_proxy(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    server = start(
        "waitress_server",
        tmp_path / "data",
        GOODREPO_TRUSTED_PROXIES="127.0.0.1",
        GOODREPO_LOGIN_RATE_LIMIT="2/minute",
    )

    def attempt(client: str, username: str) -> int:
        body = {"username": username, "password": "wrong password"}
        answer = post(server.url + "/auth/login", json=body, headers={"X-Forwarded-For": client})
        return int(answer.status_code)

    assert [attempt("203.0.113.1", f"user{i}") for i in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.2", "user9") == 401  # another client behind the same proxy
    assert '"client": "203.0.113.2"' in server.wait_for_log('"client": "203.0.113.2"')


@pytest.mark.parametrize("name", ["flask_mount", "django_mount"])
def test_mounted_under_a_prefix(name: str, start: Callable[..., Server], tmp_path: Path) -> None:
    server = start(
        name, tmp_path / "data", ready="/repo/health/live", GOODREPO_ADMIN_PASSWORD=PASSWORD
    )
    repo = server.url + "/repo"
    host_page = get(server.url + "/hello")
    assert host_page.status_code == 200
    assert "hello" in host_page.json()

    token = login(repo)
    for version in ("1.0.0", "1.1.0"):
        published = put(
            f"{repo}/v1/acme/app/{version}/linux-amd64/blob",
            data=f"app {version}".encode(),
            headers={**bearer(token), **OCTETS},
        )
        assert published.status_code == 201, published.text
        assert published.headers["Location"] == f"/repo/v1/acme/app/{version}/linux-amd64/blob"
    fetched = get(repo + "/v1/acme/app/1.0.0/linux-amd64/blob", headers=bearer(token))
    assert fetched.content == b"app 1.0.0"
    page = get(repo + "/v1/acme/app/versions?limit=1", headers=bearer(token))
    assert page.json()["versions"][0]["version"] == "1.1.0"
    assert page.headers["Link"].startswith("</repo/v1/acme/app/versions?limit=1&cursor=")
    assert get(repo + "/v1/acme/app/latest").status_code == 401
    assert get(repo + "/health/ready").json()["status"] == "healthy"
    # The repository answers only under its prefix; the host app answers the rest.
    outside = get(server.url + "/v1/acme/app/latest", headers=bearer(token))
    assert outside.status_code == 404
    assert "X-Request-ID" not in outside.headers
    assert server.stop() == 0


def test_custom_stack(start: Callable[..., Server], tmp_path: Path) -> None:
    env = example_env(CUSTOM_STACK_JWT_KEY=JWT_KEY)
    minted = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_stack.py"), "--mint-token", "alice"]
        + ["--scopes", "read,write"],
        env=env,
        capture_output=True,
        timeout=30,
        check=True,
    )
    token = minted.stdout.decode().strip()
    server = start(
        "custom_stack", tmp_path / "data", ready="/health/ready", CUSTOM_STACK_JWT_KEY=JWT_KEY
    )
    blob = server.url + BLOB

    published = put(blob, data=b"custom", headers={**bearer(token), **OCTETS})
    assert published.status_code == 201, published.text
    assert published.headers["X-Frame-Options"] == "DENY"
    assert published.headers["X-Request-ID"]
    assert get(blob, headers=bearer(token)).content == b"custom"
    assert get(blob).status_code == 401
    ready = get(server.url + "/health/ready").json()
    assert ready["checks"]["repository"]["status"] == "pass"
    # No accounts in this stack: the core has no login, and refuses it without a token.
    assert post(server.url + "/auth/login", json={}).status_code == 401
    assert post(server.url + "/auth/login", json={}, headers=bearer(token)).status_code == 404
    assert f'"path": "{BLOB}"' in server.wait_for_log(f'"path": "{BLOB}"')  # the JSON access log
    assert server.stop() == 0


# -- the examples in-process ----------------------------------------------------------------


MOUNTED = [
    pytest.param("flask_mount", lambda app: app.extensions["goodrepo"], id="flask"),
    pytest.param("django_mount", lambda app: app.mounts["/repo"], id="django"),
]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., webtest.TestApp]]:
    """Build an example's ``make_app`` on a fresh data directory, with an admin user."""
    opened: list[Any] = []

    def build(name: str, goodrepo_of: Callable[[Any], Any], **options: Any) -> webtest.TestApp:
        app = load_example(name).make_app(
            tmp_path / f"data-{len(opened)}",
            admin_password=PASSWORD,
            password_hasher=cheap_hasher(),
            **options,
        )
        repo = goodrepo_of(app)
        opened.append(repo)
        repo.bootstrap_admin()
        return webtest.TestApp(app)

    yield build
    for repo in opened:
        repo.close()


def in_process_login(client: webtest.TestApp) -> dict[str, str]:
    answer = client.post_json("/repo/auth/login", {"username": "admin", "password": PASSWORD})
    return bearer(answer.json["token"])


@pytest.mark.parametrize(("name", "goodrepo_of"), MOUNTED)
def test_mounted_app_keeps_the_prefix_in_urls(
    name: str, goodrepo_of: Callable[[Any], Any], mount: Callable[..., webtest.TestApp]
) -> None:
    client = mount(name, goodrepo_of)
    auth = in_process_login(client)
    for version in ("2.0.0", "2.1.0-rc.1", "2.1.0"):
        published = client.put(
            f"/repo/v1/acme/tool/{version}/any/blob", b"tool", headers={**auth, **OCTETS}
        )
        assert published.headers["Location"] == f"/repo/v1/acme/tool/{version}/any/blob"
    first = client.get("/repo/v1/acme/tool/versions?limit=2", headers=auth)
    assert [v["version"] for v in first.json["versions"]] == ["2.1.0", "2.1.0-rc.1"]
    link = first.headers["Link"]
    assert link.startswith("</repo/v1/acme/tool/versions?") and link.endswith('>; rel="next"')
    second = client.get(link[1 : link.index(">")], headers=auth)
    assert [v["version"] for v in second.json["versions"]] == ["2.0.0"]
    assert "Link" not in second.headers
    assert client.get("/repo/v1/acme/tool/latest", headers=auth).json["version"] == "2.1.0"
    assert client.get("/hello").json


@pytest.mark.parametrize(("name", "goodrepo_of"), MOUNTED)
def test_mounted_app_passes_settings_through(
    name: str, goodrepo_of: Callable[[Any], Any], mount: Callable[..., webtest.TestApp]
) -> None:
    client = mount(name, goodrepo_of, allow_anon_read=True)
    auth = in_process_login(client)
    client.put("/repo/v1/acme/tool/1.0.0/any/blob", b"tool", headers={**auth, **OCTETS})
    assert client.get("/repo/v1/acme/tool/1.0.0/any/blob").body == b"tool"
    refused = client.put("/repo/v1/acme/tool/1.0.1/any/blob", b"x", headers=OCTETS, status=401)
    assert refused.json["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/repo/admin/users", status=401).json["error"]["code"] == "UNAUTHORIZED"


@pytest.fixture
def custom_stack() -> ModuleType:
    return load_example("custom_stack")


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    with Repository.open(tmp_path / "data") as repo:
        yield repo


def test_custom_stack_scopes_come_from_the_token(
    custom_stack: ModuleType, repository: Repository
) -> None:
    client = webtest.TestApp(custom_stack.make_app(repository, jwt_key=JWT_KEY))
    writer = bearer(custom_stack.mint_token(JWT_KEY, "alice", ["read", "write"]))
    reader = bearer(custom_stack.mint_token(JWT_KEY, "bob", ["read"]))
    client.put("/v1/acme/app/1.0.0/x/blob", b"bytes", headers={**writer, **OCTETS})
    assert client.get("/v1/acme/app/1.0.0/x", headers=reader).json["created_by"] == "alice"
    denied = client.put(
        "/v1/acme/app/1.0.1/x/blob", b"b", headers={**reader, **OCTETS}, status=403
    )
    assert denied.json["error"]["details"] == {"required": ["write"]}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda m: m.mint_token(JWT_KEY, "alice", ttl=-60), id="expired"),
        pytest.param(lambda m: m.mint_token("another key of 32 bytes or more!!", "a"), id="key"),
        pytest.param(
            lambda m: jwt.encode({"sub": "a"}, JWT_KEY, headers={"kid": m.KEY_ID}), id="no-exp"
        ),
        pytest.param(lambda m: "not-a-token", id="malformed"),
    ],
)
def test_custom_stack_refuses_bad_tokens(
    token: Callable[[ModuleType], str], custom_stack: ModuleType, repository: Repository
) -> None:
    client = webtest.TestApp(custom_stack.make_app(repository, jwt_key=JWT_KEY))
    refused = client.get("/v1/acme/app/latest", headers=bearer(token(custom_stack)), status=401)
    assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_custom_stack_anonymous_read(custom_stack: ModuleType, repository: Repository) -> None:
    repository.publish("acme", "app", "1.0.0", "x", b"public")
    client = webtest.TestApp(
        custom_stack.make_app(repository, jwt_key=JWT_KEY, allow_anonymous_read=True)
    )
    assert client.get("/v1/acme/app/1.0.0/x/blob").body == b"public"
    client.put("/v1/acme/app/1.0.1/x/blob", b"b", headers=OCTETS, status=401)


def test_custom_stack_refuses_a_short_key(
    custom_stack: ModuleType, repository: Repository
) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        custom_stack.make_app(repository, jwt_key="short")


def test_custom_stack_mints_tokens_from_the_environment(
    custom_stack: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert custom_stack.main(["--mint-token", "alice"]) == 2
    assert "CUSTOM_STACK_JWT_KEY" in capsys.readouterr().err
    monkeypatch.setenv("CUSTOM_STACK_JWT_KEY", JWT_KEY)
    assert custom_stack.main(["--mint-token", "ci", "--scopes", "read, write", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"])
    assert claims["sub"] == "ci" and claims["scopes"] == ["read", "write"]
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["kid"] == custom_stack.KEY_ID


@pytest.mark.parametrize("name", ["waitress_server", "flask_mount", "django_mount"])
def test_a_rejected_schema_file_is_one_message(name: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"schema_version": 1}')
    env = example_env(GOODREPO_SCHEMA_FILE=str(schema))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--data", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("configuration: ")
    assert b"Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()
