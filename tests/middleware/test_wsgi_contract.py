"""PEP 3333 behaviour every middleware shares: streaming, close(), file_wrapper, exc_info.

Each middleware is configured so that the request passes through to the inner app (a valid
token, an allowed origin, a limit not reached, a path that is not a probe).
"""

from __future__ import annotations

import gc
import io
from collections.abc import Callable
from types import FunctionType
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from mwhelpers import SECRET, RecordingApp, make_token
from prometheus_client import CollectorRegistry
from webtest import TestApp

from middleware._wsgi import ResponseBody
from middleware.auth import JWTAuthMiddleware
from middleware.cors import CORSMiddleware
from middleware.health import HealthMiddleware
from middleware.metrics import MetricsMiddleware
from middleware.ratelimit import RateLimitMiddleware, Rule
from middleware.request_id import RequestIDMiddleware
from middleware.security_headers import SecurityHeadersMiddleware

CHUNK = 64 * 1024
CHUNKS = 256  # 16 MiB in all

Factory = Callable[[Any], Any]

MIDDLEWARES = [
    pytest.param(lambda app: JWTAuthMiddleware(app, keys={"k1": SECRET}), id="auth"),
    pytest.param(
        lambda app: RateLimitMiddleware(app, rules=[Rule("1000/minute")]), id="ratelimit"
    ),
    pytest.param(
        lambda app: CORSMiddleware(app, allow_origins=["https://ui.example.com"]), id="cors"
    ),
    pytest.param(lambda app: RequestIDMiddleware(app, access_log=False), id="request_id"),
    pytest.param(lambda app: HealthMiddleware(app, checks={"ok": lambda: True}), id="health"),
    pytest.param(lambda app: SecurityHeadersMiddleware(app, hsts_max_age=60), id="security"),
    pytest.param(lambda app: MetricsMiddleware(app, registry=CollectorRegistry()), id="metrics"),
]


def request_environ(**extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "HTTP_AUTHORIZATION": f"Bearer {make_token()}",
        "HTTP_ORIGIN": "https://ui.example.com",
        "PATH_INFO": "/v1/acme/tool/1.0.0/linux/blob",
        "REMOTE_ADDR": "192.0.2.10",
    }
    environ.update(extra)
    setup_testing_defaults(environ)
    return environ


