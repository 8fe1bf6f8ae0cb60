"""The ``/auth/*`` endpoints: login, refresh, logout, me and change-password."""

from __future__ import annotations

import logging
from typing import Any

from ..accounts import LoginThrottle, TokenService, Users
from ..errors import InvalidCredentials, InvalidRequest, Unauthorized
from .base import ApiRequest, Endpoint, field

log = logging.getLogger(__name__)


class AuthEndpoints:
    """Handlers for the auth routes, bound to the accounts services."""

    def __init__(self, users: Users, tokens: TokenService, throttle: LoginThrottle) -> None:
        self.users = users
        self.tokens = tokens
        self.throttle = throttle

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/auth/login", self.login, scopes=None),
            Endpoint("POST", "/auth/refresh", self.refresh, scopes=None),
            Endpoint("POST", "/auth/logout", self.logout, scopes=None),
            Endpoint("GET", "/auth/me", self.me),
            Endpoint("POST", "/auth/change-password", self.change_password),
        ]

    def _session(
        self, user: dict[str, Any], refresh_token: str, issued_at: float
    ) -> dict[str, Any]:
        access, expires_in = self.tokens.issue_access(
            user["username"], user["scopes"], issued_at=issued_at
        )
        return {
            "ok": True,
            "token": access,
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh_token,
            "user": {"username": user["username"], "scopes": user["scopes"]},
        }

    def login(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        username, password = field(body, "username"), field(body, "password")
        if len(username) > 256 or len(password) > 1024:
            raise InvalidCredentials()
        try:
            with self.throttle.attempt(username, req.client):
                user = self.users.authenticate(username, password)
        except InvalidCredentials:
            log.info("login failed for a user from %s", req.client)
            raise
        # Taken before the session is checked, so a change to the user after the check
        # is later than the access token's iat and revokes it.
        issued_at = self.tokens.clock()
        refresh = self.tokens.issue_refresh(user["username"], session_floor=user["session_floor"])
        log.info("login of %s", user["username"])
        return self._session(user, refresh, issued_at)

    def refresh(self, req: ApiRequest) -> dict[str, Any]:
        token = field(req.json(), "refresh_token")
        issued_at = self.tokens.clock()  # as in login
        username, new_refresh = self.tokens.rotate_refresh(token)
        try:
            user = self.users.get_active(username)
        except InvalidCredentials as err:
            raise Unauthorized("the account is no longer active") from err
        return self._session(user, new_refresh, issued_at)

    def logout(self, req: ApiRequest) -> dict[str, Any]:
        self.tokens.revoke_refresh(field(req.json(), "refresh_token"), username=req.sub)
        return {"ok": True}

    def me(self, req: ApiRequest) -> dict[str, Any]:
        if req.principal.get("claims", {}).get("typ") == "api":
            return {"ok": True, "user": {"username": req.sub, "scopes": req.principal["scopes"]}}
        user = self.users.get_active(req.sub)
        return {"ok": True, "user": {"username": user["username"], "scopes": user["scopes"]}}

    def change_password(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        old, new = field(body, "old_password"), field(body, "new_password")
        if req.principal.get("claims", {}).get("typ") == "api":
            raise InvalidRequest("API tokens cannot change passwords; log in as the user")
        with self.throttle.attempt(req.sub, req.client):
            self.users.authenticate(req.sub, old)
        self.users.set_password(req.sub, new)
        revoked = self.tokens.revoke_user_refresh(req.sub)
        log.info("password of %s changed; %d refresh token(s) revoked", req.sub, revoked)
        return {"ok": True}
