"""RequestIDMiddleware: IDs in and out, the logging filter, the access log, JSON logging."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mwhelpers import RecordingApp, bearer, call, make_token
from webtest import TestApp

from middleware import request_id as request_id_module
from middleware.jsonlog import configure_json_logging
from middleware.keys import CLIENT_ADDR, PRINCIPAL, REQUEST_ID
from middleware.request_id import (
    RequestIDFilter,
    RequestIDMiddleware,
    current_request_id,
    is_valid_request_id,
)

FRESH = re.compile(r"[0-9a-f]{32}")
ACCESS = "goodrepo.access"


class ListHandler(logging.Handler):
    """Keeps records, with the request-ID filter attached as a deployment would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIDFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Any:
    handler = ListHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def access_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.name == ACCESS]


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        pytest.param("abc-123_x.y", True, id="well-formed"),
        pytest.param("a" * 128, True, id="128-characters"),
        pytest.param("a" * 129, False, id="129-characters"),
        pytest.param("", False, id="empty"),
        pytest.param("has space", False, id="space"),
        pytest.param("semi;colon", False, id="punctuation"),
        pytest.param("tab\there", False, id="control-character"),
        pytest.param("caf\xe9", False, id="non-ascii"),
        pytest.param("../../etc/passwd", False, id="slashes"),
    ],
)
def test_incoming_ids_are_kept_only_when_well_formed(
    recording_app: RecordingApp, incoming: str, kept: bool
) -> None:
    status, headers, body, _ = call(RequestIDMiddleware(recording_app), HTTP_X_REQUEST_ID=incoming)
    body.close()
    sent = dict(headers)["X-Request-ID"]
    assert recording_app.environ[REQUEST_ID] == sent
    if kept:
        assert sent == incoming
    else:
        assert FRESH.fullmatch(sent)


@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=160))
def test_any_incoming_value_yields_a_safe_id(incoming: str) -> None:
    status, headers, body, _ = call(
        RequestIDMiddleware(RecordingApp(), access_log=False), HTTP_X_REQUEST_ID=incoming
    )
    body.close()
    sent = dict(headers)["X-Request-ID"]
    assert is_valid_request_id(sent)
    assert (sent == incoming) is is_valid_request_id(incoming)


def test_webtest_round_trip_and_the_apps_own_header_replaced() -> None:
    app = RecordingApp(headers=[("Content-Type", "text/plain"), ("X-Request-ID", "from-app")])
    response = TestApp(RequestIDMiddleware(app)).get("/x", headers={"X-Request-ID": "mine"})
    assert response.headers.getall("X-Request-ID") == ["mine"]


def test_a_header_named_like_it_is_not_replaced() -> None:
    own = [("x-request-id", "from-app"), ("X-Request-ID-Upstream", "u1")]
    app = RecordingApp(headers=[("Content-Type", "text/plain"), *own])
    response = TestApp(RequestIDMiddleware(app)).get("/x", headers={"X-Request-ID": "mine"})
    assert response.headers.getall("X-Request-ID") == ["mine"]
    assert response.headers["X-Request-ID-Upstream"] == "u1"


def test_options(recording_app: RecordingApp) -> None:
    middleware = RequestIDMiddleware(
        recording_app, header="X-Correlation-ID", trust_incoming=False, generate=lambda: "fixed"
    )
    response = TestApp(middleware).get("/", headers={"X-Correlation-ID": "client"})
    assert response.headers["X-Correlation-ID"] == "fixed"
    assert "X-Request-ID" not in response.headers


def test_every_record_during_the_request_carries_the_id(records: list) -> None:
    def inspect(environ: dict) -> None:
        logging.getLogger("some.library").warning("inside the app")

    app = TestApp(RequestIDMiddleware(RecordingApp(inspect=inspect)))
    app.get("/", headers={"X-Request-ID": "req-1"})
    logging.getLogger("some.library").warning("after the request")
    inside, after = [r for r in records if r.name == "some.library"]
    assert inside.request_id == "req-1"
    assert after.request_id is None
    assert current_request_id() is None


