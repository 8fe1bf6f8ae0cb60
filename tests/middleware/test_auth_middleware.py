"""JWTAuthMiddleware: every refusal the issue lists, the principal, key rings and options."""

from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from jwt.algorithms import RSAAlgorithm
from mwhelpers import (
    OTHER_SECRET,
    SECRET,
    Outer,
    RecordingApp,
    bearer,
    forge,
    make_token,
    public_pem,
)
from webtest import TestApp

from middleware.auth import JWTAuthMiddleware
from middleware.keys import ERROR_CODE, PRINCIPAL

ISSUER = "https://issuer.test"
AUDIENCE = "goodrepo"
INVALID = 'Bearer error="invalid_token"'


def now() -> int:
    return int(time.time())


@pytest.fixture
def strict(recording_app: RecordingApp, rsa_private_key: Any) -> TestApp:
    """HS256 and RS256 keys, issuer, audience and a revocation list: every check on."""
    middleware = JWTAuthMiddleware(
        recording_app,
        keys={"k1": SECRET, "rs": public_pem(rsa_private_key)},
        algorithms=["HS256", "RS256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        is_revoked=lambda claims: claims.get("jti") == "revoked-id",
    )
    return TestApp(middleware)


def good(**claims: Any) -> dict[str, Any]:
    base = {"sub": "alice", "iat": now(), "exp": now() + 300, "iss": ISSUER, "aud": AUDIENCE}
    base.update(claims)
    return base


def token_for(case: str, rsa_private_key: Any) -> str:
    """The Authorization header value for each refusal case."""
    t = now()
    pem = public_pem(rsa_private_key)
    cases = {
        "garbage": lambda: "Bearer not-a-jwt",
        "basic-scheme": lambda: "Basic YWxpY2U6c2VjcmV0",
        "bearer-without-token": lambda: "Bearer",
        "two-tokens": lambda: f"Bearer {make_token(good())} {make_token(good())}",
        "alg-none": lambda: "Bearer " + forge({"alg": "none", "kid": "k1"}, good(), None),
        "bad-signature": lambda: "Bearer " + make_token(good(), key=OTHER_SECRET),
        "disallowed-algorithm": lambda: "Bearer " + make_token(good(), algorithm="HS512"),
        "hs-rs-key-confusion": lambda: (
            "Bearer " + forge({"alg": "HS256", "kid": "rs", "typ": "JWT"}, good(), pem)
        ),
        "rs-token-on-hmac-kid": lambda: (
            "Bearer " + make_token(good(), key=rsa_private_key, algorithm="RS256", kid="k1")
        ),
        "unknown-kid": lambda: "Bearer " + make_token(good(), kid="nope"),
        "missing-kid": lambda: "Bearer " + make_token(good(), kid=None),
        "numeric-kid": lambda: "Bearer " + forge({"alg": "HS256", "kid": 1}, good(), b"x"),
        "expired": lambda: "Bearer " + make_token(good(iat=t - 400, exp=t - 60)),
        "not-yet-valid": lambda: "Bearer " + make_token(good(nbf=t + 120)),
        "issued-in-the-future": lambda: "Bearer " + make_token(good(iat=t + 120, exp=t + 400)),
        "wrong-issuer": lambda: "Bearer " + make_token(good(iss="https://evil.test")),
        "missing-issuer": lambda: "Bearer " + make_token(good(), drop=["iss"]),
        "wrong-audience": lambda: "Bearer " + make_token(good(aud="other")),
        "missing-audience": lambda: "Bearer " + make_token(good(), drop=["aud"]),
        "revoked": lambda: "Bearer " + make_token(good(jti="revoked-id")),
        "missing-exp": lambda: "Bearer " + make_token(good(), drop=["exp"]),
        "missing-iat": lambda: "Bearer " + make_token(good(), drop=["iat"]),
        "missing-sub": lambda: "Bearer " + make_token(good(), drop=["sub"]),
        "string-exp": lambda: "Bearer " + make_token(good(exp=str(t + 300))),
        "bool-iat": lambda: "Bearer " + make_token(good(iat=True)),
        "exp-before-iat": lambda: "Bearer " + make_token(good(iat=t + 20, exp=t + 10)),
        "lifetime-too-long": lambda: "Bearer " + make_token(good(exp=t + 400 * 86400)),
        "empty-sub": lambda: "Bearer " + make_token(good(sub="")),
        "numeric-sub": lambda: (
            "Bearer " + forge({"alg": "HS256", "kid": "k1"}, good(sub=42), SECRET.encode())
        ),
        "scopes-not-a-list": lambda: "Bearer " + make_token(good(scopes="read")),
        "scopes-not-strings": lambda: "Bearer " + make_token(good(scopes=["read", 1])),
        "scope-not-a-string": lambda: (
            "Bearer " + make_token(good(scope=["read"]), drop=["scopes"])
        ),
        "jti-not-a-string": lambda: "Bearer " + make_token(good(jti=7)),
        "nan-exp": lambda: (
            "Bearer "
            + forge({"alg": "HS256", "kid": "k1"}, good(exp=float("nan")), SECRET.encode())
        ),
        "payload-not-an-object": lambda: (
            "Bearer " + forge({"alg": "HS256", "kid": "k1"}, ["x"], SECRET.encode())
        ),
        "oversized": lambda: "Bearer " + make_token(good(pad="x" * 9000)),
    }
    return cases[case]()


REFUSALS = [
    pytest.param(name, message, id=name)
    for name, message in [
        ("garbage", "the token is invalid"),
        ("basic-scheme", "the token is invalid"),
        ("bearer-without-token", "the token is invalid"),
        ("two-tokens", "the token is invalid"),
        ("alg-none", "the token is invalid"),
        ("bad-signature", "the token is invalid"),
        ("disallowed-algorithm", "the token is invalid"),
        ("hs-rs-key-confusion", "the token is invalid"),
        ("rs-token-on-hmac-kid", "the token is invalid"),
        ("unknown-kid", "the token is invalid"),
        ("missing-kid", "the token is invalid"),
        ("numeric-kid", "the token is invalid"),
        ("expired", "the token has expired"),
        ("not-yet-valid", "the token is not valid yet"),
        ("issued-in-the-future", "the token is not valid yet"),
        ("wrong-issuer", "the token is invalid"),
        ("missing-issuer", "the token is invalid"),
        ("wrong-audience", "the token is invalid"),
        ("missing-audience", "the token is invalid"),
        ("revoked", "the token has been revoked"),
        ("missing-exp", "the token is invalid"),
        ("missing-iat", "the token is invalid"),
        ("missing-sub", "the token is invalid"),
        ("string-exp", "the token is invalid"),
        ("bool-iat", "the token is invalid"),
        ("exp-before-iat", "the token is invalid"),
        ("lifetime-too-long", "the token is invalid"),
        ("empty-sub", "the token is invalid"),
        ("numeric-sub", "the token is invalid"),
        ("scopes-not-a-list", "the token is invalid"),
        ("scopes-not-strings", "the token is invalid"),
        ("scope-not-a-string", "the token is invalid"),
        ("jti-not-a-string", "the token is invalid"),
        ("nan-exp", "the token is invalid"),
        ("payload-not-an-object", "the token is invalid"),
        ("oversized", "the token is invalid"),
    ]
]


@pytest.mark.parametrize(("case", "message"), REFUSALS)
def test_bad_tokens_are_refused_with_invalid_token(
    strict: TestApp, recording_app: RecordingApp, rsa_private_key: Any, case: str, message: str
) -> None:
    response = strict.get(
        "/v1/a/b/latest", headers={"Authorization": token_for(case, rsa_private_key)}, status=401
    )
    assert response.headers["WWW-Authenticate"] == INVALID
    assert response.json == {
        "error": {"code": "UNAUTHORIZED", "message": message, "request_id": None}
    }
    assert recording_app.calls == []


def test_a_good_token_on_the_strict_app_passes(strict: TestApp, recording_app: RecordingApp):
    strict.get("/v1/a/b/latest", headers=bearer(make_token(good(jti="t-1"))), status=200)
    assert recording_app.environ[PRINCIPAL]["token_id"] == "t-1"


def test_missing_token_gets_a_plain_realm_challenge(recording_app: RecordingApp) -> None:
    outer = Outer(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, realm="repo"))
    response = TestApp(outer).get("/v1/a/b/latest", status=401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="repo"'
    assert response.json["error"]["code"] == "UNAUTHORIZED"
    assert response.headers["Content-Type"] == "application/json"
    assert outer.environ[ERROR_CODE] == "UNAUTHORIZED"
    assert recording_app.calls == []


def test_valid_token_sets_the_principal(recording_app: RecordingApp) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}))
    token = make_token(scopes=["read", "write"], jti="tok-1", name="Alice")
    app.get("/v1/a/b/latest", headers=bearer(token))
    principal = recording_app.environ[PRINCIPAL]
    assert principal["sub"] == "alice"
    assert principal["scopes"] == ["read", "write"]
    assert principal["token_id"] == "tok-1"
    assert principal["anonymous"] is False
    assert principal["claims"]["name"] == "Alice"


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        pytest.param({"scopes": ["admin"]}, ["admin"], id="scopes-list"),
        pytest.param({"scopes": None, "scope": "read write"}, ["read", "write"], id="scope"),
        pytest.param({"scopes": None}, [], id="no-scopes"),
        pytest.param({"scopes": []}, [], id="empty-list"),
    ],
)
def test_scopes_claim_forms(recording_app: RecordingApp, claims: dict, scopes: list) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}))
    drop = [name for name, value in claims.items() if value is None]
    claims = {name: value for name, value in claims.items() if value is not None}
    app.get("/x", headers=bearer(make_token(claims, drop=drop)))
    assert recording_app.environ[PRINCIPAL]["scopes"] == scopes
    assert recording_app.environ[PRINCIPAL]["token_id"] is None


