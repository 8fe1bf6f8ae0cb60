"""All seven middlewares under a real waitress on 127.0.0.1, with concurrent clients.

Each request carries its own token and request ID; the app answers what it saw. Any state
shared by mistake between requests (on ``self``, in a context variable that is not reset)
shows up as an answer that belongs to another request.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mwhelpers import SECRET, make_token, serve
from prometheus_client import CollectorRegistry

from middleware.auth import JWTAuthMiddleware
from middleware.cors import CORSMiddleware
from middleware.health import HealthMiddleware
from middleware.keys import PRINCIPAL, REQUEST_ID, ROUTE
from middleware.metrics import MetricsMiddleware
from middleware.ratelimit import RateLimitMiddleware, Rule
from middleware.request_id import RequestIDMiddleware, current_request_id
from middleware.security_headers import SecurityHeadersMiddleware

pytestmark = pytest.mark.slow

CLIENTS = 16
REQUESTS_EACH = 25
log = logging.getLogger("test.concurrency")


def core(environ: dict[str, Any], start_response: Any) -> Any:
    """Echo what this request looks like from the inside."""
    if environ["PATH_INFO"] == "/file":
        environ[ROUTE] = "/file"
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        handle = open(environ["test.file"], "rb")  # noqa: SIM115 - closed by the server
        environ["test.handles"].append(handle)
        return environ["wsgi.file_wrapper"](handle, 64 * 1024)
    environ[ROUTE] = "/echo"
    time.sleep(random.random() / 500)  # let requests overlap
    log.info("inside")
    body = json.dumps(
        {
            "sub": environ[PRINCIPAL]["sub"],
            "request_id": environ[REQUEST_ID],
            "context_request_id": current_request_id(),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def full_stack(app: Any, registry: CollectorRegistry, extra: dict[str, Any]) -> Any:
    """The standard order, outermost last."""

    def inject(environ: dict[str, Any], start_response: Any) -> Any:
        environ.update(extra)
        return app(environ, start_response)

    stack: Any = JWTAuthMiddleware(inject, keys={"k1": SECRET})
    stack = RateLimitMiddleware(
        stack,
        rules=[Rule("1000/minute"), Rule("10/minute", path="/limited", name="limited")],
    )
    stack = HealthMiddleware(stack, checks={"ok": lambda: True})
    stack = CORSMiddleware(stack, allow_origins=["https://ui.example.com"])
    stack = SecurityHeadersMiddleware(stack)
    stack = MetricsMiddleware(stack, registry=registry)
    return RequestIDMiddleware(stack, access_log=False)


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    """One request on its own connection; the headers answer case-insensitively."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_no_state_leaks_between_concurrent_requests(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    tokens = {n: make_token(sub=f"user{n}") for n in range(CLIENTS)}
    stack = full_stack(core, registry, {})
    with serve(stack, threads=8) as (_host, port):

        def client(n: int) -> list[str]:
            problems = []
            for i in range(REQUESTS_EACH):
                request_id = f"c{n}-r{i}"
                status, headers, body = get(
                    port,
                    "/echo",
                    {"Authorization": f"Bearer {tokens[n]}", "X-Request-ID": request_id},
                )
                seen = json.loads(body) if status == 200 else {}
                expected = {
                    "sub": f"user{n}",
                    "request_id": request_id,
                    "context_request_id": request_id,
                }
                if status != 200 or seen != expected or headers.get("X-Request-ID") != request_id:
                    problems.append(f"{request_id}: {status} {seen} {headers}")
            return problems

        with ThreadPoolExecutor(CLIENTS) as pool:
            problems = [p for result in pool.map(client, range(CLIENTS)) for p in result]
    assert problems == []
    total = registry.get_sample_value(
        "goodrepo_http_requests_total", {"method": "GET", "route": "/echo", "status": "200"}
    )
    assert total == CLIENTS * REQUESTS_EACH
    assert registry.get_sample_value("goodrepo_http_requests_in_flight") == 0


def test_a_limit_holds_under_concurrency() -> None:
    stack = full_stack(core, CollectorRegistry(), {})
    headers = {"Authorization": f"Bearer {make_token()}"}
    with serve(stack, threads=8) as (_host, port):
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: get(port, "/limited", headers)[0], range(30)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


def test_file_wrapper_through_the_full_stack_on_waitress(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    handles: list[Any] = []
    stack = full_stack(
        core, CollectorRegistry(), {"test.file": str(path), "test.handles": handles}
    )
    bodies: list[Any] = []

    def outermost(environ: dict[str, Any], start_response: Any) -> Any:
        bodies.append(stack(environ, start_response))
        return bodies[-1]

    with serve(outermost, threads=2) as (_host, port):
        status, headers, body = get(port, "/file", {"Authorization": f"Bearer {make_token()}"})
        deadline = time.monotonic() + 5
        while not (handles and handles[0].closed) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert status == 200
    assert body == data
    assert handles[0].closed
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Waitress got its own file wrapper back, so it streamed the file without a worker.
    assert type(bodies[0]).__name__ == "ReadOnlyFileBasedBuffer"


def test_probes_answer_under_load_without_a_token() -> None:
    stack = full_stack(core, CollectorRegistry(), {})
    with serve(stack, threads=4) as (_host, port):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: get(port, "/health/ready", {}), range(40)))
    assert {status for status, _, _ in results} == {200}
    ids = {headers["X-Request-ID"] for _, headers, _ in results}
    assert len(ids) == 40  # every request got its own ID
    assert threading.active_count() < 50
