"""API tokens for CI: long-lived JWTs with chosen scopes, revocable at once.

An API token is a JWT of ``typ`` ``"api"`` whose ``jti`` is the id of a record
``a:token:<id>`` ``{"id", "owner", "name", "scopes", "created_at", "expires_at", "kid"}``;
the token itself is never stored and is shown only when created. Deleting the record
revokes the token at once. Its scopes must be held by its creator (``admin`` implies
all), and it stops working when its owner is deleted, disabled or loses one of them.

:class:`ApiTokens` is a part of :class:`~goodrepo.accounts.TokenService`, which supplies
the signing; use it through that class.

Usage::

    made = tokens.create_api_token("ci", "nightly", ["read"], 30 * 86400)
    tokens.revoke_api_token(made["id"])
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import Forbidden, NotFound, ValidationError
from ..storage.kv import KV
from . import _store
from .keyring import KeyRing
from .users import normalize_username, validate_scopes

log = logging.getLogger(__name__)

API = "api"
DAY = 86400
DEFAULT_API_TOKEN_SECONDS = 90 * DAY  # or api_token_max_ttl when that is shorter
_TOKEN_ID_RE = re.compile(r"[0-9a-f]{26}")
_NAME_RE = re.compile(r"[\x20-\x7e]{1,100}")


class _TokenIds:
    """Token ids that sort by creation: the time in milliseconds, strictly increasing
    within the process (two tokens in one millisecond keep their order), then 56 random
    bits. They sort after the ids of earlier versions (whole seconds, then 64 bits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def new(self, now: float) -> str:
        with self._lock:
            self._last = max(int(now * 1000), self._last + 1)
            millis = self._last
        return f"{millis:012x}{secrets.token_hex(7)}"


_ids = _TokenIds()


class ApiTokens:
    """Create, list, revoke and check API tokens (a part of ``TokenService``)."""

    kv: KV
    keyring: KeyRing
    clock: Callable[[], float]
    leeway: int
    api_token_max_ttl: int

    def _sign(
        self, sub: str, scopes: Iterable[str], typ: str, jti: str, ttl: int
    ) -> tuple[str, str, int]:
        raise NotImplementedError

    def create_api_token(
        self,
        owner: str,
        name: str,
        scopes: Iterable[str],
        expires_in: int | None = None,
        *,
        owner_scopes: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A new API token: ``{"id", "token", "name", "scopes", "expires_at"}``.

        ``owner_scopes`` are the scopes of the caller creating it (the scopes of the
        token it authenticated with); by default the owner's stored scopes. Raises
        :class:`ValidationError` (name, scopes, ``expires_in`` from 60 s to
        ``api_token_max_ttl``; by default 90 days, or ``api_token_max_ttl`` when that is
        shorter), :class:`Forbidden` (scopes not held by the owner;
        ``admin`` implies all), :class:`NotFound` (no such owner).
        """
        owner = normalize_username(owner)
        checked = validate_scopes(scopes)
        if not checked:
            raise ValidationError(
                "an API token needs at least one scope", details={"field": "scopes"}
            )
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name.strip()):
            raise ValidationError(
                "name must be 1-100 printable ASCII characters", details={"field": "name"}
            )
        if expires_in is None:
            expires_in = min(DEFAULT_API_TOKEN_SECONDS, self.api_token_max_ttl)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise ValidationError(
                "expires_in must be whole seconds", details={"field": "expires_in"}
            )
        if not 60 <= expires_in <= self.api_token_max_ttl:
            raise ValidationError(
                f"expires_in must be from 60 to {self.api_token_max_ttl} seconds",
                details={"field": "expires_in"},
            )
        if owner_scopes is None:
            user = self.kv.get_json(_store.user_key(owner))
            if user is None:
                raise NotFound(f"no user {owner!r}")
            owner_scopes = user["scopes"]
        missing = _missing_scopes(checked, owner_scopes)
        if missing:
            raise Forbidden(
                "an API token cannot have scopes its creator lacks",
                details={"missing_scopes": missing},
            )
        now = self.clock()
        token_id = _ids.new(now)
        token, kid, exp = self._sign(owner, checked, API, token_id, expires_in)
        record = {
            "id": token_id,
            "owner": owner,
            "name": name.strip(),
            "scopes": checked,
            "created_at": now,
            "expires_at": exp,
            "kid": kid,
        }
        with self.kv.transaction() as txn:
            txn.put_json(_store.token_key(token_id), record)
            self.keyring.keep_until(txn, kid, exp + self.leeway)
        log.info("API token created: id %s for %s (scopes %s)", token_id, owner, ",".join(checked))
        return {
            "id": token_id,
            "token": token,
            "name": record["name"],
            "scopes": checked,
            "expires_at": _store.isoformat(exp),
        }

    def list_api_tokens(
        self, limit: int | None = None, cursor: str | None = None, *, owner: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of unexpired API tokens, oldest first, without the tokens themselves;
        ``owner`` filters. Rows: ``id, name, owner, scopes, created_at, expires_at``."""
        now = self.clock()

        def render(record: dict[str, Any]) -> dict[str, Any] | None:
            if record["expires_at"] <= now or (owner is not None and record["owner"] != owner):
                return None
            return {
                "id": record["id"],
                "name": record["name"],
                "owner": record["owner"],
                "scopes": record["scopes"],
                "created_at": _store.isoformat(record["created_at"]),
                "expires_at": _store.isoformat(record["expires_at"]),
            }

        return _store.page(self.kv, _store.TOKEN, limit, cursor, render)

    def revoke_api_token(self, token_id: str, *, owner: str | None = None) -> None:
        """Revoke an API token with immediate effect; :class:`NotFound` when there is none
        (or, with ``owner``, none of that owner's)."""
        if not isinstance(token_id, str) or not _TOKEN_ID_RE.fullmatch(token_id):
            raise NotFound("no such API token")
        with self.kv.transaction() as txn:
            key = _store.token_key(token_id)
            record = txn.get_json(key, lock=True)
            if record is None or (owner is not None and record["owner"] != owner):
                raise NotFound("no such API token")
            txn.delete(key)
        log.info("API token revoked: id %s", token_id)

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether verified ``claims`` belong to a revoked token.

        Only API tokens can be: their record is gone, or their owner is deleted,
        disabled or no longer holds every scope of the token. Access tokens cost nothing.
        """
        if claims.get("typ") != API:
            return False
        jti = claims.get("jti")
        if not isinstance(jti, str) or not _TOKEN_ID_RE.fullmatch(jti):
            return True
        record = self.kv.get_json(_store.token_key(jti))
        if record is None or record["owner"] != claims.get("sub"):
            return True
        user = self.kv.get_json(_store.user_key(record["owner"]))
        if user is None or user["disabled"]:
            return True
        return bool(_missing_scopes(record["scopes"], user["scopes"]))


def _missing_scopes(wanted: Iterable[str], held: Iterable[str]) -> list[str]:
    held = set(held)
    return [] if "admin" in held else sorted(set(wanted) - held)