def test_leeway_accepts_a_token_expired_within_it(recording_app: RecordingApp) -> None:
    t = now()
    expired_a_little = make_token(iat=t - 300, exp=t - 10)
    TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET})).get(
        "/x", headers=bearer(expired_a_little), status=200
    )
    TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, leeway=0)).get(
        "/x", headers=bearer(expired_a_little), status=401
    )


def test_max_lifetime_is_configurable(recording_app: RecordingApp) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, max_lifetime=60))
    app.get("/x", headers=bearer(make_token(exp=now() + 60)), status=200)
    app.get("/x", headers=bearer(make_token(exp=now() + 61)), status=401)


def test_audience_list_and_tokens_with_aud_when_none_configured(recording_app: RecordingApp):
    multi = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, audience=["a", "b"]))
    multi.get("/x", headers=bearer(make_token(aud="b")), status=200)
    plain = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}))
    plain.get("/x", headers=bearer(make_token(aud="b")), status=401)


def _asymmetric_cases(rsa_key: Any, ec_key: Any, ed_key: Any) -> dict[str, tuple]:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    return {
        "rs256-pem": (["RS256"], public_pem(rsa_key), rsa_key, "RS256"),
        "ps256-key-object": (["PS256"], rsa_key.public_key(), rsa_key, "PS256"),
        "rs256-private-key-in-ring": (["RS256"], rsa_key, rsa_key, "RS256"),
        "es256-pem": (["ES256"], public_pem(ec_key), ec_key, "ES256"),
        "eddsa": (["EdDSA"], ed_key.public_key(), ed_key, "EdDSA"),
        "pyjwk": (["RS256"], jwt.PyJWK({**rsa_jwk, "alg": "RS256"}), rsa_key, "RS256"),
        "mixed-allow-list": (["HS256", "RS256", "ES256"], public_pem(ec_key), ec_key, "ES256"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "rs256-pem",
        "ps256-key-object",
        "rs256-private-key-in-ring",
        "es256-pem",
        "eddsa",
        "pyjwk",
        "mixed-allow-list",
    ],
)
def test_asymmetric_algorithms_with_public_keys(
    recording_app: RecordingApp,
    rsa_private_key: Any,
    ec_private_key: Any,
    ed_private_key: Any,
    case: str,
) -> None:
    cases = _asymmetric_cases(rsa_private_key, ec_private_key, ed_private_key)
    algorithms, ring_key, signing_key, algorithm = cases[case]
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"a": ring_key}, algorithms=algorithms))
    token = make_token(key=signing_key, algorithm=algorithm, kid="a")
    app.get("/x", headers=bearer(token), status=200)
    assert recording_app.environ[PRINCIPAL]["sub"] == "alice"


