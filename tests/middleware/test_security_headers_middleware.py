"""SecurityHeadersMiddleware: defaults, CSP on HTML only, HSTS, the app's own headers kept."""

from __future__ import annotations

import pytest
from mwhelpers import RecordingApp
from webtest import TestApp

from middleware.security_headers import DEFAULT_CSP, SecurityHeadersMiddleware


def html_app(*extra: tuple[str, str]) -> RecordingApp:
    return RecordingApp(headers=[("Content-Type", "text/html; charset=utf-8"), *extra])


def test_defaults_on_a_json_answer() -> None:
    app = RecordingApp(headers=[("Content-Type", "application/json")], body=b"{}")
    response = TestApp(SecurityHeadersMiddleware(app)).get("/x")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" not in response.headers
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/html", id="html"),
        pytest.param("TEXT/HTML; charset=utf-8", id="html-upper-with-charset"),
        pytest.param("application/xhtml+xml", id="xhtml"),
    ],
)
def test_csp_on_html_answers(content_type: str) -> None:
    app = RecordingApp(headers=[("Content-Type", content_type)])
    response = TestApp(SecurityHeadersMiddleware(app)).get("/ui")
    assert response.headers["Content-Security-Policy"] == DEFAULT_CSP


def test_frame_options_sameorigin_relaxes_the_default_csp_to_match() -> None:
    response = TestApp(SecurityHeadersMiddleware(html_app(), frame_options="sameorigin")).get("/")
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-Frame-Options", "SAMEORIGIN", id="frame-options"),
        pytest.param("x-content-type-options", "nosniff", id="lower-case-name"),
        pytest.param("Referrer-Policy", "same-origin", id="referrer"),
        pytest.param("Content-Security-Policy", "default-src 'none'", id="csp"),
        pytest.param("Strict-Transport-Security", "max-age=60", id="hsts"),
    ],
)
def test_headers_the_app_set_are_kept(name: str, value: str) -> None:
    app = html_app((name, value))
    response = TestApp(SecurityHeadersMiddleware(app, hsts_max_age=600)).get("/")
    assert response.headers.getall(name) == [value]


def test_names_are_matched_whole_and_in_any_case() -> None:
    # A header whose name only begins or ends like one of ours does not stand in for it.
    app = RecordingApp(
        headers=[
            ("content-type", "text/html"),
            ("X-Frame-Options-Report", "x"),
            ("Old-Referrer-Policy", "x"),
            ("Content-Security-Policy-Report-Only", "default-src 'self'"),
        ]
    )
    response = TestApp(SecurityHeadersMiddleware(app)).get("/")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"] == DEFAULT_CSP
    assert response.headers["Content-Security-Policy-Report-Only"] == "default-src 'self'"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            {"hsts_max_age": 31536000}, "max-age=31536000; includeSubDomains", id="default"
        ),
        pytest.param(
            {"hsts_max_age": 60, "hsts_include_subdomains": False}, "max-age=60", id="host-only"
        ),
        pytest.param(
            {"hsts_max_age": 63072000, "hsts_preload": True},
            "max-age=63072000; includeSubDomains; preload",
            id="preload",
        ),
    ],
)
def test_hsts_when_configured(recording_app: RecordingApp, options: dict, expected: str) -> None:
    response = TestApp(SecurityHeadersMiddleware(recording_app, **options)).get("/")
    assert response.headers["Strict-Transport-Security"] == expected


def test_headers_can_be_turned_off_and_added() -> None:
    middleware = SecurityHeadersMiddleware(
        html_app(),
        referrer_policy=None,
        frame_options=None,
        content_security_policy=None,
        extra_headers={"Permissions-Policy": "camera=()"},
    )
    response = TestApp(middleware).get("/")
    for name in ("Referrer-Policy", "X-Frame-Options", "Content-Security-Policy"):
        assert name not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Permissions-Policy"] == "camera=()"


def test_error_answers_get_the_headers_too() -> None:
    app = RecordingApp(status="404 Not Found", headers=[("Content-Type", "application/json")])
    response = TestApp(SecurityHeadersMiddleware(app)).get("/", status=404)
    assert response.headers["X-Content-Type-Options"] == "nosniff"


CONFIG_ERRORS = [
    pytest.param({"frame_options": "ALLOW-FROM x"}, "frame_options", id="frame-options"),
    pytest.param({"referrer_policy": "a\r\nSet-Cookie: x"}, "referrer_policy", id="crlf"),
    pytest.param({"referrer_policy": ""}, "referrer_policy", id="empty"),
    pytest.param({"hsts_max_age": -1}, "hsts_max_age", id="negative-hsts"),
    pytest.param({"hsts_max_age": "1y"}, "hsts_max_age", id="hsts-not-int"),
    pytest.param({"extra_headers": {"Bad Name": "x"}}, "extra_headers", id="bad-name"),
    pytest.param({"extra_headers": {"X-Frame-Options": "DENY"}}, "extra_headers", id="duplicate"),
    pytest.param(
        {"extra_headers": {"content-security-policy": "default-src 'none'"}},
        "extra_headers",
        id="csp-twice",
    ),
    pytest.param({"content_security_policy": "é"}, "content_security_policy", id="non-ascii"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SecurityHeadersMiddleware(RecordingApp(), **options)


def test_a_csp_of_ones_own_goes_on_every_answer_when_the_default_is_off() -> None:
    own = {"Content-Security-Policy": "default-src 'none'"}
    html = RecordingApp(headers=[("Content-Type", "text/html")])
    app = TestApp(SecurityHeadersMiddleware(html, content_security_policy=None, extra_headers=own))
    assert app.get("/").headers.getall("Content-Security-Policy") == ["default-src 'none'"]
