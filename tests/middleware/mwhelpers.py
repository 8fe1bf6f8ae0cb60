"""Helpers shared by the middleware tests: a recording app, tokens, keys, a real server.

A module of its own (not conftest.py) so test modules can import it by a unique name.
Nothing here imports ``goodrepo``: the middlewares must work around any WSGI app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.util import setup_testing_defaults

import jwt
from cryptography.hazmat.primitives import serialization
from waitress.channel import HTTPChannel
from waitress.server import create_server

from middleware.keys import ERROR_CODE, ROUTE

SECRET = "k1-secret-" + "0123456789abcdef" * 4
OTHER_SECRET = "k2-secret-" + "0123456789abcdef" * 4


class Body:
    """A response body that counts how far it was read and whether it was closed."""

    def __init__(self, chunks: Iterable[bytes], app: RecordingApp) -> None:
        self._chunks = iter(chunks)
        self._app = app

    def __iter__(self) -> Body:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self._app.chunks_sent += 1
        return chunk

    def close(self) -> None:
        self._app.closed += 1


class RecordingApp:
    """A WSGI app that records the environ it got and answers as configured."""

    def __init__(
        self,
        *,
        status: str = "200 OK",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | Callable[[], Iterable[bytes]] = b"ok",
        route: str | None = None,
        error_code: str | None = None,
        inspect: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else [("Content-Type", "text/plain")]
        self.body = body
        self.route = route
        self.error_code = error_code
        self.inspect = inspect
        self.calls: list[dict[str, Any]] = []
        self.closed = 0
        self.chunks_sent = 0

    @property
    def environ(self) -> dict[str, Any]:
        """The environ of the last call."""
        return self.calls[-1]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls.append(environ)
        if self.inspect is not None:
            self.inspect(environ)
        if self.route is not None:
            environ[ROUTE] = self.route
        if self.error_code is not None:
            environ[ERROR_CODE] = self.error_code
        chunks = self.body() if callable(self.body) else [self.body]
        headers = list(self.headers)
        if not callable(self.body) and not any(h[0].lower() == "content-length" for h in headers):
            headers.append(("Content-Length", str(len(self.body))))
        start_response(self.status, headers)
        return Body(chunks, self)


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = SECRET,
    kid: Any = "k1",
    algorithm: str = "HS256",
    drop: Iterable[str] = (),
    **overrides: Any,
) -> str:
    """A signed JWT with sensible claims (sub alice, read scope, 5 minutes), then overrides."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 300, "scopes": ["read"]}
    payload.update(claims or {})
    payload.update(overrides)
    for name in drop:
        payload.pop(name, None)
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    app: Any, *, threads: int = 8, channel_class: Any = None, **options: Any
) -> Iterator[tuple[str, int]]:
    """Run ``app`` under waitress on 127.0.0.1 in a thread; yields (host, port).
    ``options`` go to waitress; ``channel_class`` replaces its HTTP channel class."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads, ident="test", **options)
    if channel_class is not None:
        server.channel_class = channel_class
    thread = threading.Thread(target=_run_server, args=(server,), daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.effective_port)
    finally:
        # Let the worker threads finish their tasks first (a task pulls the trigger when
        # it ends), then close every channel: the loop ends when its socket map is empty.
        server.task_dispatcher.shutdown(timeout=10)
        while server._map:
            for channel in list(server._map.values()):
                if isinstance(channel, HTTPChannel):
                    channel.handle_close()  # also drops its buffers
                else:
                    channel.close()
        thread.join(timeout=10)


def _run_server(server: Any) -> None:
    try:
        server.run()
    except (OSError, ValueError):
        pass  # the socket map was closed under the loop: that is how it stops


class Outer:
    """Wraps a middleware to keep the environ it was called with (after the call)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.environ: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environ = environ
        return self.app(environ, start_response)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: Any, secret: bytes | None) -> str:
    """A JWT built by hand (HMAC-SHA256 with ``secret``, or no signature when None)."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    )
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def call(app: Any, environ: dict[str, Any] | None = None, **overrides: Any) -> tuple[Any, ...]:
    """Call a WSGI app directly; returns (status, headers, app_iter, start_response calls)."""
    env: dict[str, Any] = dict(environ or {})
    env.update(overrides)
    setup_testing_defaults(env)
    calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append((status, headers, exc_info))
        return _write

    app_iter = app(env, start_response)
    status, headers = (calls[-1][0], calls[-1][1]) if calls else (None, None)
    return status, headers, app_iter, calls


def _write(data: bytes) -> None:
    raise AssertionError("write() is not used by these tests")
