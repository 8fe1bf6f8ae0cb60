"""The password policy (NIST SP 800-63B), the shipped common list and argon2id hashing."""

from __future__ import annotations

import argon2
import pytest

from goodrepo.accounts import Hasher, PasswordPolicy, common_passwords
from goodrepo.errors import PasswordPolicyError

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
GOOD = "violet staple horizon"


def test_shipped_list_is_large_lower_cased_and_loaded_once():
    common = common_passwords()
    assert isinstance(common, frozenset)
    assert len(common) >= 10_000
    assert all(p == p.lower() for p in common)
    assert {"123456", "password", "qwerty123456", "1qaz2wsx3edc"} <= common
    assert common_passwords() is common


def test_shipped_list_header_is_not_an_entry_but_later_hash_lines_are():
    common = common_passwords()
    assert not any(p.startswith("# ") for p in common)
    assert "#1bitch" in common  # a real entry that starts with "#"


@pytest.mark.parametrize(
    ("password", "username", "reasons"),
    [
        pytest.param(GOOD, "alice", [], id="acceptable"),
        pytest.param("x" * 12, None, [], id="exactly-min-length"),
        pytest.param("abcdefghijk", None, ["shorter than 12 characters"], id="too-short"),
        pytest.param("a" * 257, None, ["longer than 256 characters"], id="too-long"),
        pytest.param("a" * 256, None, [], id="exactly-max-length"),
        pytest.param(
            "qwerty123456", None, ["one of the most commonly used passwords"], id="common"
        ),
        pytest.param(
            "QWERTY123456",
            None,
            ["one of the most commonly used passwords"],
            id="common-any-case",
        ),
        pytest.param(
            "my name is Alice ok", "alice", ["contains the username"], id="contains-username"
        ),
        pytest.param(
            "my name is alice ok", "ALICE ", ["contains the username"], id="username-any-case"
        ),
        pytest.param(GOOD + "al", "al", [], id="short-username-not-checked"),
        pytest.param(
            "bob",
            "bob",
            [
                "shorter than 12 characters",
                "one of the most commonly used passwords",
                "contains the username",
            ],
            id="every-reason-listed",
        ),
        pytest.param(
            "\uff51\uff57\uff45\uff52\uff54\uff59123456",  # full-width "qwerty" + digits
            None,
            ["one of the most commonly used passwords"],
            id="nfkc-normalised",
        ),
        pytest.param("Aa1!" * 2 + "ab", None, ["shorter than 12 characters"], id="no-rules"),
    ],
)
def test_policy_check(password, username, reasons):
    assert PasswordPolicy().check(password, username) == reasons


def test_no_composition_rules():
    assert PasswordPolicy().check("all lower case words here") == []


def test_custom_min_length_and_list():
    policy = PasswordPolicy(min_length=8, max_length=10, common=["Hunter22"])
    assert policy.check("hunter22") == ["one of the most commonly used passwords"]
    assert policy.check("12345678") == []  # not in the custom list
    assert policy.check("12345678901") == ["longer than 10 characters"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"min_length": 7}, "at least 8", id="min-below-8"),
        pytest.param({"min_length": 20, "max_length": 19}, "below min_length", id="max-below-min"),
    ],
)
def test_policy_rejects_weak_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PasswordPolicy(**kwargs)


def test_enforce_raises_with_every_reason():
    with pytest.raises(PasswordPolicyError) as caught:
        PasswordPolicy().enforce("alice", "alice")
    err = caught.value
    assert err.status == 400
    assert err.code == "PASSWORD_POLICY"
    assert err.details == {"reasons": err.reasons}
    assert len(err.reasons) == 3
    PasswordPolicy().enforce(GOOD, "alice")  # no error


def test_hasher_round_trip_and_salt():
    hasher = Hasher(CHEAP)
    stored = hasher.hash(GOOD)
    assert stored.startswith("$argon2id$")
    assert GOOD not in stored
    assert hasher.hash(GOOD) != stored
    assert hasher.verify(stored, GOOD)
    assert not hasher.verify(stored, GOOD + "!")


def test_hasher_normalises_unicode():
    hasher = Hasher(CHEAP)
    stored = hasher.hash("caf\u00e9 au lait please")
    assert hasher.verify(stored, "cafe\u0301 au lait please")


def test_text_that_is_not_unicode_is_refused_and_never_matches():
    lone = "a long passphrase \ud800 here"
    assert PasswordPolicy().check(lone) == [
        "not valid Unicode text (a lone surrogate or undecodable bytes)"
    ]
    hasher = Hasher(CHEAP)
    assert not hasher.verify(hasher.hash(GOOD), lone)


def test_malformed_hash_never_matches():
    hasher = Hasher(CHEAP)
    assert not hasher.verify("not a hash", GOOD)
    assert hasher.needs_rehash("not a hash")


def test_needs_rehash_when_parameters_change():
    stored = Hasher(CHEAP).hash(GOOD)
    assert not Hasher(CHEAP).needs_rehash(stored)
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1)
    assert Hasher(stronger).needs_rehash(stored)


def test_only_argon2id():
    with pytest.raises(ValueError, match="argon2id"):
        Hasher(argon2.PasswordHasher(type=argon2.Type.I))


class CountingHasher(argon2.PasswordHasher):
    """A cheap argon2id hasher that remembers which hashes it verified against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash, password):  # noqa: A002 - argon2's parameter name
        self.verified.append(hash)
        return super().verify(hash, password)


def test_dummy_verify_does_real_argon2_work():
    counting = CountingHasher()
    hasher = Hasher(counting)
    hasher.dummy_verify("anything")
    hasher.dummy_verify("anything else")
    assert len(counting.verified) == 2
    assert counting.verified[0] == counting.verified[1]  # one dummy hash, made once
    assert counting.verified[0].startswith("$argon2id$v=19$m=8192,t=1,p=1$")
