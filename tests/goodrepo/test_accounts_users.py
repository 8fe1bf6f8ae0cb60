"""Users in a real KV: normalised names, scopes, hashes kept private, authentication."""

from __future__ import annotations

import threading

import argon2
import pytest

from goodrepo.accounts import PasswordPolicy, Users
from goodrepo.errors import (
    InvalidCredentials,
    InvalidRequest,
    NotFound,
    PasswordPolicyError,
    UserExists,
    ValidationError,
)

PW = "violet staple horizon"
PW2 = "amber lantern orchard"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class CountingHasher(argon2.PasswordHasher):
    """A cheap argon2id hasher that counts verifications."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8192, parallelism=1)
        self.verified = 0

    def verify(self, hash, password):
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def hasher():
    return CountingHasher()


@pytest.fixture
def users(kv, hasher):
    return Users(kv, PasswordPolicy(), hasher=hasher, clock=lambda: T0)


def test_create_returns_the_public_view(users, kv):
    user = users.create("  Alice ", PW, ["write", "read", "read"])
    assert user == {
        "username": "alice",
        "scopes": ["read", "write"],
        "disabled": False,
        "created_at": "2026-01-01T00:00:00Z",
    }
    stored = kv.get_json(b"a:user:alice")
    assert stored["password_hash"].startswith("$argon2id$")
    assert PW not in kv.get(b"a:user:alice").decode()


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("a", id="one-char"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("0.b_c-d", id="punctuation"),
        pytest.param(" Bob ", id="trimmed-and-lowered"),
    ],
)
def test_valid_usernames(users, username):
    assert users.create(username, PW, ["read"])["username"] == username.strip().lower()


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("-bob", id="leading-dash"),
        pytest.param(".bob", id="leading-dot"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("bo/b", id="slash"),
        pytest.param("bo:b", id="colon"),
        pytest.param("bo b", id="inner-space"),
        pytest.param("bob\n", id="newline-not-trimmed"),
        pytest.param("\tbob", id="tab-not-trimmed"),
        pytest.param("bo\x00b", id="nul"),
        pytest.param("b\u00f6b", id="non-ascii"),
        pytest.param(None, id="not-a-string"),
    ],
)
def test_invalid_usernames(users, username):
    with pytest.raises(ValidationError) as caught:
        users.create(username, PW, ["read"])
    assert caught.value.details == {"field": "username"}


@pytest.mark.parametrize(
    "scopes",
    [
        pytest.param(["root"], id="unknown"),
        pytest.param(["read", "bogus"], id="one-unknown"),
        pytest.param("read", id="a-string"),
        pytest.param([1], id="not-strings"),
        pytest.param(None, id="none"),
    ],
)
def test_invalid_scopes(users, kv, scopes):
    with pytest.raises(ValidationError) as caught:
        users.create("bob", PW, scopes)
    assert caught.value.details == {"field": "scopes"}
    assert kv.get(b"a:user:bob") is None


def test_every_valid_scope(users):
    assert users.create("bob", PW, ["replicate", "admin", "write", "read"])["scopes"] == [
        "admin",
        "read",
        "replicate",
        "write",
    ]


def test_policy_is_applied_on_create(users, kv):
    with pytest.raises(PasswordPolicyError) as caught:
        users.create("bob", "bob-password", ["read"])
    assert "contains the username" in caught.value.reasons
    assert kv.get(b"a:user:bob") is None


def test_duplicate_is_user_exists_whatever_the_case(users):
    users.create("bob", PW, ["read"])
    with pytest.raises(UserExists) as caught:
        users.create("BOB", PW2, ["admin"])
    assert caught.value.status == 409
    assert caught.value.code == "USER_EXISTS"
    assert users.get("bob")["scopes"] == ["read"]


def test_concurrent_creates_have_one_winner(users):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        try:
            users.create("racer", PW, ["read"] if i % 2 else ["write"])
            results.append("created")
        except UserExists:
            results.append("exists")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["created"] + ["exists"] * 7


def test_get_and_not_found(users):
    users.create("bob", PW, ["read"])
    assert users.get(" BOB")["username"] == "bob"
    with pytest.raises(NotFound):
        users.get("carol")


def test_list_paginates_with_an_opaque_cursor(users):
    names = [f"user{i}" for i in range(5)]
    for name in reversed(names):
        users.create(name, PW, ["read"])
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = users.list(limit=2, cursor=cursor)
        pages += 1
        seen += [u["username"] for u in page]
        assert all("password_hash" not in u for u in page)
        if cursor is None:
            break
        assert "user" not in cursor  # opaque, not the bare name
    assert seen == names
    assert pages == 3
    assert users.list()[1] is None


def test_list_of_an_empty_store(users):
    assert users.list() == ([], None)


@pytest.mark.parametrize(
    ("limit", "cursor"),
    [
        pytest.param(0, None, id="limit-zero"),
        pytest.param(1001, None, id="limit-over-max"),
        pytest.param("10", None, id="limit-not-int"),
        pytest.param(True, None, id="limit-bool"),
        pytest.param(10, "!!!", id="cursor-not-base64"),
        pytest.param(10, "", id="cursor-empty"),
        pytest.param(10, "Ym9iOng", id="cursor-with-colon"),
        pytest.param(10, "d.T.E", id="cursor-outside-the-alphabet"),
        pytest.param(10, "\xff\xfe", id="cursor-not-ascii"),
        pytest.param(10, "Ym9i=", id="cursor-padded"),
    ],
)
def test_list_rejects_bad_limit_or_cursor(users, limit, cursor):
    with pytest.raises(InvalidRequest):
        users.list(limit=limit, cursor=cursor)


def test_set_scopes_and_disabled(users):
    users.create("bob", PW, ["read"])
    assert users.set_scopes("bob", ["write"])["scopes"] == ["write"]
    assert users.set_disabled("bob", True)["disabled"] is True
    assert users.get("bob") == {
        "username": "bob",
        "scopes": ["write"],
        "disabled": True,
        "created_at": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError):
        users.set_scopes("bob", ["superuser"])
    with pytest.raises(NotFound):
        users.set_scopes("carol", ["read"])
    with pytest.raises(NotFound):
        users.set_disabled("carol", True)


def test_set_password(users):
    users.create("bob", PW, ["read"])
    with pytest.raises(PasswordPolicyError):
        users.set_password("bob", "short")
    users.authenticate("bob", PW)
    assert "password_hash" not in users.set_password("bob", PW2)
    users.authenticate("bob", PW2)
    with pytest.raises(InvalidCredentials):
        users.authenticate("bob", PW)
    with pytest.raises(NotFound):
        users.set_password("carol", PW2)


def test_delete(users):
    users.create("bob", PW, ["read"])
    users.delete("BOB")
    with pytest.raises(NotFound):
        users.get("bob")
    with pytest.raises(NotFound):
        users.delete("bob")
    users.create("bob", PW2, ["write"])  # the name is free again


def test_authenticate_success_is_case_insensitive_on_the_name(users):
    users.create("bob", PW, ["read"])
    assert users.authenticate(" Bob", PW) == {**users.get("bob"), "session_floor": T0}


@pytest.mark.parametrize(
    ("username", "password", "disable"),
    [
        pytest.param("bob", PW2, False, id="wrong-password"),
        pytest.param("carol", PW, False, id="unknown-user"),
        pytest.param("bob", PW, True, id="disabled-user"),
        pytest.param("bob\n", PW, False, id="invalid-username"),
        pytest.param("", "", False, id="empty"),
    ],
)
def test_authenticate_failures_look_alike(users, hasher, username, password, disable):
    users.create("bob", PW, ["read"])
    if disable:
        users.set_disabled("bob", True)
    before = hasher.verified
    with pytest.raises(InvalidCredentials) as caught:
        users.authenticate(username, password)
    err = caught.value
    assert (err.status, err.code, err.message) == (
        401,
        "INVALID_CREDENTIALS",
        "invalid username or password",
    )
    assert err.headers == {"WWW-Authenticate": "Bearer"}
    assert hasher.verified == before + 1  # the same argon2 work on every path


def test_get_active_refuses_disabled_and_deleted_users(users):
    users.create("bob", PW, ["read"])
    assert users.get_active("bob")["username"] == "bob"
    users.set_disabled("bob", True)
    with pytest.raises(InvalidCredentials):
        users.get_active("bob")
    users.delete("bob")
    with pytest.raises(InvalidCredentials):
        users.get_active("bob")


def test_login_upgrades_an_outdated_hash(kv):
    old = Users(kv, hasher=CountingHasher(time_cost=1))
    old.create("bob", PW, ["read"])
    first = kv.get_json(b"a:user:bob")["password_hash"]
    assert ",t=1," in first
    new = Users(kv, hasher=CountingHasher(time_cost=2))
    new.authenticate("bob", PW)
    upgraded = kv.get_json(b"a:user:bob")["password_hash"]
    assert ",t=2," in upgraded
    new.authenticate("bob", PW)
    assert kv.get_json(b"a:user:bob")["password_hash"] == upgraded  # no second rehash


def test_failed_login_never_rehashes(kv):
    Users(kv, hasher=CountingHasher(time_cost=1)).create("bob", PW, ["read"])
    first = kv.get_json(b"a:user:bob")["password_hash"]
    with pytest.raises(InvalidCredentials):
        Users(kv, hasher=CountingHasher(time_cost=2)).authenticate("bob", PW2)
    assert kv.get_json(b"a:user:bob")["password_hash"] == first


def test_default_policy_min_length(kv):
    users = Users(kv, PasswordPolicy(min_length=16), hasher=CountingHasher())
    with pytest.raises(PasswordPolicyError):
        users.create("bob", "fifteen chars!!", ["read"])
