"""Accounts: users and passwords, the signing key ring, tokens and login throttling.

Everything is stored in the repository's KV under the ``a:`` prefix. The HTTP layer and
the CLI build on these classes:

- :class:`Users` with :class:`PasswordPolicy` and argon2id hashing (:class:`Hasher`),
- :class:`KeyRing`: HS256 secrets, rotation, cached verification keys,
- :class:`TokenService`: access, refresh and API tokens,
- :class:`LoginThrottle`: failed-login throttling per username and client address.

Usage::

    ring = KeyRing(kv)
    users = Users(kv, PasswordPolicy(min_length=12))
    tokens = TokenService(kv, ring, access_ttl=900)
"""

from __future__ import annotations

from .keyring import Key, KeyRing
from .passwords import Hasher, PasswordPolicy, common_passwords
from .throttle import LoginThrottle
from .tokens import TokenService
from .users import SCOPES, Users, normalize_username, public, validate_scopes

__all__ = [
    "SCOPES",
    "Hasher",
    "Key",
    "KeyRing",
    "LoginThrottle",
    "PasswordPolicy",
    "TokenService",
    "Users",
    "common_passwords",
    "normalize_username",
    "public",
    "validate_scopes",
]
