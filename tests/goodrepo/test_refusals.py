"""waitress's own refusals answered through the app (goodrepo.refusals), on a real
waitress server on 127.0.0.1; the whole stack's answers are tested end to end in
tests/e2e/test_server.py."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from waitress.adjustments import Adjustments
from waitress.utilities import (
    BadRequest,
    InternalServerError,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    ServerNotImplemented,
)

from goodrepo.refusals import RefusalChannel, refusal_of
from goodrepo.stack import SERVER_REFUSAL
from tests.middleware.mwhelpers import serve

ADJ = Adjustments(max_request_body_size=1001, max_request_header_size=4096)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            RequestEntityTooLarge("x"),
            (413, "PAYLOAD_TOO_LARGE", "the request body is over 1000 bytes"),
        ),
        (
            RequestHeaderFieldsTooLarge("x"),
            (431, "INVALID_REQUEST", "the request line and headers are over 4096 bytes"),
        ),
        (
            ServerNotImplemented("x"),
            (501, "NOT_IMPLEMENTED", "the only Transfer-Encoding accepted is chunked"),
        ),
        (BadRequest("Bad URI"), (400, "INVALID_REQUEST", "malformed request: Bad URI")),
        # waitress quotes the offending request bytes, which may hold a secret: dropped.
        (
            BadRequest('Bare CR or LF found in header line "Authorization: Bearer s3cret\r"'),
            (400, "INVALID_REQUEST", "malformed request: Bare CR or LF found in header line"),
        ),
        (
            BadRequest('Header "X-Forwarded-For" malformed.'),
            (400, "INVALID_REQUEST", "malformed request: Header malformed"),
        ),
        (BadRequest(""), (400, "INVALID_REQUEST", "malformed request: refused")),
        (InternalServerError("traceback here"), (500, "INTERNAL_ERROR", "internal server error")),
    ],
)
def test_refusal_of_names_the_error_without_echoing_the_request(
    error: Any, expected: tuple[int, str, str]
) -> None:
    assert refusal_of(error, ADJ) == expected


def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def refusing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers a refusal in JSON, and any other request 200; reads no body."""
    refusal = environ.get(SERVER_REFUSAL)
    if refusal is None:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    assert environ["wsgi.input"].read() == b""
    status, code, message = refusal
    body = json.dumps({"code": code, "message": message}).encode()
    start_response(f"{status} Refused", [("Content-Type", "application/json")])
    return [body]


def test_a_refusal_goes_through_the_app_and_closes_the_connection() -> None:
    with serve(refusing_app, channel_class=RefusalChannel, max_request_body_size=1001) as (
        _,
        port,
    ):
        head, body = exchange(port, b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 Refused\r\n"), head
        assert b"\r\nConnection: close" in head
        assert json.loads(body) == {
            "code": "PAYLOAD_TOO_LARGE",
            "message": "the request body is over 1000 bytes",
        }
        head, body = exchange(
            port,
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"ok"


def test_an_app_failing_on_a_refusal_leaves_waitress_s_own_answer() -> None:
    def failing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("broken")

    with serve(failing_app, channel_class=RefusalChannel, max_request_body_size=1001) as (
        _,
        port,
    ):
        head, body = exchange(port, b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), head
    assert b"\r\nConnection: close" in head
    assert body.startswith(b"Request Entity Too Large")