def test_callable_key_ring_takes_rotation_live(recording_app: RecordingApp) -> None:
    ring = {"k1": SECRET}
    app = TestApp(JWTAuthMiddleware(recording_app, keys=lambda: ring))
    old, new = make_token(kid="k1"), make_token(kid="k2", key=OTHER_SECRET)
    app.get("/x", headers=bearer(old), status=200)
    app.get("/x", headers=bearer(new), status=401)
    ring["k2"] = OTHER_SECRET
    app.get("/x", headers=bearer(new), status=200)
    app.get("/x", headers=bearer(old), status=200)
    del ring["k1"]
    app.get("/x", headers=bearer(old), status=401)
    ring["k2"] = SECRET  # same kid, new secret: the old signature no longer verifies
    app.get("/x", headers=bearer(new), status=401)


def test_callable_ring_with_an_unusable_key_refuses_and_logs(
    recording_app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys=lambda: {"k1": "short"}))
    with caplog.at_level(logging.ERROR, logger="middleware.auth"):
        app.get("/x", headers=bearer(make_token()), status=401)
    assert "unusable key" in caplog.text
    assert "short" not in caplog.text


def test_revocation_callback_gets_the_claims(recording_app: RecordingApp) -> None:
    seen: list[dict] = []

    def is_revoked(claims: dict) -> bool:
        seen.append(claims)
        return False

    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, is_revoked=is_revoked))
    app.get("/x", headers=bearer(make_token(jti="abc")))
    assert seen[0]["jti"] == "abc"


