"""Access, refresh and API tokens against a real KV, checked with pyjwt."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import argon2
import jwt
import pytest

from goodrepo.accounts import KeyRing, TokenService, Users
from goodrepo.errors import Forbidden, InvalidCredentials, NotFound, Unauthorized, ValidationError

PW = "violet staple horizon"
DAY = 86400


class Clock:
    """A settable clock, in whole seconds like a JWT."""

    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ring(kv, clock):
    return KeyRing(kv, clock=clock)


@pytest.fixture
def tokens(kv, ring, clock):
    return TokenService(kv, ring, clock=clock)


@pytest.fixture
def users(kv, clock):
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    users = Users(kv, hasher=cheap, clock=clock)
    users.create("alice", PW, ["read", "write"])
    users.create("root", PW, ["admin"])
    return users


def decode(token, ring, **kwargs):
    kid = jwt.get_unverified_header(token)["kid"]
    options: Any = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    return jwt.decode(
        token, ring.verification_keys()[kid], algorithms=["HS256"], options=options, **kwargs
    )


# -- access tokens --------------------------------------------------------------------


def test_access_token_claims_and_header(tokens, ring, clock):
    token, expires_in = tokens.issue_access("alice", ["write", "read"])
    assert expires_in == 900
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == ring.current().kid
    claims = decode(token, ring)
    now = int(clock.now)
    assert claims == {
        "sub": "alice",
        "scopes": ["read", "write"],
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": claims["jti"],
        "typ": "access",
    }
    assert len(claims["jti"]) >= 32
    assert tokens.verify(token) == claims


def test_issuer_and_audience_when_configured(kv, ring, clock):
    service = TokenService(kv, ring, issuer="https://repo.test", audience="goodrepo", clock=clock)
    token, _ = service.issue_access("alice", ["read"])
    claims = decode(token, ring, audience="goodrepo", issuer="https://repo.test")
    assert (claims["iss"], claims["aud"]) == ("https://repo.test", "goodrepo")
    assert service.verify(token)["sub"] == "alice"


def test_explicit_jti_and_shorter_ttl(tokens, ring, clock):
    token, expires_in = tokens.issue_access("alice", ["read"], token_id="abc", ttl=60)
    assert expires_in == 60
    claims = decode(token, ring)
    assert claims["jti"] == "abc"
    assert claims["exp"] == int(clock.now) + 60
    with pytest.raises(ValueError):
        tokens.issue_access("alice", ["read"], ttl=901)
    with pytest.raises(ValueError):
        tokens.issue_access("alice", ["read"], ttl=0)


def test_expiry_with_leeway(tokens, clock):
    token, _ = tokens.issue_access("alice", ["read"])
    clock.now += 900 + 29
    assert tokens.verify(token)["sub"] == "alice"
    clock.now += 1
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)


def test_token_from_the_future_is_refused(tokens, clock):
    token, _ = tokens.issue_access("alice", ["read"])
    clock.now -= 31
    with pytest.raises(Unauthorized, match="not valid yet"):
        tokens.verify(token)


def forge(ring, claims=None, *, alg="HS256", kid=None, key=None, drop=()):
    body = {
        "sub": "alice",
        "scopes": ["admin"],
        "iat": 1_767_225_600,
        "exp": 1_767_225_600 + 900,
        "jti": "x" * 32,
        "typ": "access",
    }
    body.update(claims or {})
    for name in drop:
        del body[name]
    current = ring.current()
    headers = {"kid": current.kid if kid is None else kid}
    return jwt.encode(body, current.secret if key is None else key, algorithm=alg, headers=headers)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ring: "not-a-jwt", id="garbage"),
        pytest.param(lambda ring: forge(ring, key=b"k" * 32), id="wrong-key"),
        pytest.param(lambda ring: forge(ring, kid="nope"), id="unknown-kid"),
        pytest.param(
            lambda ring: forge(ring, alg="HS512", key=b"k" * 64), id="algorithm-not-allowed"
        ),
        pytest.param(
            lambda ring: jwt.encode(
                {"sub": "alice"}, "", algorithm="none", headers={"kid": ring.current().kid}
            ),
            id="alg-none",
        ),
        pytest.param(lambda ring: forge(ring, drop=["exp"]), id="no-exp"),
        pytest.param(lambda ring: forge(ring, drop=["iat"]), id="no-iat"),
        pytest.param(lambda ring: forge(ring, drop=["sub"]), id="no-sub"),
        pytest.param(lambda ring: forge(ring, drop=["jti"]), id="no-jti"),
        pytest.param(lambda ring: forge(ring, {"typ": "refresh"}), id="wrong-typ"),
        pytest.param(lambda ring: forge(ring, {"scopes": "admin"}), id="scopes-not-a-list"),
        pytest.param(lambda ring: forge(ring, {"exp": "later"}), id="exp-not-a-number"),
        pytest.param(lambda ring: forge(ring, {"aud": "elsewhere"}), id="unexpected-audience"),
    ],
)
def test_invalid_tokens_are_unauthorized(tokens, ring, make):
    with pytest.raises(Unauthorized) as caught:
        tokens.verify(make(ring))
    assert caught.value.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("claims", "drop"),
    [
        pytest.param({"iss": "https://evil.test"}, (), id="wrong-issuer"),
        pytest.param({}, ("iss",), id="missing-issuer"),
        pytest.param({"aud": "other"}, (), id="wrong-audience"),
        pytest.param({}, ("aud",), id="missing-audience"),
    ],
)
def test_issuer_and_audience_are_enforced(kv, ring, clock, claims, drop):
    service = TokenService(kv, ring, issuer="https://repo.test", audience="goodrepo", clock=clock)
    good = {"iss": "https://repo.test", "aud": "goodrepo"}
    service.verify(forge(ring, good))
    with pytest.raises(Unauthorized):
        service.verify(forge(ring, {**good, **claims}, drop=drop))


def test_rotation_keeps_old_tokens_verifiable(tokens, ring, clock):
    old, _ = tokens.issue_access("alice", ["read"])
    old_kid = ring.current().kid
    ring.rotate()
    new, _ = tokens.issue_access("alice", ["read"])
    assert jwt.get_unverified_header(new)["kid"] != old_kid
    assert tokens.verify(old)["sub"] == tokens.verify(new)["sub"] == "alice"
    clock.now += ring.token_lifetime
    assert old_kid not in ring.verification_keys()
    assert ring.prune() == [old_kid]


def test_revoking_a_leaked_key_kills_its_tokens(tokens, ring):
    old, _ = tokens.issue_access("alice", ["read"])
    ring.rotate(revoke_previous=True)
    with pytest.raises(Unauthorized, match="unknown or retired key"):
        tokens.verify(old)


def test_key_ring_outlives_the_longest_access_token(kv, clock):
    ring = KeyRing(kv, token_lifetime=100, clock=clock)
    TokenService(kv, ring, access_ttl=3600, leeway=60, clock=clock)
    assert ring.token_lifetime == 3660


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"access_ttl": 59}, id="access-ttl"),
        pytest.param({"refresh_ttl": 0}, id="refresh-ttl"),
        pytest.param({"api_token_max_ttl": 10}, id="api-ttl"),
        pytest.param({"leeway": -1}, id="negative-leeway"),
        pytest.param({"leeway": 900}, id="leeway-not-below-ttl"),
    ],
)
def test_bad_service_configuration(kv, ring, kwargs):
    with pytest.raises(ValueError):
        TokenService(kv, ring, **kwargs)


def test_access_tokens_cost_no_revocation_lookup(tokens, kv, monkeypatch):
    token, _ = tokens.issue_access("alice", ["read"])
    claims = tokens.verify(token)
    monkeypatch.setattr(kv, "get_json", lambda key: pytest.fail("looked up the KV"))
    assert tokens.is_revoked(claims) is False


# -- refresh tokens -------------------------------------------------------------------


def test_refresh_tokens_are_opaque_and_stored_hashed(tokens, kv, users):
    token = tokens.issue_refresh("alice")
    assert len(token) >= 43 and token.count(".") == 0
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert kv.get_json(b"a:refresh:" + digest.encode())["username"] == "alice"
    for key, value in kv.scan(b"a:"):
        assert token.encode() not in key + value


def test_rotation_spends_the_old_token(tokens, users):
    first = tokens.issue_refresh("alice")
    username, second = tokens.rotate_refresh(first)
    assert username == "alice"
    assert second != first
    username, third = tokens.rotate_refresh(second)
    assert username == "alice"
    assert third not in (first, second)


def test_replay_revokes_the_whole_family(tokens, users):
    first = tokens.issue_refresh("alice")
    other = tokens.issue_refresh("alice")  # another session: another family
    _, second = tokens.rotate_refresh(first)
    with pytest.raises(Unauthorized, match="already used"):
        tokens.rotate_refresh(first)
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(second)  # the thief's or the owner's: both are out
    assert tokens.rotate_refresh(other)[0] == "alice"


def test_concurrent_use_of_one_token_counts_as_a_replay(tokens, users):
    token = tokens.issue_refresh("alice")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def use() -> None:
        barrier.wait()
        try:
            outcomes.append(tokens.rotate_refresh(token)[1])
        except Unauthorized:
            outcomes.append("refused")

    threads = [threading.Thread(target=use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("refused") == 1
    winner = next(o for o in outcomes if o != "refused")
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(winner)


def test_refresh_tokens_expire_and_rotation_slides_the_expiry(tokens, clock, users):
    token = tokens.issue_refresh("alice")
    clock.now += 29 * DAY
    _, token = tokens.rotate_refresh(token)
    clock.now += 29 * DAY
    _, token = tokens.rotate_refresh(token)
    clock.now += 30 * DAY
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(token)


def test_unknown_refresh_token(tokens):
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh("made-up")
    with pytest.raises(Unauthorized):
        tokens.revoke_refresh("made-up")


def test_logout_revokes_the_token(tokens, users):
    token = tokens.issue_refresh("alice")
    tokens.revoke_refresh(token)
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(token)
    with pytest.raises(Unauthorized):
        tokens.revoke_refresh(token)


def test_logout_with_a_spent_token_ends_the_session_and_is_refused(tokens, users):
    first = tokens.issue_refresh("alice")
    other = tokens.issue_refresh("alice")  # another session: another family
    _, second = tokens.rotate_refresh(first)
    # A replay, as on refresh: the whole session is revoked, and the answer says so.
    with pytest.raises(Unauthorized, match="already used"):
        tokens.revoke_refresh(first)
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(second)
    with pytest.raises(Unauthorized):
        tokens.revoke_refresh(second)
    assert tokens.rotate_refresh(other)[0] == "alice"


def test_revoke_every_session_of_a_user(tokens, users):
    a1, a2 = tokens.issue_refresh("alice"), tokens.issue_refresh("alice")
    _, a2 = tokens.rotate_refresh(a2)
    users.create("alice.b", PW, ["read"])
    b = tokens.issue_refresh("alice.b")  # a name that extends "alice"
    assert tokens.revoke_user_refresh("alice") == 2
    for token in (a1, a2):
        with pytest.raises(Unauthorized):
            tokens.rotate_refresh(token)
    assert tokens.rotate_refresh(b)[0] == "alice.b"
    assert tokens.revoke_user_refresh("alice") == 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda users: users.set_password("alice", "a brand new passphrase"), id="pw"),
        pytest.param(lambda users: users.set_disabled("alice", True), id="disabled"),
        pytest.param(
            lambda users: (users.set_disabled("alice", True), users.set_disabled("alice", False)),
            id="disabled-then-enabled",
        ),
        pytest.param(lambda users: users.delete("alice"), id="deleted"),
        pytest.param(
            lambda users: (users.delete("alice"), users.create("alice", PW, ["admin"])),
            id="deleted-then-recreated",
        ),
    ],
)
def test_a_login_that_raced_a_change_of_the_user_gets_no_session(tokens, users, clock, change):
    # The password was checked (the floor read with it), then the user changed, then the
    # login went on to start its session.
    floor = users.authenticate("alice", PW)["session_floor"]
    clock.now += 1
    change(users)
    with pytest.raises(InvalidCredentials):
        tokens.issue_refresh("alice", session_floor=floor)


def test_a_session_started_before_a_change_of_the_user_cannot_refresh(tokens, users, clock):
    # Even where nobody revoked the family (as a racing login's would be missed).
    token = tokens.issue_refresh(
        "alice", session_floor=users.authenticate("alice", PW)["session_floor"]
    )
    clock.now += 1
    users.set_disabled("alice", True)
    users.set_disabled("alice", False)
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.rotate_refresh(token)
    fresh = tokens.issue_refresh("alice")
    assert tokens.rotate_refresh(fresh)[0] == "alice"
    users.delete("alice")
    users.create("alice", PW, ["admin"])  # another person under the same name
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.rotate_refresh(fresh)


def test_a_backdated_access_token(tokens, users, clock):
    token, _ = tokens.issue_access("alice", ["read"], issued_at=clock.now - 0.25)
    assert tokens.verify(token)["iat"] == clock.now - 0.25


# -- API tokens -----------------------------------------------------------------------


def test_create_api_token(tokens, users, ring, kv, clock):
    made = tokens.create_api_token("alice", " nightly build ", ["read"], 10 * DAY)
    assert set(made) == {"id", "token", "name", "scopes", "expires_at"}
    assert made["name"] == "nightly build"
    assert made["scopes"] == ["read"]
    assert made["expires_at"] == "2026-01-11T00:00:00Z"
    claims = decode(made["token"], ring)
    assert claims["typ"] == "api"
    assert claims["jti"] == made["id"]
    assert claims["exp"] == int(clock.now) + 10 * DAY
    assert tokens.verify(made["token"])["sub"] == "alice"
    stored = kv.get(b"a:token:" + made["id"].encode())
    assert made["token"].encode() not in stored


def test_list_api_tokens_without_the_tokens(tokens, users, clock):
    ids = []
    for i in range(3):
        clock.now += 1
        ids.append(tokens.create_api_token("alice", f"t{i}", ["read"], DAY)["id"])
    clock.now += 1  # ids sort by creation second
    tokens.create_api_token("root", "mine", ["admin"], 2 * DAY)
    rows, cursor = tokens.list_api_tokens(limit=2)
    assert [r["id"] for r in rows] == ids[:2]
    assert all("token" not in r for r in rows)
    assert set(rows[0]) == {"id", "name", "owner", "scopes", "created_at", "expires_at"}
    rows, cursor = tokens.list_api_tokens(limit=2, cursor=cursor)
    assert [r["name"] for r in rows] == ["t2", "mine"] and cursor is None
    assert [r["name"] for r in tokens.list_api_tokens(owner="root")[0]] == ["mine"]
    clock.now += DAY
    assert [r["name"] for r in tokens.list_api_tokens()[0]] == ["mine"]  # expired ones hidden


def test_api_tokens_made_in_one_instant_list_in_the_order_they_were_made(tokens, users):
    names = [f"t{i}" for i in range(20)]  # the clock stands still
    for name in names:
        tokens.create_api_token("alice", name, ["read"], DAY)
    assert [r["name"] for r in tokens.list_api_tokens()[0]] == names


def test_revocation_is_immediate(tokens, users):
    made = tokens.create_api_token("alice", "ci", ["read"], DAY)
    claims = tokens.verify(made["token"])
    tokens.revoke_api_token(made["id"])
    assert tokens.is_revoked(claims)
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.verify(made["token"])
    with pytest.raises(NotFound):
        tokens.revoke_api_token(made["id"])


@pytest.mark.parametrize(
    "token_id",
    [pytest.param("nope", id="malformed"), pytest.param("0" * 26, id="unknown")],
)
def test_revoke_unknown_api_token(tokens, token_id):
    with pytest.raises(NotFound):
        tokens.revoke_api_token(token_id)


def test_revoke_checks_the_owner_when_given(tokens, users):
    made = tokens.create_api_token("alice", "ci", ["read"], DAY)
    with pytest.raises(NotFound):
        tokens.revoke_api_token(made["id"], owner="root")
    tokens.revoke_api_token(made["id"], owner="alice")


@pytest.mark.parametrize(
    ("owner", "scopes", "owner_scopes", "allowed"),
    [
        pytest.param("alice", ["read", "write"], None, True, id="own-scopes"),
        pytest.param("alice", ["admin"], None, False, id="more-than-own"),
        pytest.param("alice", ["replicate"], None, False, id="other-scope"),
        pytest.param("root", ["read", "write", "replicate", "admin"], None, True, id="admin-all"),
        pytest.param("alice", ["write"], ["read"], False, id="caller-token-narrower"),
        pytest.param("alice", ["read"], ["read"], True, id="caller-token-enough"),
    ],
)
def test_api_token_scopes_are_a_subset_of_the_creators(
    tokens, users, owner, scopes, owner_scopes, allowed
):
    if allowed:
        made = tokens.create_api_token(owner, "ci", scopes, DAY, owner_scopes=owner_scopes)
        assert made["scopes"] == sorted(scopes)
    else:
        with pytest.raises(Forbidden) as caught:
            tokens.create_api_token(owner, "ci", scopes, DAY, owner_scopes=owner_scopes)
        assert (caught.value.details or {})["missing_scopes"]


@pytest.mark.parametrize(
    ("name", "scopes", "expires_in", "field"),
    [
        pytest.param("", ["read"], DAY, "name", id="empty-name"),
        pytest.param("x" * 101, ["read"], DAY, "name", id="long-name"),
        pytest.param("a\nb", ["read"], DAY, "name", id="control-char-name"),
        pytest.param("ci", [], DAY, "scopes", id="no-scopes"),
        pytest.param("ci", ["sudo"], DAY, "scopes", id="unknown-scope"),
        pytest.param("ci", ["read"], 59, "expires_in", id="too-short"),
        pytest.param("ci", ["read"], 365 * DAY + 1, "expires_in", id="too-long"),
        pytest.param("ci", ["read"], "3600", "expires_in", id="not-int"),
        pytest.param("ci", ["read"], True, "expires_in", id="bool"),
    ],
)
def test_api_token_validation(tokens, users, name, scopes, expires_in, field):
    with pytest.raises(ValidationError) as caught:
        tokens.create_api_token("alice", name, scopes, expires_in)
    assert caught.value.details == {"field": field}


def test_api_token_for_unknown_owner(tokens, users):
    with pytest.raises(NotFound):
        tokens.create_api_token("carol", "ci", ["read"], DAY)


def test_api_token_follows_its_owner(tokens, users):
    made = tokens.create_api_token("alice", "ci", ["write"], DAY)
    tokens.verify(made["token"])
    users.set_scopes("alice", ["read"])
    with pytest.raises(Unauthorized):
        tokens.verify(made["token"])
    users.set_scopes("alice", ["read", "write"])
    tokens.verify(made["token"])
    users.set_disabled("alice", True)
    with pytest.raises(Unauthorized):
        tokens.verify(made["token"])
    users.set_disabled("alice", False)
    users.delete("alice")
    with pytest.raises(Unauthorized):
        tokens.verify(made["token"])


def test_api_token_keeps_its_key_alive_after_rotation(tokens, users, ring, clock):
    made = tokens.create_api_token("alice", "ci", ["read"], 30 * DAY)
    kid = ring.current().kid
    ring.rotate()
    clock.now += 29 * DAY
    assert ring.prune() == []
    assert tokens.verify(made["token"])["jti"] == made["id"]
    clock.now += DAY + 31
    with pytest.raises(Unauthorized):
        tokens.verify(made["token"])
    assert ring.prune() == [kid]


def test_purge_expired(tokens, users, kv, clock):
    spent = tokens.issue_refresh("alice")
    _, live = tokens.rotate_refresh(spent)
    tokens.create_api_token("alice", "ci", ["read"], DAY)
    assert tokens.purge_expired() == 0
    clock.now += 30 * DAY + 1
    fresh = tokens.issue_refresh("alice")
    assert tokens.purge_expired() == 4  # two refresh records, one family, one API token
    assert tokens.rotate_refresh(fresh)[0] == "alice"
    with pytest.raises(Unauthorized):
        tokens.rotate_refresh(live)
