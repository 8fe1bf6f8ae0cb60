"""The documented example: a Flask app wrapped in three of the middlewares."""

from __future__ import annotations

import pytest
from mwhelpers import SECRET, bearer, make_token
from webtest import TestApp

from middleware.auth import JWTAuthMiddleware
from middleware.keys import PRINCIPAL, REQUEST_ID
from middleware.request_id import RequestIDMiddleware
from middleware.security_headers import SecurityHeadersMiddleware

flask = pytest.importorskip("flask")


def create_app() -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/hello")
    def hello() -> dict:
        principal = flask.request.environ[PRINCIPAL]
        return {"hello": principal["sub"], "request_id": flask.request.environ[REQUEST_ID]}

    # Outermost last: request IDs around security headers around authentication.
    app.wsgi_app = JWTAuthMiddleware(app.wsgi_app, keys={"k1": SECRET})  # type: ignore[method-assign]
    app.wsgi_app = SecurityHeadersMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = RequestIDMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_flask_app_wrapped_in_three_middlewares() -> None:
    client = TestApp(create_app())
    response = client.get("/hello", headers={**bearer(make_token()), "X-Request-ID": "r-1"})
    assert response.json == {"hello": "alice", "request_id": "r-1"}
    assert response.headers["X-Request-ID"] == "r-1"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    refused = client.get("/hello", status=401)
    assert refused.json["error"]["request_id"] == refused.headers["X-Request-ID"]
    assert refused.headers["X-Frame-Options"] == "DENY"
