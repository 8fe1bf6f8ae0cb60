"""CORSMiddleware: closed by default, exact and regex origins, preflights, Vary, options."""

from __future__ import annotations

from typing import Any

import pytest
from mwhelpers import Outer, RecordingApp
from webtest import TestApp

from middleware.cors import DEFAULT_EXPOSE_HEADERS, CORSMiddleware
from middleware.keys import ERROR_CODE

UI = "https://ui.example.com"


def cors(app: Any, **options: Any) -> TestApp:
    return TestApp(CORSMiddleware(app, **options))


def preflight(
    app: TestApp, origin: str = UI, method: str = "PUT", headers: str | None = None, **kw: Any
) -> Any:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        request_headers["Access-Control-Request-Headers"] = headers
    return app.options("/v1/a/b/1/x/blob", headers=request_headers, **kw)


def test_closed_by_default(recording_app: RecordingApp) -> None:
    app = cors(recording_app)
    response = app.get("/x", headers={"Origin": UI})
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert "Vary" not in response.headers
    refused = preflight(app, status=400)
    assert refused.json["error"]["code"] == "CORS_REJECTED"
    assert recording_app.calls[-1]["REQUEST_METHOD"] == "GET"  # the preflight never got in


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param(UI, True, id="exact"),
        pytest.param("https://UI.example.com", True, id="host-case"),
        pytest.param("http://ui.example.com", False, id="other-scheme"),
        pytest.param("https://ui.example.com:8443", False, id="other-port"),
        pytest.param("https://evil.example.com", False, id="other-host"),
        pytest.param("https://ui.example.com.evil.net", False, id="suffix-trick"),
        pytest.param("null", False, id="null-origin"),
    ],
)
def test_exact_origins(recording_app: RecordingApp, origin: str, allowed: bool) -> None:
    response = cors(recording_app, allow_origins=[UI + "/"]).get("/x", headers={"Origin": origin})
    if allowed:
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Expose-Headers"] == ", ".join(
            DEFAULT_EXPOSE_HEADERS
        )
    else:
        assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize(
    "configured",
    ["https://ui.example.com:443", "HTTPS://UI.example.com:0443/", "https://ui.example.com"],
)
def test_configured_origins_compare_as_browsers_send_them(
    recording_app: RecordingApp, configured: str
) -> None:
    """A browser leaves the default port out of Origin, so ``:443`` must not matter."""
    app = cors(recording_app, allow_origins=[configured])
    assert app.get("/x", headers={"Origin": UI}).headers["Access-Control-Allow-Origin"] == UI
    preflight = {"Origin": UI, "Access-Control-Request-Method": "PUT"}
    app.options("/x", headers=preflight, status=204)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param("https://pr-12.preview.example.com", True, id="match"),
        pytest.param("https://pr-12.preview.example.com.evil.net", False, id="whole-match-only"),
        pytest.param("http://pr-12.preview.example.com", False, id="scheme"),
    ],
)
def test_origin_patterns(recording_app: RecordingApp, origin: str, allowed: bool) -> None:
    app = cors(recording_app, allow_origin_regex=[r"https://[a-z0-9-]+\.preview\.example\.com"])
    response = app.get("/x", headers={"Origin": origin})
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed


def test_no_origin_header_still_varies(recording_app: RecordingApp) -> None:
    response = cors(recording_app, allow_origins=[UI]).get("/x")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"


def test_wildcard_sends_star_everywhere_without_vary(recording_app: RecordingApp) -> None:
    app = cors(recording_app, allow_origins=["*"])
    for headers in ({"Origin": "https://any.test"}, {}):
        response = app.get("/x", headers=headers)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Vary" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_credentials(recording_app: RecordingApp) -> None:
    app = cors(recording_app, allow_origins=[UI], allow_credentials=True)
    response = app.get("/x", headers={"Origin": UI})
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Origin"] == UI
    allowed = preflight(app, status=204)
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(
    ("app_headers", "vary"),
    [
        pytest.param([("Vary", "Accept-Encoding")], "Accept-Encoding, Origin", id="merged"),
        pytest.param([("Vary", "origin")], "origin", id="already-there"),
        pytest.param([("Vary", "*")], "*", id="star"),
    ],
)
def test_vary_is_merged_with_the_apps(app_headers: list, vary: str) -> None:
    recording = RecordingApp(headers=[("Content-Type", "text/plain"), *app_headers])
    response = cors(recording, allow_origins=[UI]).get("/x", headers={"Origin": UI})
    assert response.headers.getall("Vary") == [vary]


def test_the_apps_own_cors_headers_are_replaced() -> None:
    recording = RecordingApp(
        headers=[("Content-Type", "text/plain"), ("Access-Control-Allow-Origin", "*")]
    )
    response = cors(recording, allow_origins=[UI]).get("/x", headers={"Origin": UI})
    assert response.headers.getall("Access-Control-Allow-Origin") == [UI]


def test_only_the_cors_headers_it_sets_are_replaced() -> None:
    own = [("access-control-allow-origin", "*"), ("Access-Control-Max-Age", "5"), ("X-Vary", "1")]
    recording = RecordingApp(headers=[("Content-Type", "text/plain"), *own])
    response = cors(recording, allow_origins=[UI]).get("/x", headers={"Origin": UI})
    assert response.headers.getall("Access-Control-Allow-Origin") == [UI]
    assert response.headers["Access-Control-Max-Age"] == "5"
    assert response.headers["X-Vary"] == "1"
    assert response.headers.getall("Vary") == ["Origin"]


def test_allowed_preflight_is_answered_here(recording_app: RecordingApp) -> None:
    app = cors(recording_app, allow_origins=[UI], max_age=120)
    response = preflight(app, headers="Authorization, content-type", status=204)
    assert response.body == b""
    assert "Content-Type" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert (
        response.headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, PATCH, POST, PUT"
    )
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert response.headers["Access-Control-Max-Age"] == "120"
    assert "Origin" in response.headers["Vary"]
    assert recording_app.calls == []


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        pytest.param("https://evil.test", "PUT", None, id="origin"),
        pytest.param(UI, "TRACE", None, id="method"),
        pytest.param(UI, "PUT", "X-Secret-Header", id="header"),
        pytest.param(UI, "PUT", "Authorization, X-Other", id="one-of-the-headers"),
    ],
)
def test_refused_preflights_answer_400(
    recording_app: RecordingApp, origin: str, method: str, headers: str | None
) -> None:
    outer = Outer(CORSMiddleware(recording_app, allow_origins=[UI]))
    response = preflight(TestApp(outer), origin=origin, method=method, headers=headers, status=400)
    assert response.json["error"]["code"] == "CORS_REJECTED"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert outer.environ[ERROR_CODE] == "CORS_REJECTED"
    assert recording_app.calls == []


def test_any_header_and_custom_methods(recording_app: RecordingApp) -> None:
    app = cors(recording_app, allow_origins=[UI], allow_headers=["*"], allow_methods=["GET"])
    allowed = preflight(app, method="GET", headers="X-Anything", status=204)
    assert allowed.headers["Access-Control-Allow-Headers"] == "x-anything"
    preflight(app, method="PUT", status=400)


def test_plain_options_requests_reach_the_app(recording_app: RecordingApp) -> None:
    cors(recording_app, allow_origins=[UI]).options("/x", headers={"Origin": UI})
    assert recording_app.environ["REQUEST_METHOD"] == "OPTIONS"


def test_expose_headers_option(recording_app: RecordingApp) -> None:
    app = cors(recording_app, allow_origins=[UI], expose_headers=["ETag"])
    response = app.get("/x", headers={"Origin": UI})
    assert response.headers["Access-Control-Expose-Headers"] == "ETag"


CONFIG_ERRORS = [
    pytest.param(
        {"allow_origins": ["*"], "allow_credentials": True}, "allow_credentials", id="star-creds"
    ),
    pytest.param({"allow_origins": ["ui.example.com"]}, "allow_origins", id="no-scheme"),
    pytest.param({"allow_origins": ["https://ui.example.com/app"]}, "allow_origins", id="path"),
    pytest.param({"allow_origins": ["https://ui.example.com:"]}, "allow_origins", id="no-port"),
    pytest.param({"allow_origins": ["https://ui%2eexample.com"]}, "allow_origins", id="escape"),
    pytest.param({"allow_origins": ["https://ui.example.com:99999"]}, "allow_origins", id="port"),
    pytest.param({"allow_origins": UI}, "allow_origins", id="string-not-list"),
    pytest.param({"allow_origin_regex": ["("]}, "allow_origin_regex", id="bad-regex"),
    pytest.param({"allow_methods": ["GET POST"]}, "allow_methods", id="bad-method"),
    pytest.param({"allow_headers": ["X Y"]}, "allow_headers", id="bad-header"),
    pytest.param({"expose_headers": "ETag"}, "expose_headers", id="expose-string"),
    pytest.param({"max_age": -1}, "max_age", id="negative-max-age"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        CORSMiddleware(RecordingApp(), **options)