class Server:
    """A start_response that records its calls and hands out a sentinel write()."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def write(self, data: bytes) -> None:
        raise AssertionError("not used")

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if self.calls and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        self.calls.append((status, headers, exc_info))
        return self.write


@pytest.mark.parametrize("factory", MIDDLEWARES)
def test_a_large_body_streams_through_without_buffering(factory: Factory) -> None:
    produced = []

    def body() -> Any:
        for index in range(CHUNKS):
            produced.append(index)
            yield b"x" * CHUNK

    app = RecordingApp(headers=[("Content-Type", "application/octet-stream")], body=body)
    server = Server()
    app_iter = factory(app)(request_environ(), server)
    assert produced == []  # nothing was read ahead by the call
    iterator = iter(app_iter)
    total = len(next(iterator))
    assert len(produced) == 1  # one chunk out for one chunk in
    for chunk in iterator:
        total += len(chunk)
    assert total == CHUNK * CHUNKS
    assert app.closed == 0
    app_iter.close()
    assert app.closed == 1
    assert server.calls[0][0] == "200 OK"


@pytest.mark.parametrize("factory", MIDDLEWARES)
def test_close_is_passed_through_when_the_client_goes_away(factory: Factory) -> None:
    app = RecordingApp(body=lambda: iter([b"a", b"b", b"c"]))
    app_iter = factory(app)(request_environ(), Server())
    next(iter(app_iter))
    app_iter.close()
    assert app.closed == 1
    assert app.chunks_sent == 1


@pytest.mark.parametrize("factory", MIDDLEWARES)
def test_file_wrapper_keeps_working(factory: Factory) -> None:
    data = bytes(range(256)) * 4096
    handle = io.BytesIO(data)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle, 8192)

    returned = []

    def keep(environ: dict, start_response: Any) -> Any:
        returned.append(app(environ, start_response))
        return returned[0]

    app_iter = factory(keep)(request_environ(**{"wsgi.file_wrapper": FileWrapper}), Server())
    # The server gets its own wrapper back, so it can send the file its fastest way.
    assert app_iter is returned[0]
    assert b"".join(app_iter) == data
    app_iter.close()
    assert handle.closed


class SlottedWrapper:
    """A server file wrapper whose close() cannot be replaced."""

    __slots__ = ("filelike",)

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike

    def __iter__(self) -> Any:
        return iter(lambda: self.filelike.read(8192), b"")

    def close(self) -> None:
        self.filelike.close()


@pytest.mark.parametrize("factory", MIDDLEWARES)
@pytest.mark.parametrize(
    "wrapper",
    [
        pytest.param(SlottedWrapper, id="slotted-class"),
        pytest.param(lambda f, size=8192: FileWrapper(f, size), id="function"),
    ],
)
def test_other_file_wrappers_are_streamed_and_closed(factory: Factory, wrapper: Any) -> None:
    data = b"abc" * 10000
    handle = io.BytesIO(data)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle, 8192)

    app_iter = factory(app)(request_environ(**{"wsgi.file_wrapper": wrapper}), Server())
    assert b"".join(app_iter) == data
    app_iter.close()
    assert handle.closed


@pytest.mark.parametrize("factory", MIDDLEWARES)
def test_exc_info_and_write_are_forwarded(factory: Factory) -> None:
    writes = []

    def app(environ: dict, start_response: Any) -> Any:
        writes.append(start_response("200 OK", [("Content-Type", "text/plain")]))
        try:
            raise ValueError("changed my mind")
        except ValueError as err:
            writes.append(
                start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain")],
                    (ValueError, err, err.__traceback__),
                )
            )
        return [b"error"]

    server = Server()
    app_iter = factory(app)(request_environ(), server)
    assert b"".join(app_iter) == b"error"
    app_iter_close = getattr(app_iter, "close", None)
    if app_iter_close:
        app_iter_close()
    assert [call[0] for call in server.calls] == ["200 OK", "500 Internal Server Error"]
    assert server.calls[1][2][0] is ValueError
    assert writes == [server.write, server.write]


@pytest.mark.parametrize("factory", MIDDLEWARES)
def test_request_bodies_are_left_for_the_app(factory: Factory) -> None:
    received = []

    def inspect(environ: dict) -> None:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        received.append(environ["wsgi.input"].read(length))

    app = TestApp(factory(RecordingApp(inspect=inspect)))
    app.put(
        "/v1/acme/tool/1.0.0/linux/blob",
        params=b"\x00" * 100_000,
        headers={"Authorization": f"Bearer {make_token()}", "Origin": "https://ui.example.com"},
        content_type="application/octet-stream",
    )
    assert received == [b"\x00" * 100_000]


@pytest.mark.parametrize("factory", MIDDLEWARES)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_pep_3333_lint(factory: Factory, method: str) -> None:
    app = TestApp(factory(RecordingApp()), lint=True)
    app.request(
        "/v1/acme/tool/latest",
        method=method,
        headers={"Authorization": f"Bearer {make_token()}", "Origin": "https://ui.example.com"},
    )


def test_the_standard_stack_leaves_no_garbage_cycles_behind() -> None:
    """Every object of a request is freed when its body is closed, not by the collector.

    Objects caught in reference cycles wait for a garbage collection, and collections
    under load stall every thread of the server.
    """
    app: Any = RecordingApp()
    app = JWTAuthMiddleware(app, keys={"k1": SECRET})
    app = RateLimitMiddleware(app, rules=[Rule("1000/minute")])
    app = HealthMiddleware(app, checks={"ok": lambda: True})
    app = CORSMiddleware(app, allow_origins=["https://ui.example.com"])
    app = SecurityHeadersMiddleware(app)
    app = MetricsMiddleware(app, registry=CollectorRegistry())
    app = RequestIDMiddleware(app, access_log=False)
    environs = [request_environ() for _ in range(21)]
    gc.collect()
    gc.disable()
    try:
        for environ in environs:
            body = app(environ, Server())
            assert b"".join(body) == b"ok"
            body.close()
        del body
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to look at it
        gc.collect()
        # Other threads of the test run may leave garbage of their own meanwhile (limits'
        # memory storages of earlier tests, with their timers), so look for ours only.
        ours = [
            o
            for o in gc.garbage
            if isinstance(o, ResponseBody)
            or (isinstance(o, FunctionType) and o.__module__.startswith("middleware."))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []
