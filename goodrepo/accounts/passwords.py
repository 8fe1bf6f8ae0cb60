"""Passwords: the NIST SP 800-63B policy and argon2id hashing.

:class:`PasswordPolicy` checks a new password the way SP 800-63B section 5.1.1.2 asks: a
minimum length (12 by default, never below 8), a maximum (256), not one of the most
common passwords (a shipped list of about 20 000), not containing the username. There are
no composition rules ("one digit, one symbol") and no expiry. Every reason is reported.

:class:`Hasher` wraps an ``argon2.PasswordHasher`` (argon2id only): hashing, verifying,
rehash-if-needed after a successful login, and a dummy verification that costs what a real
one costs, so that an unknown username takes as long to reject as a wrong password.

Passwords are Unicode-normalised (NFKC, as SP 800-63B recommends) before they are
measured, compared with the list or hashed, so that the same password typed on two
keyboards gives the same hash.

Usage::

    policy = PasswordPolicy(min_length=12)
    policy.check("correct horse", "alice")   # -> ["shorter than 12 characters"]
    hasher = Hasher()
    stored = hasher.hash("correct horse battery staple")
    assert hasher.verify(stored, "correct horse battery staple")
"""

from __future__ import annotations

import functools
import logging
import threading
import unicodedata
from collections.abc import Iterable
from importlib import resources

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..entities import is_unicode_text
from ..errors import PasswordPolicyError

log = logging.getLogger(__name__)

COMMON_PASSWORDS_FILE = "common-passwords.txt"
ABSOLUTE_MIN_LENGTH = 8
#: The username check is skipped for names this short: "containing 'al'" would reject
#: most passwords of user ``al`` without making any of them harder to guess.
MIN_USERNAME_CHECK_LENGTH = 3


def normalize(password: str) -> str:
    """The form of ``password`` that is measured, compared and hashed (NFKC)."""
    return unicodedata.normalize("NFKC", password)


def _utf8(password: str) -> bytes:
    """``password`` as hashed: UTF-8 of its normal form. A lone surrogate (from a JSON
    escape such as ``\\ud800``, or undecodable input) is kept as its code, so such a
    text can be compared with, though the policy never lets it become a password."""
    return normalize(password).encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased (read once, on first use).

    The file starts with a header of ``#`` lines (origin and license); every line after
    it is an entry.
    """
    text = resources.files("goodrepo").joinpath("data").joinpath(COMMON_PASSWORDS_FILE)
    entries: set[str] = set()
    in_header = True
    with text.open("r", encoding="utf-8") as fh:
        for line in fh:
            if in_header and line.startswith("#"):
                continue
            in_header = False
            entry = line.rstrip("\n")
            if entry:
                entries.add(entry.lower())
    log.debug("loaded %d common passwords", len(entries))
    return frozenset(entries)


class PasswordPolicy:
    """Checks new passwords against the NIST SP 800-63B rules.

    ``min_length`` (default 12, ``ValueError`` below 8) and ``max_length`` (default 256)
    count Unicode code points after normalisation. ``common`` replaces the shipped list
    of common passwords (compared case-insensitively); by default the shipped list is
    loaded on first use.

    Usage::

        policy = PasswordPolicy(min_length=14)
        policy.enforce(new_password, username)  # raises PasswordPolicyError
    """

    def __init__(
        self,
        min_length: int = 12,
        max_length: int = 256,
        common: Iterable[str] | None = None,
    ) -> None:
        if min_length < ABSOLUTE_MIN_LENGTH:
            raise ValueError(
                f"min_length must be at least {ABSOLUTE_MIN_LENGTH}, got {min_length}"
            )
        if max_length < min_length:
            raise ValueError(f"max_length ({max_length}) is below min_length ({min_length})")
        self.min_length = min_length
        self.max_length = max_length
        self._common = None if common is None else frozenset(p.lower() for p in common)

    @property
    def common(self) -> frozenset[str]:
        """The lower-cased list of passwords that are refused as too common."""
        return common_passwords() if self._common is None else self._common

    def check(self, password: str, username: str | None = None) -> list[str]:
        """Every reason ``password`` is refused (empty when it is acceptable)."""
        pw = normalize(password)
        reasons = []
        if not is_unicode_text(pw):
            reasons.append("not valid Unicode text (a lone surrogate or undecodable bytes)")
        if len(pw) < self.min_length:
            reasons.append(f"shorter than {self.min_length} characters")
        if len(pw) > self.max_length:
            reasons.append(f"longer than {self.max_length} characters")
        if pw.lower() in self.common:
            reasons.append("one of the most commonly used passwords")
        name = normalize(username or "").strip().lower()
        if len(name) >= MIN_USERNAME_CHECK_LENGTH and name in pw.lower():
            reasons.append("contains the username")
        return reasons

    def enforce(self, password: str, username: str | None = None) -> None:
        """Raise :class:`~goodrepo.errors.PasswordPolicyError` listing every reason."""
        reasons = self.check(password, username)
        if reasons:
            raise PasswordPolicyError(reasons)


class Hasher:
    """argon2id password hashes, with rehash-if-needed and a timing-safe dummy verify.

    ``hasher`` is an ``argon2.PasswordHasher`` of type argon2id (``ValueError`` for
    another type); the default uses argon2-cffi's defaults (RFC 9106 low-memory profile).
    Tests pass a cheap one, e.g. ``PasswordHasher(time_cost=1, memory_cost=8192)``.

    Usage::

        hasher = Hasher()
        stored = hasher.hash(password)
        ok = hasher.verify(stored, attempt)
        if ok and hasher.needs_rehash(stored): ...
    """

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self.hasher = hasher or argon2.PasswordHasher()
        if self.hasher.type is not argon2.Type.ID:
            raise ValueError("password hashes must use argon2id")
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        """A fresh salted hash of ``password``."""
        return self.hasher.hash(_utf8(password))

    def verify(self, stored: str, password: str) -> bool:
        """Whether ``password`` matches ``stored``; a malformed hash never matches."""
        try:
            return self.hasher.verify(stored, _utf8(password))
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            log.warning("a stored password hash could not be verified (malformed)")
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend the time a real verification takes, for users that do not exist."""
        if self._dummy is None:
            with self._dummy_lock:
                if self._dummy is None:
                    self._dummy = self.hasher.hash("not a password of anyone")
        self.verify(self._dummy, password)