@pytest.mark.parametrize(
    ("path", "public"),
    [
        pytest.param("/auth/login", True, id="login"),
        pytest.param("/auth/refresh", True, id="refresh"),
        pytest.param("/health", True, id="health"),
        pytest.param("/health/ready", True, id="ready"),
        pytest.param("/health/live", True, id="live"),
        pytest.param("/auth/login/extra", False, id="below-login"),
        pytest.param("/auth/logout", False, id="logout"),
        pytest.param("/v1/a/b/latest", False, id="artifact"),
    ],
)
def test_default_public_paths(recording_app: RecordingApp, path: str, public: bool) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}))
    app.post(path, status=200 if public else 401)
    if public:
        assert PRINCIPAL not in recording_app.environ


def test_public_path_prefixes(recording_app: RecordingApp) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, public_paths=["/docs/*"]))
    app.get("/docs/index.html", status=200)
    app.get("/docs/", status=200)
    app.get("/docs", status=401)
    app.get("/auth/login", status=401)


@pytest.mark.parametrize(
    ("method", "headers", "status", "sub"),
    [
        pytest.param("GET", {}, 200, "anonymous", id="get-anonymous"),
        pytest.param("HEAD", {}, 200, "anonymous", id="head-anonymous"),
        pytest.param("POST", {}, 401, None, id="post-needs-token"),
        pytest.param("PUT", {}, 401, None, id="put-needs-token"),
        pytest.param("GET", {"Authorization": "Bearer bad"}, 401, None, id="bad-token-checked"),
        pytest.param("GET", "good", 200, "alice", id="good-token-used"),
    ],
)
def test_anonymous_read(
    recording_app: RecordingApp, method: str, headers: Any, status: int, sub: str | None
) -> None:
    if headers == "good":
        headers = bearer(make_token())
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, allow_anonymous_read=True))
    app.request("/v1/a/b/latest", method=method, headers=headers, status=status)
    if sub is None:
        assert recording_app.calls == []
        return
    principal = recording_app.environ[PRINCIPAL]
    assert principal["sub"] == sub
    if sub == "anonymous":
        assert principal == {
            "sub": "anonymous",
            "scopes": ["read"],
            "token_id": None,
            "claims": {},
            "anonymous": True,
        }


def test_anonymous_read_is_off_by_default(recording_app: RecordingApp) -> None:
    TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET})).get("/v1/x", status=401)


def test_the_token_never_reaches_the_logs(
    recording_app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}))
    token = make_token(key=OTHER_SECRET)
    with caplog.at_level(logging.DEBUG):
        app.get("/x", headers=bearer(token), status=401)
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


CONFIG_ERRORS = [
    pytest.param({"algorithms": ["none"]}, "algorithms", id="alg-none"),
    pytest.param({"algorithms": ["HS999"]}, "algorithms", id="unknown-alg"),
    pytest.param({"algorithms": []}, "algorithms", id="empty-allow-list"),
    pytest.param({"algorithms": "HS256"}, "algorithms", id="string-allow-list"),
    pytest.param({"keys": {}}, "keys", id="empty-ring"),
    pytest.param({"keys": ["k1"]}, "keys", id="ring-not-a-mapping"),
    pytest.param({"keys": {"k1": "short"}}, "keys", id="short-hmac-key"),
    pytest.param({"keys": {"": SECRET}}, "keys", id="empty-kid"),
    pytest.param({"keys": {"k1": 12345}}, "keys", id="key-of-no-type"),
    pytest.param({"leeway": -1}, "leeway", id="negative-leeway"),
    pytest.param({"max_lifetime": 0}, "max_lifetime", id="zero-lifetime"),
    pytest.param({"public_paths": ["auth/login"]}, "public_paths", id="relative-public-path"),
    pytest.param({"realm": 'a"b'}, "realm", id="quote-in-realm"),
    pytest.param({"issuer": ""}, "issuer", id="empty-issuer"),
    pytest.param({"audience": []}, "audience", id="empty-audience"),
    pytest.param({"is_revoked": "yes"}, "is_revoked", id="revocation-not-callable"),
    pytest.param({"cache_size": -1}, "cache_size", id="negative-cache"),
]