def test_the_access_log_line(records: list) -> None:
    app = RecordingApp(route="/v1/{ns}/{name}/latest", body=b"12345")

    def inspect(environ: dict) -> None:
        environ[PRINCIPAL] = {"sub": "alice"}
        environ[CLIENT_ADDR] = "203.0.113.9"

    app.inspect = inspect
    token = make_token()
    TestApp(RequestIDMiddleware(app)).get(
        "/v1/acme/tool/latest?token=secret-in-query",
        headers={"X-Request-ID": "req-2", **bearer(token), "Cookie": "session=s3cr3t"},
    )
    (line,) = access_records(records)
    assert line.levelno == logging.INFO
    assert line.method == "GET"
    assert line.path == "/v1/acme/tool/latest"
    assert line.route == "/v1/{ns}/{name}/latest"
    assert line.status == 200
    assert line.bytes == 5
    assert line.duration_ms >= 0
    assert line.client == "203.0.113.9"
    assert line.user == "alice"
    assert line.request_id == "req-2"
    assert line.error_code is None
    everything = json.dumps({k: str(v) for k, v in vars(line).items()})
    for secret in (token, "secret-in-query", "s3cr3t"):
        assert secret not in everything


@pytest.mark.parametrize(
    ("path_info", "logged"),
    [
        pytest.param("/x\nGET /forged 200", "/x\\x0aGET /forged 200", id="newline"),
        pytest.param("/x\r\n", "/x\\x0d\\x0a", id="crlf"),
        pytest.param("/x\x1b[31m", "/x\\x1b[31m", id="terminal-escape"),
        pytest.param("/x\xe2\x80\xa8y", "/x\\x2028y", id="line-separator"),
    ],
)
def test_control_characters_in_the_path_cannot_forge_log_lines(
    records: list, path_info: str, logged: str
) -> None:
    _, _, body, _ = call(RequestIDMiddleware(RecordingApp()), PATH_INFO=path_info)
    list(body)
    body.close()
    (line,) = access_records(records)
    assert line.path == logged
    assert "\n" not in line.getMessage() and "\r" not in line.getMessage()


def test_the_access_log_is_written_when_the_body_closes(records: list) -> None:
    app = RecordingApp(body=lambda: [b"a", b"bc"], error_code="NOT_FOUND", status="404 Not Found")
    status, headers, body, _ = call(RequestIDMiddleware(app), REMOTE_ADDR="192.0.2.1")
    assert access_records(records) == []
    assert b"".join(body) == b"abc"
    assert access_records(records) == []
    body.close()
    (line,) = access_records(records)
    assert (line.status, line.bytes, line.error_code, line.client) == (
        404,
        3,
        "NOT_FOUND",
        "192.0.2.1",
    )
    assert app.closed == 1


def test_access_log_can_be_off_or_elsewhere(recording_app: RecordingApp, records: list) -> None:
    TestApp(RequestIDMiddleware(recording_app, access_log=False)).get("/")
    assert access_records(records) == []
    TestApp(RequestIDMiddleware(recording_app, access_logger="my.access")).get("/")
    assert [r.name for r in records] == ["my.access"]


def test_an_escaping_exception_becomes_a_json_500_with_the_id(records: list) -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        raise RuntimeError("secret detail")

    response = TestApp(RequestIDMiddleware(broken)).get(
        "/", headers={"X-Request-ID": "req-3"}, status=500
    )
    assert response.json == {
        "error": {
            "code": "INTERNAL_ERROR",
            "message": "internal server error",
            "request_id": "req-3",
        }
    }
    assert response.headers["X-Request-ID"] == "req-3"
    assert "secret detail" not in response.text
    (error,) = [r for r in records if r.name == "middleware.request_id"]
    assert error.exc_info is not None and error.request_id == "req-3"
    (line,) = access_records(records)
    assert (line.status, line.error_code) == (500, "INTERNAL_ERROR")


