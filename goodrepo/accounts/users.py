"""Users in the KV: normalised names, argon2id hashes, scopes, a disabled flag.

A user document lives under ``a:user:<username>``. Callers never see the hash: every
method answers the :func:`public` view ``{"username", "scopes", "disabled",
"created_at"}``. Valid scopes are ``read``, ``write``, ``admin`` (implies all) and
``replicate``.

:meth:`Users.authenticate` answers unknown users, wrong passwords and disabled accounts
with the same :class:`~goodrepo.errors.InvalidCredentials` after the same amount of
argon2 work. Throttling failed logins is :class:`~goodrepo.accounts.LoginThrottle`'s job,
and revoking refresh tokens after a password change is the token service's: the HTTP
layer composes them.

Usage::

    users = Users(kv, PasswordPolicy())
    users.create("alice", "a long passphrase here", ["read", "write"])
    user = users.authenticate("Alice", "a long passphrase here")  # {"username": "alice", ...}
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import argon2

from ..errors import InvalidCredentials, NotFound, UserExists, ValidationError
from ..storage.kv import KV
from . import _store
from .passwords import Hasher, PasswordPolicy

log = logging.getLogger(__name__)

SCOPES = frozenset({"read", "write", "admin", "replicate"})
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def normalize_username(username: str) -> str:
    """Trimmed, lower-cased ``username``; :class:`ValidationError` when it is not valid.

    Control and non-ASCII characters are refused before anything is trimmed away.
    """
    if not isinstance(username, str) or not _PRINTABLE_ASCII.fullmatch(username):
        raise ValidationError("invalid username", details={"field": "username"})
    name = username.strip().lower()
    if not USERNAME_RE.fullmatch(name):
        raise ValidationError(
            "username must be 1-64 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit",
            details={"field": "username"},
        )
    return name


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    """``scopes`` de-duplicated and sorted; :class:`ValidationError` for an unknown one."""
    if isinstance(scopes, (str, bytes)) or not isinstance(scopes, Iterable):
        raise ValidationError("scopes must be a list", details={"field": "scopes"})
    items = list(scopes)
    unknown = sorted(repr(s) for s in items if not isinstance(s, str) or s not in SCOPES)
    if unknown:
        raise ValidationError(
            f"unknown scope(s) {', '.join(unknown)}; valid: {', '.join(sorted(SCOPES))}",
            details={"field": "scopes"},
        )
    return sorted(set(items))


def public(user: dict[str, Any]) -> dict[str, Any]:
    """What callers may see of a user document: never the hash."""
    return {
        "username": user["username"],
        "scopes": list(user["scopes"]),
        "disabled": bool(user["disabled"]),
        "created_at": _store.isoformat(user["created_at"]),
    }


def session_floor_of(user: dict[str, Any] | None) -> float | None:
    """The time before which the sessions of ``user`` (a stored user document) no longer
    count: when the user was created, last disabled or last changed password. None when
    the user is gone or disabled."""
    if user is None or user["disabled"]:
        return None
    return float(max(user["created_at"], user.get("sessions_revoked_at", 0)))


class Users:
    """Create, read, change and authenticate users stored in ``kv``.

    ``policy`` checks every new password. ``hasher`` is an ``argon2.PasswordHasher``
    (argon2id; tests pass cheap parameters), ``clock`` gives epoch seconds.

    Usage::

        users = Users(kv, PasswordPolicy(), hasher=PasswordHasher(time_cost=1))
        page, cursor = users.list(limit=50)
    """

    def __init__(
        self,
        kv: KV,
        policy: PasswordPolicy | None = None,
        *,
        hasher: argon2.PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.policy = policy or PasswordPolicy()
        self.hasher = Hasher(hasher)
        self.clock = clock

    # -- reads -------------------------------------------------------------------------

    def get(self, username: str) -> dict[str, Any]:
        """The public view of a user; :class:`NotFound` when there is none."""
        return public(self._load(normalize_username(username)))

    def get_active(self, username: str) -> dict[str, Any]:
        """Like :meth:`get`, for a token's subject: :class:`InvalidCredentials` (401) when
        the user was deleted or disabled since the token was issued."""
        try:
            user = self._load(normalize_username(username))
        except (NotFound, ValidationError) as err:
            raise InvalidCredentials("account no longer exists") from err
        if user["disabled"]:
            raise InvalidCredentials("account disabled")
        return public(user)

    def list(
        self, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of users in name order, and the cursor of the next (None at the end).

        ``limit`` defaults to 100 (1..1000); a malformed limit or cursor raises
        :class:`~goodrepo.errors.InvalidRequest`.
        """
        return _store.page(self.kv, _store.USER, limit, cursor, public)

    # -- writes ------------------------------------------------------------------------

    def create(
        self,
        username: str,
        password: str,
        scopes: Iterable[str],
        *,
        disabled: bool = False,
    ) -> dict[str, Any]:
        """Create a user; returns its public view.

        Raises :class:`ValidationError` (bad name or scope),
        :class:`~goodrepo.errors.PasswordPolicyError`, :class:`UserExists`.
        """
        name = normalize_username(username)
        checked = validate_scopes(scopes)
        self.policy.enforce(password, name)
        now = self.clock()
        user = {
            "username": name,
            "password_hash": self.hasher.hash(password),  # slow: outside the transaction
            "scopes": checked,
            "disabled": bool(disabled),
            "created_at": now,
            "updated_at": now,
            "password_changed_at": now,
        }
        with self.kv.transaction() as txn:
            if txn.cas_put_json(_store.user_key(name), user) is not None:
                raise UserExists(f"user {name!r} already exists")
        log.info("user created: %s (scopes %s)", name, ",".join(checked))
        return public(user)

    def set_scopes(self, username: str, scopes: Iterable[str]) -> dict[str, Any]:
        """Replace a user's scopes; :class:`NotFound`, :class:`ValidationError`."""
        checked = validate_scopes(scopes)
        user = self._update(username, {"scopes": checked})
        log.info("user scopes changed: %s (scopes %s)", user["username"], ",".join(checked))
        return user

    def session_floor(self, username: str) -> float:
        """The time before which the user's access tokens no longer count: when the user
        was created, last disabled or last changed password. :class:`InvalidCredentials`
        when the user is gone or disabled."""
        try:
            user = self._load(normalize_username(username))
        except (NotFound, ValidationError) as err:
            raise InvalidCredentials("account no longer exists") from err
        floor = session_floor_of(user)
        if floor is None:
            raise InvalidCredentials("account disabled")
        return floor

    def set_disabled(self, username: str, disabled: bool) -> dict[str, Any]:
        """Disable or enable a user; :class:`NotFound`. Disabling ends the user's
        access tokens for good: enabling again does not bring them back."""
        user = self._update(username, {"disabled": bool(disabled)}, end_sessions=disabled)
        log.info("user %s: %s", "disabled" if disabled else "enabled", user["username"])
        return user

    def set_password(self, username: str, password: str) -> dict[str, Any]:
        """Set a new (policy-checked) password; :class:`NotFound`,
        :class:`~goodrepo.errors.PasswordPolicyError`.

        The caller revokes the user's refresh tokens
        (:meth:`TokenService.revoke_user_refresh`).
        """
        name = normalize_username(username)
        self._load(name)  # NotFound before the policy and the slow hash
        self.policy.enforce(password, name)
        hashed = self.hasher.hash(password)
        user = self._update(
            name, {"password_hash": hashed, "password_changed_at": self.clock()}, end_sessions=True
        )
        log.info("user password changed: %s", name)
        return user

    def delete(self, username: str) -> None:
        """Delete a user; :class:`NotFound` when there is none."""
        name = normalize_username(username)
        with self.kv.transaction() as txn:
            key = _store.user_key(name)
            if txn.get_json(key, lock=True) is None:
                raise NotFound(f"no user {name!r}")
            txn.delete(key)
        log.info("user deleted: %s", name)

    # -- authentication ----------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> dict[str, Any]:
        """The public view of the user whose password this is; else
        :class:`InvalidCredentials`, the same error after the same argon2 work whether
        the user is unknown, the password wrong or the account disabled.

        The view also holds ``session_floor`` (:func:`session_floor_of`) as read with the
        hash: :meth:`TokenService.issue_refresh` starts a session only if it has not
        moved, so a login that raced a password change, disabling or deletion gets none.

        A hash made with older parameters is replaced after a successful login.
        """
        try:
            name = normalize_username(username)
        except ValidationError:
            name = None
        user = None if name is None else self.kv.get_json(_store.user_key(name))
        if user is None:
            self.hasher.dummy_verify(password)
            raise InvalidCredentials()
        if not self.hasher.verify(user["password_hash"], password) or user["disabled"]:
            raise InvalidCredentials()
        if self.hasher.needs_rehash(user["password_hash"]):
            self._rehash(user, password)
        return {**public(user), "session_floor": session_floor_of(user)}

    # -- helpers -----------------------------------------------------------------------

    def _load(self, name: str) -> dict[str, Any]:
        user = self.kv.get_json(_store.user_key(name))
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    def _update(
        self, username: str, changes: dict[str, Any], *, end_sessions: bool = False
    ) -> dict[str, Any]:
        name = normalize_username(username)
        key = _store.user_key(name)
        with self.kv.transaction() as txn:
            user = txn.get_json(key, lock=True)
            if user is None:
                raise NotFound(f"no user {name!r}")
            # Timed under the user's lock: a session started before this change (by a
            # transaction that held the lock earlier) is older than the new floor.
            now = self.clock()
            user.update(changes, updated_at=now)
            if end_sessions:
                user["sessions_revoked_at"] = now
            txn.put_json(key, user)
        return public(user)

    def _rehash(self, user: dict[str, Any], password: str) -> None:
        old = user["password_hash"]
        new = self.hasher.hash(password)
        key = _store.user_key(user["username"])
        with self.kv.transaction() as txn:
            current = txn.get_json(key, lock=True)
            # Only if nobody changed the password (or deleted the user) meanwhile.
            if current is not None and current["password_hash"] == old:
                current["password_hash"] = new
                txn.put_json(key, current)
        log.info("password hash upgraded to current parameters: %s", user["username"])