@pytest.mark.parametrize(("options", "named"), CONFIG_ERRORS)
def test_bad_configuration_is_refused_naming_the_option(options: dict, named: str) -> None:
    options = {"keys": {"k1": SECRET}, **options}
    with pytest.raises(ValueError, match=named):
        JWTAuthMiddleware(RecordingApp(), **options)


def test_an_rsa_key_with_an_hmac_only_allow_list_is_refused(rsa_private_key: Any) -> None:
    with pytest.raises(ValueError, match="keys\\['rs'\\]"):
        JWTAuthMiddleware(RecordingApp(), keys={"rs": public_pem(rsa_private_key)})


class CountingDecode:
    """Counts pyjwt signature checks made through the middleware."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", decode)


def test_a_token_seen_again_skips_the_signature_check(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = CountingDecode(monkeypatch)
    revocation_checks = []
    app = TestApp(
        JWTAuthMiddleware(
            recording_app,
            keys={"k1": SECRET},
            is_revoked=lambda claims: revocation_checks.append(claims["sub"]) or False,
        )
    )
    token = make_token()
    for _ in range(3):
        app.get("/x", headers=bearer(token))
    assert decode.calls == 1
    assert revocation_checks == ["alice"] * 3
    recording_app.environ[PRINCIPAL]["claims"]["sub"] = "mallory"  # must not reach the cache
    recording_app.environ[PRINCIPAL]["scopes"].append("admin")
    app.get("/x", headers=bearer(token))
    assert recording_app.environ[PRINCIPAL]["sub"] == "alice"
    assert recording_app.environ[PRINCIPAL]["scopes"] == ["read"]
    assert recording_app.environ[PRINCIPAL]["claims"]["sub"] == "alice"


class _TwoMinutesLater(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(minutes=2)


def test_a_remembered_token_still_expires_and_is_still_revocable(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked: set[str] = set()
    middleware = JWTAuthMiddleware(
        recording_app, keys={"k1": SECRET}, leeway=0, is_revoked=lambda c: c["jti"] in revoked
    )
    app = TestApp(middleware)
    short = make_token(jti="short", exp=now() + 60)
    app.get("/x", headers=bearer(short), status=200)
    with monkeypatch.context() as later:  # two minutes on, for the cache and for pyjwt
        real_time = time.time
        later.setattr(time, "time", lambda: real_time() + 120)
        later.setattr(jwt.api_jwt, "datetime", _TwoMinutesLater)
        response = app.get("/x", headers=bearer(short), status=401)
    assert response.json["error"]["message"] == "the token has expired"
    other = make_token(jti="other")
    app.get("/x", headers=bearer(other), status=200)
    revoked.add("other")
    app.get("/x", headers=bearer(other), status=401)


def test_the_cache_can_be_turned_off(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = CountingDecode(monkeypatch)
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, cache_size=0))
    token = make_token()
    app.get("/x", headers=bearer(token))
    app.get("/x", headers=bearer(token))
    assert decode.calls == 2


def test_the_cache_is_bounded(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = CountingDecode(monkeypatch)
    app = TestApp(JWTAuthMiddleware(recording_app, keys={"k1": SECRET}, cache_size=2))
    tokens = [make_token(jti=f"t{i}") for i in range(3)]
    for token in tokens + tokens[-2:]:
        app.get("/x", headers=bearer(token))
    assert decode.calls == 3  # the last two stayed
    app.get("/x", headers=bearer(tokens[0]))
    assert decode.calls == 4  # the first was pushed out


def test_a_key_is_kept_for_the_algorithms_it_is_long_enough_for(
    recording_app: RecordingApp,
) -> None:
    key = "k" * 32  # enough for HS256, too short for HS512
    app = TestApp(
        JWTAuthMiddleware(recording_app, keys={"k1": key}, algorithms=["HS256", "HS512"])
    )
    app.get("/x", headers=bearer(make_token(key=key)), status=200)
    with warnings.catch_warnings():  # pyjwt warns of the short key when it signs
        warnings.simplefilter("ignore")
        hs512 = make_token(key=key, algorithm="HS512")
    app.get("/x", headers=bearer(hs512), status=401)
    with pytest.raises(ValueError, match="keys"):
        JWTAuthMiddleware(recording_app, keys={"k1": "k" * 31}, algorithms=["HS256", "HS512"])