def test_an_exception_after_start_response_is_replaced_with_exc_info() -> None:
    def half_started(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("late")

    status, headers, body, calls = call(RequestIDMiddleware(half_started, access_log=False))
    body.close()
    assert [c[0] for c in calls] == ["200 OK", "500 Internal Server Error"]
    assert calls[1][2] is not None and calls[1][2][0] is RuntimeError


def test_catch_errors_off_reraises_and_still_logs(records: list) -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(RequestIDMiddleware(broken, catch_errors=False))
    (line,) = access_records(records)
    assert (line.status, line.error_code) == (500, "INTERNAL_ERROR")
    assert current_request_id() is None


def test_an_error_while_streaming_is_logged_as_such(records: list) -> None:
    def chunks() -> Any:
        yield b"part"
        raise RuntimeError("disk vanished")

    status, headers, body, _ = call(RequestIDMiddleware(RecordingApp(body=chunks)))
    with pytest.raises(RuntimeError):
        list(body)
    body.close()
    (line,) = access_records(records)
    assert (line.status, line.bytes, line.error_code) == (200, 4, "INTERNAL_ERROR")


class Server:
    """A server's side of PEP 3333: start_response, write() and the re-raise of exc_info
    once the headers went out."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.sent = b""

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.statuses.append(status)
        return self.write

    def write(self, data: bytes) -> None:
        self.sent += data

    def run(self, app: Any, method: str = "GET") -> bytes:
        environ = {"REQUEST_METHOD": method}
        setup_testing_defaults(environ)
        body = app(environ, self.start_response)
        try:
            for chunk in body:
                self.sent += chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return self.sent


def test_an_exception_after_the_headers_went_out_is_logged_once_for_the_server(
    records: list,
) -> None:
    def half_sent(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])(b"partial")
        raise RuntimeError("boom")

    server = Server()
    with pytest.raises(RuntimeError):  # the server ends the response and logs the error
        server.run(RequestIDMiddleware(half_sent))
    (line,) = access_records(records)
    assert (line.status, line.bytes, line.error_code) == (200, 7, "INTERNAL_ERROR")
    assert not [r for r in records if r.name == "middleware.request_id"]
    assert current_request_id() is None


def test_a_generator_app_that_fails_before_answering_gets_the_json_500(records: list) -> None:
    closed = []

    def lazy(environ: dict, start_response: Any) -> Any:
        try:
            if environ:
                raise RuntimeError("db down")
            yield b""
        finally:
            closed.append(True)

    server = Server()
    body = json.loads(server.run(RequestIDMiddleware(lazy)))
    assert server.statuses == ["500 Internal Server Error"]
    assert body["error"]["code"] == "INTERNAL_ERROR" and closed == [True]
    (line,) = access_records(records)
    assert (line.status, line.error_code) == (500, "INTERNAL_ERROR")


def test_a_generator_app_streams_through_whole(records: list) -> None:
    def lazy(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one "
        yield b"two"

    assert Server().run(RequestIDMiddleware(lazy)) == b"one two"
    (line,) = access_records(records)
    assert (line.status, line.bytes) == (200, 7)


def test_a_lazy_body_that_answers_with_nothing_is_started_once(records: list) -> None:
    class NoContent:  # starts the response when iterated, as some frameworks do
        def __init__(self, start_response: Any) -> None:
            self.start_response, self.closed = start_response, 0

        def __iter__(self) -> Any:
            self.start_response("204 No Content", [])
            return iter(())

        def close(self) -> None:
            self.closed += 1

    bodies: list[NoContent] = []

    def app(environ: dict, start_response: Any) -> Any:
        bodies.append(NoContent(start_response))
        return bodies[-1]

    server = Server()
    assert server.run(RequestIDMiddleware(app)) == b""
    assert server.statuses == ["204 No Content"] and bodies[0].closed == 1


def test_bytes_sent_through_write_are_counted(records: list) -> None:
    def legacy(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "10")])(b"0123456789")
        return []

    assert Server().run(RequestIDMiddleware(legacy)) == b"0123456789"
    (line,) = access_records(records)
    assert line.bytes == 10


def test_a_head_request_logs_no_body_bytes(records: list) -> None:
    Server().run(RequestIDMiddleware(RecordingApp()), method="HEAD")
    (line,) = access_records(records)
    assert line.bytes == 0


def test_an_app_that_returns_no_iterable_is_still_logged(records: list) -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [])
        return None

    with pytest.raises(TypeError):
        Server().run(RequestIDMiddleware(broken))
    (line,) = access_records(records)
    assert line.error_code == "INTERNAL_ERROR"
    assert current_request_id() is None


def test_the_logged_path_is_capped_after_escaping() -> None:
    logged = request_id_module._logged_path({"PATH_INFO": "/" + "\n" * 3000})
    assert len(logged) == 2048 + 3 and logged.endswith("...")


CONFIG_ERRORS = [
    pytest.param({"header": "X Request"}, "header", id="bad-header"),
    pytest.param({"generate": lambda: "no spaces allowed"}, "generate", id="bad-generator"),
    pytest.param({"access_logger": 5}, "access_logger", id="logger-not-a-logger"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RequestIDMiddleware(RecordingApp(), **options)


@pytest.fixture
def scratch_logger() -> Any:
    logger = logging.getLogger("test.jsonlog")
    before = list(logger.handlers)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_json_logging_set_up(scratch_logger: logging.Logger) -> None:
    stream = io.StringIO()
    first = configure_json_logging("info", stream=stream, logger=scratch_logger)
    second = configure_json_logging("INFO", stream=stream, logger=scratch_logger)
    assert first not in scratch_logger.handlers  # replaced, not added twice
    assert second in scratch_logger.handlers

    def inspect(environ: dict) -> None:
        scratch_logger.info("line\nbreak", extra={"path": "/a\x1b[31m"})

    TestApp(RequestIDMiddleware(RecordingApp(inspect=inspect), access_log=False)).get(
        "/", headers={"X-Request-ID": "req-4"}
    )
    scratch_logger.debug("below the level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "line\nbreak"
    assert record["request_id"] == "req-4"
    assert record["level"] == "INFO"
    assert record["logger"] == "test.jsonlog"
    assert record["path"] == "/a\x1b[31m"
    assert "\x1b" not in lines[0]
    assert record["time"].endswith("+00:00")


def test_json_logging_refuses_an_unknown_level(scratch_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="level"):
        configure_json_logging("LOUD", logger=scratch_logger)


def test_a_server_file_wrapper_is_logged_when_it_closes(records: list) -> None:
    handle = io.BytesIO(b"x" * 5000)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5000")])
        return environ["wsgi.file_wrapper"](handle)

    status, headers, body, _ = call(RequestIDMiddleware(app), **{"wsgi.file_wrapper": FileWrapper})
    assert isinstance(body, FileWrapper)
    assert access_records(records) == []
    body.close()
    (line,) = access_records(records)
    assert (line.status, line.bytes) == (200, 5000)
    assert handle.closed


class SlottedFileWrapper:
    """A server file wrapper whose ``close`` cannot be replaced on the instance."""

    __slots__ = ("handle",)

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __iter__(self) -> Any:
        return iter(lambda: self.handle.read(1000), b"")

    def close(self) -> None:
        self.handle.close()


def test_a_file_wrapper_that_cannot_be_hooked_is_counted_as_it_streams(records: list) -> None:
    handle = io.BytesIO(b"x" * 5000)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5000")])
        return environ["wsgi.file_wrapper"](handle)

    wrapper = {"wsgi.file_wrapper": SlottedFileWrapper}
    status, headers, body, _ = call(RequestIDMiddleware(app), **wrapper)
    assert not isinstance(body, SlottedFileWrapper)  # wrapped, to see its close()
    assert b"".join(body) == b"x" * 5000
    body.close()
    (line,) = access_records(records)
    assert (line.status, line.bytes) == (200, 5000)  # counted once, not declared + sent
    assert handle.closed


def test_every_character_the_logged_path_escapes_is_unprintable() -> None:
    # _logged_path returns a printable path as it is, without looking for these.
    printable = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isprintable())
    assert request_id_module._CONTROL.search(printable) is None
