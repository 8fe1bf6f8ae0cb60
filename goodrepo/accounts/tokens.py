"""Tokens: JWT access tokens, opaque rotating refresh tokens, and API tokens for CI.

Access tokens are HS256 JWTs signed with the key ring's current key (``kid`` header)
with claims ``sub``, ``scopes``, ``iat``, ``nbf``, ``exp``, ``jti``, ``typ`` and, when
configured, ``iss`` and ``aud``. :meth:`TokenService.verify` checks them with an
algorithm allow-list, the ring's live keys and a small clock leeway.

Refresh tokens are opaque random strings; only their sha256 is stored
(``a:refresh:<hex>``). Each belongs to a family (``a:family:<user>:<fid>``), started at
login, whose document names the one live token. Using a token rotates it; presenting a
spent one again means it was stolen, so its whole family is revoked. Revoking a family
deletes its document: every token of it then fails.

API tokens are JWTs of ``typ`` ``"api"`` whose ``jti`` is the id of a record
``a:token:<id>`` (the token itself is never stored). Deleting the record revokes the
token at once: :meth:`TokenService.is_revoked` does one KV read per API-token request, and
one more to check the owner is still enabled and still holds the token's scopes.

Usage::

    tokens = TokenService(kv, KeyRing(kv), issuer="https://repo.example")
    jwt, expires_in = tokens.issue_access("alice", ["read"])
    refresh = tokens.issue_refresh("alice")
    user, refresh = tokens.rotate_refresh(refresh)
    claims = tokens.verify(jwt)
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from ..errors import InvalidCredentials, Unauthorized
from ..storage.kv import KV, loads
from . import _store
from .apitokens import API, DAY, ApiTokens
from .keyring import KeyRing
from .users import session_floor_of

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
ACCESS = "access"


def _digest(token: str) -> str:
    # surrogatepass: a token sent with a lone surrogate is just one that matches nothing.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TokenService(ApiTokens):
    """Issues, rotates, verifies and revokes tokens.

    ``issuer``/``audience`` set and require ``iss``/``aud``; ``access_ttl`` (seconds)
    bounds access tokens, ``refresh_ttl`` refresh tokens (sliding: each rotation starts
    a new period), ``api_token_max_ttl`` API tokens; ``leeway`` is the accepted clock
    skew. The key ring's ``token_lifetime`` is raised to ``access_ttl + leeway`` if it
    is shorter, so that retired keys outlive the tokens they signed.

    Usage::

        tokens = TokenService(kv, ring, access_ttl=900)
        made = tokens.create_api_token("ci", "nightly", ["read"], 30 * 86400)
    """

    def __init__(
        self,
        kv: KV,
        keyring: KeyRing,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        access_ttl: int = 900,
        refresh_ttl: int = 30 * DAY,
        api_token_max_ttl: int = 365 * DAY,
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in [
            ("access_ttl", access_ttl),
            ("refresh_ttl", refresh_ttl),
            ("api_token_max_ttl", api_token_max_ttl),
        ]:
            if value < 60:
                raise ValueError(f"{name} must be at least 60 seconds, got {value}")
        if not 0 <= leeway < access_ttl:
            raise ValueError(f"leeway must be from 0 to below access_ttl, got {leeway}")
        self.kv = kv
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.api_token_max_ttl = api_token_max_ttl
        self.leeway = leeway
        self.clock = clock
        keyring.token_lifetime = max(keyring.token_lifetime, access_ttl + leeway)

    # -- access tokens -----------------------------------------------------------------

    def issue_access(
        self,
        sub: str,
        scopes: Iterable[str],
        *,
        token_id: str | None = None,
        ttl: int | None = None,
        issued_at: float | None = None,
    ) -> tuple[str, int]:
        """A signed access token for ``sub`` and its lifetime in seconds.

        ``ttl`` may shorten (never lengthen) ``access_ttl``: ``ValueError`` otherwise.
        ``issued_at`` (default now) backdates ``iat`` to when the session was checked,
        so that a password change or disabling since then revokes the token.
        """
        ttl = self.access_ttl if ttl is None else ttl
        if not 1 <= ttl <= self.access_ttl:
            raise ValueError(f"ttl must be from 1 to {self.access_ttl} seconds")
        jti = token_id or secrets.token_hex(16)
        return self._sign(sub, scopes, ACCESS, jti, ttl, issued_at)[0], ttl

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid, unexpired, unrevoked token; else :class:`Unauthorized`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise Unauthorized("malformed token") from err
        kid = header.get("kid")
        secret = self.keyring.verification_keys().get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise Unauthorized("token signed with an unknown or retired key")
        options: Any = {
            "require": ["exp", "iat", "sub", "jti"],
            "verify_exp": False,  # checked below against the injectable clock
            "verify_iat": False,
            "verify_nbf": False,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options=options,
            )
        except jwt.InvalidTokenError as err:
            raise Unauthorized("invalid token") from err
        self._check_claims(claims)
        if self.is_revoked(claims):
            raise Unauthorized("token revoked")
        return claims

    # -- refresh tokens ----------------------------------------------------------------

    def issue_refresh(self, username: str, *, session_floor: float | None = None) -> str:
        """A new refresh token starting a new family (at login).

        The user must exist and be enabled, and with ``session_floor`` (what
        :meth:`Users.authenticate` read) still have that floor; else
        :class:`InvalidCredentials`. Checked under the user's lock, so a password change,
        disabling or deletion either comes first and is seen, or comes after and outdates
        the family (see :meth:`rotate_refresh`).
        """
        fid = secrets.token_hex(12)
        token = secrets.token_urlsafe(32)
        with self.kv.transaction() as txn:
            floor = session_floor_of(txn.get_json(_store.user_key(username), lock=True))
            if floor is None or session_floor not in (None, floor):
                raise InvalidCredentials("the account changed during the login")
            now = self.clock()
            exp = now + self.refresh_ttl
            family = {"current": _digest(token), "created_at": now, "expires_at": exp}
            txn.put_json(_store.family_key(username, fid), family)
            txn.put_json(_store.refresh_key(_digest(token)), self._refresh(username, fid, now))
        return token

    def rotate_refresh(self, token: str) -> tuple[str, str]:
        """Spend ``token``; returns ``(username, new_token)`` of the same family.

        :class:`Unauthorized` when it is unknown, expired or revoked, or when its family
        started before the user's session floor (a later password change or disabling) or
        the user is gone or disabled; replaying a spent token also revokes its whole
        family. The user is read under its lock, as :meth:`issue_refresh` does.
        """
        digest = _digest(token)
        with self.kv.transaction() as txn:
            now = self.clock()
            record = txn.get_json(_store.refresh_key(digest), lock=True)
            if record is None or record["expires_at"] <= now:
                raise Unauthorized("invalid refresh token")
            username, fid = record["username"], record["family"]
            fkey = _store.family_key(username, fid)
            family = txn.get_json(fkey, lock=True)
            if family is None:
                raise Unauthorized("refresh token revoked")
            floor = session_floor_of(txn.get_json(_store.user_key(username), lock=True))
            if floor is None or family["created_at"] < floor:
                raise Unauthorized("refresh token revoked")
            replayed = family["current"] != digest
            if replayed:
                txn.delete(fkey)
            else:
                new = secrets.token_urlsafe(32)
                txn.put_json(_store.refresh_key(_digest(new)), self._refresh(username, fid, now))
                family.update(current=_digest(new), expires_at=now + self.refresh_ttl)
                txn.put_json(fkey, family)
        if replayed:
            log.warning("spent refresh token replayed: revoked its family (user %s)", username)
            raise Unauthorized("refresh token already used; its session is revoked")
        return username, new

    def revoke_refresh(self, token: str, *, username: str | None = None) -> None:
        """Revoke ``token`` and its family (logout); :class:`Unauthorized` when it is not
        a live token (of ``username``, when given). A spent token revokes its family too,
        as on refresh, then is refused."""
        digest = _digest(token)
        with self.kv.transaction() as txn:
            record = txn.get_json(_store.refresh_key(digest), lock=True)
            if record is None or record["expires_at"] <= self.clock():
                raise Unauthorized("invalid refresh token")
            if username is not None and record["username"] != username:
                raise Unauthorized("invalid refresh token")  # not one of yours
            fkey = _store.family_key(record["username"], record["family"])
            family = txn.get_json(fkey, lock=True)
            if family is None:
                raise Unauthorized("refresh token revoked")
            txn.delete(fkey)
            txn.delete(_store.refresh_key(digest))
        if family["current"] != digest:
            username = record["username"]
            log.warning("spent refresh token replayed: revoked its family (user %s)", username)
            raise Unauthorized("refresh token already used; its session is revoked")

    def revoke_user_refresh(self, username: str) -> int:
        """Revoke every refresh-token family of ``username``; returns how many."""
        prefix = _store.family_prefix(username)
        keys = [key for key, _ in self.kv.scan(prefix)]
        with self.kv.transaction() as txn:
            for key in keys:
                txn.delete(key)
        if keys:
            log.info("revoked %d refresh-token families of user %s", len(keys), username)
        return len(keys)

    # -- maintenance -------------------------------------------------------------------

    def purge_expired(self, batch: int = 500) -> int:
        """Delete expired refresh tokens, families and API-token records; returns how many.

        Bounded work per transaction; the garbage collector or an operator calls it.
        """
        now = self.clock()
        removed = 0
        for prefix in (_store.REFRESH, _store.FAMILY, _store.TOKEN):
            expired = [k for k, raw in self.kv.scan(prefix) if loads(raw)["expires_at"] <= now]
            for i in range(0, len(expired), batch):
                with self.kv.transaction() as txn:
                    for key in expired[i : i + batch]:
                        doc = txn.get_json(key, lock=True)
                        if doc is not None and doc["expires_at"] <= now:
                            txn.delete(key)
                            removed += 1
        if removed:
            log.info("purged %d expired token records", removed)
        return removed

    # -- helpers -----------------------------------------------------------------------

    def _sign(
        self,
        sub: str,
        scopes: Iterable[str],
        typ: str,
        jti: str,
        ttl: int,
        issued_at: float | None = None,
    ) -> tuple[str, str, int]:
        key = self.keyring.current()
        issued = self.clock() if issued_at is None else issued_at
        now = int(issued)
        claims: dict[str, Any] = {
            "sub": sub,
            "scopes": sorted(set(scopes)),
            # The exact time (a NumericDate may have a fraction): a token issued in the
            # same second as, but before, a password change or disabling is revoked.
            "iat": issued,
            "nbf": now,
            "exp": now + ttl,
            "jti": jti,
            "typ": typ,
        }
        if self.issuer is not None:
            claims["iss"] = self.issuer
        if self.audience is not None:
            claims["aud"] = self.audience
        token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, key.kid, now + ttl

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not (_is_number(exp) and _is_number(iat) and _is_number(nbf)):
            raise Unauthorized("invalid token")
        if exp <= now - self.leeway:
            raise Unauthorized("token expired")
        if nbf > now + self.leeway or iat > now + self.leeway:
            raise Unauthorized("token not valid yet")
        if claims.get("typ") not in (ACCESS, API) or not isinstance(claims["sub"], str):
            raise Unauthorized("invalid token")
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise Unauthorized("invalid token")

    def _refresh(self, username: str, fid: str, now: float) -> dict[str, Any]:
        exp = now + self.refresh_ttl
        return {"username": username, "family": fid, "created_at": now, "expires_at": exp}
