"""Authenticate requests by a JWT bearer token and put the principal in the environ.

The token comes from ``Authorization: Bearer <token>``. It must name a key of the key
ring in its ``kid`` header; the algorithms it may use are the configured allow-list
narrowed to those that suit that key's type, so the algorithm never comes from the token
(``alg: none`` and HS/RS key confusion are refused). The claims ``exp``, ``iat`` and
``sub`` are required and type-checked (numeric dates, ``exp`` after ``iat``, a lifetime no
longer than ``max_lifetime``, a non-empty string subject); ``nbf``, ``iss`` and ``aud``
are checked when present or configured. The middleware authenticates only: which scopes a
route needs is the inner app's business.

Every refusal is ``401 UNAUTHORIZED`` in the JSON error shape: with ``WWW-Authenticate:
Bearer realm="..."`` when no token was sent, and ``WWW-Authenticate: Bearer
error="invalid_token"`` for a malformed, badly signed, disallowed-algorithm, unknown-kid,
expired, not-yet-valid, wrong-issuer, wrong-audience or revoked token.

Options:

``keys``
    the key ring: a mapping ``kid -> key``, or a callable returning one (called on every
    request, so a rotated ring takes effect at once). A key is an HMAC secret (``str`` or
    ``bytes``, at least as long as the hash), a PEM public key, a ``cryptography`` key
    object or a ``jwt.PyJWK``.
``algorithms``
    the allow-list, default ``("HS256",)``; RS*, PS*, ES* and EdDSA work with public keys.
``issuer``, ``audience``
    required ``iss`` / accepted ``aud`` values; ``None`` (default) skips the issuer check
    and refuses tokens that carry an ``aud``.
``leeway``
    clock-skew allowance in seconds for ``exp``, ``nbf`` and ``iat`` (default 30).
``max_lifetime``
    the longest ``exp - iat`` accepted, in seconds (default 366 days).
``public_paths``
    paths that need no token, exact or ending in ``*`` for a prefix; default the login,
    refresh and health paths.
``allow_anonymous_read``
    GET and HEAD requests without an ``Authorization`` header get an anonymous principal
    with scope ``read`` (default ``False``); a token that is sent is still verified.
``is_revoked``
    a callable ``claims -> bool``; ``True`` refuses the token (API tokens revoked early).
``realm``
    the realm of the challenge sent when no token is present (default ``"goodrepo"``).
``cache_size``
    how many verified tokens to remember (default 1024; 0 turns the cache off). A token
    seen again skips the signature check while its key is still the ring's key for its
    ``kid`` and it has not expired; the revocation callback still runs on every request.

Usage::

    from middleware.auth import JWTAuthMiddleware
    app = JWTAuthMiddleware(app, keys={"k1": secret}, issuer="goodrepo")
    # environ["goodrepo.principal"] == {"sub": "alice", "scopes": ["read"], ...}

Environ keys: sets ``goodrepo.principal`` to ``{"sub": str, "scopes": list[str],
"token_id": str | None, "claims": dict, "anonymous": bool}``; the refusals set
``goodrepo.error_code``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from jwt.algorithms import get_default_algorithms

from middleware.errors import error_response
from middleware.keys import PRINCIPAL

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from jwt.types import Options

log = logging.getLogger(__name__)

DEFAULT_PUBLIC_PATHS = ("/auth/login", "/auth/refresh", "/health", "/health/live", "/health/ready")

KeyRing = Mapping[str, Any]

_ALGORITHMS = {name: alg for name, alg in get_default_algorithms().items() if name != "none"}
_READ_METHODS = frozenset({"GET", "HEAD"})
_MAX_TOKEN_LENGTH = 8192
_KEY_CACHE_SIZE = 256
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII except quote, backslash
_KEY_PREPARE_ERRORS = (jwt.InvalidKeyError, TypeError, ValueError, UnsupportedAlgorithm)


class _Refused(jwt.InvalidTokenError):
    """Raised when a token passes pyjwt's checks but fails one of ours."""


class _Revoked(jwt.InvalidTokenError):
    """Raised when the revocation callback says the token was revoked."""


@dataclass(frozen=True)
class _Key:
    """A key ready for verification and the algorithms it may be used with."""

    key: Any
    algorithms: tuple[str, ...]


def _prepare_key(kid: str, value: Any, allowed: Sequence[str]) -> _Key:
    """Match ``value`` to the allowed algorithms that suit its type; ValueError if none."""
    raw = value
    only: str | None = None
    if isinstance(value, jwt.PyJWK):
        raw, only = value.key, value.algorithm_name
    suited: list[str] = []
    weaknesses: list[str] = []
    prepared: Any = None
    for name in allowed:
        if only is not None and name != only:
            continue
        algorithm = _ALGORITHMS[name]
        try:
            candidate = algorithm.prepare_key(raw)
        except _KEY_PREPARE_ERRORS:
            continue
        weakness = algorithm.check_key_length(candidate)
        if weakness:  # too short for this algorithm (HS512 wants more than HS256): not used
            weaknesses.append(weakness)
            continue
        if hasattr(candidate, "public_key"):
            candidate = candidate.public_key()  # a private key: verify with its public half
        suited.append(name)
        prepared = candidate
    if not suited:
        why = weaknesses[0] if weaknesses else f"the key suits none of {list(allowed)}"
        raise ValueError(f"keys[{kid!r}]: {why}")
    return _Key(prepared, tuple(suited))


_NOT_CACHED = object()


class _KeyRing:
    """The configured key ring, prepared once (mapping) or on first sight (callable)."""

    def __init__(self, keys: KeyRing | Callable[[], KeyRing], algorithms: Sequence[str]):
        self._algorithms = tuple(algorithms)
        self._static: dict[str, _Key] = {}
        self._source: Callable[[], KeyRing] | None = None
        # Prepared keys of a callable ring, by (kid, key); shared by all requests, bounded.
        self._cache: dict[tuple[str, Hashable], _Key | None] = {}
        if isinstance(keys, Mapping):
            if not keys:
                raise ValueError("keys: the key ring is empty")
            for kid, value in keys.items():
                if not isinstance(kid, str) or not kid:
                    raise ValueError(f"keys: key id {kid!r} is not a non-empty string")
                self._static[kid] = _prepare_key(kid, value, self._algorithms)
        elif callable(keys):
            self._source = keys
        else:
            raise ValueError("keys: expected a mapping kid -> key or a callable returning one")

    def get(self, kid: str) -> _Key | None:
        if self._source is None:
            return self._static.get(kid)
        ring = self._source()
        if kid not in ring:
            return None
        value = ring[kid]
        try:
            cache_key: tuple[str, Hashable] | None = (kid, value)
            hash(cache_key)
        except TypeError:
            cache_key = None
        if cache_key is not None:
            # One lookup: another thread may clear the cache between two.
            cached = self._cache.get(cache_key, _NOT_CACHED)
            if cached is not _NOT_CACHED:
                return cached  # type: ignore[return-value]
        try:
            prepared: _Key | None = _prepare_key(kid, value, self._algorithms)
        except ValueError as err:
            log.error("unusable key in the key ring: %s", err)
            prepared = None
        if cache_key is not None:
            if len(self._cache) >= _KEY_CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = prepared
        return prepared


class _VerifiedTokens:
    """Tokens that passed verification, with the key that verified them and the principal
    made of their claims; bounded, FIFO.

    Shared by all requests on purpose: pyjwt's parsing and signature check are most of
    this middleware's cost, and a client sends the same token many times. Each request
    gets its own copy of the principal.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[str, tuple[str, _Key, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[str, _Key, dict[str, Any]] | None:
        return self._entries.get(token) if self._size else None

    def put(self, token: str, kid: str, key: _Key, principal: dict[str, Any]) -> None:
        if not self._size:
            return
        with self._lock:
            while len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[token] = (kid, key, principal)

    def drop(self, token: str) -> None:
        with self._lock:
            self._entries.pop(token, None)


def _anonymous_principal() -> dict[str, Any]:
    return {
        "sub": "anonymous",
        "scopes": ["read"],
        "token_id": None,
        "claims": {},
        "anonymous": True,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class JWTAuthMiddleware:
    """Verify bearer JWTs and set ``goodrepo.principal`` (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        keys: KeyRing | Callable[[], KeyRing],
        algorithms: Iterable[str] = ("HS256",),
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 30.0,
        max_lifetime: float = 366 * 86400.0,
        public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS,
        allow_anonymous_read: bool = False,
        is_revoked: Callable[[dict[str, Any]], bool] | None = None,
        realm: str = "goodrepo",
        cache_size: int = 1024,
    ) -> None:
        self.app = app
        if isinstance(algorithms, str):
            raise ValueError("algorithms: expected a list of names, not a string")
        algorithms = tuple(algorithms)
        if not algorithms:
            raise ValueError("algorithms: the allow-list is empty")
        for name in algorithms:
            if name not in _ALGORITHMS:
                raise ValueError(
                    f"algorithms: {name!r} is not allowed; choose from {sorted(_ALGORITHMS)}"
                )
        self._algorithms = algorithms
        self._keys = _KeyRing(keys, algorithms)
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ValueError("issuer: expected a non-empty string or None")
        self._issuer = issuer
        if isinstance(audience, str):
            audience = [audience]
        if audience is not None:
            audience = list(audience)
            if not audience or not all(isinstance(a, str) and a for a in audience):
                raise ValueError("audience: expected a non-empty string, a list of them, or None")
        self._audience = audience
        if not _is_number(leeway) or leeway < 0:
            raise ValueError("leeway: expected a number of seconds >= 0")
        self._leeway = float(leeway)
        if not _is_number(max_lifetime) or max_lifetime <= 0:
            raise ValueError("max_lifetime: expected a number of seconds > 0")
        self._max_lifetime = float(max_lifetime)
        exact, prefixes = set(), []
        for path in [public_paths] if isinstance(public_paths, str) else public_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"public_paths: {path!r} does not start with '/'")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self._public_exact = frozenset(exact)
        self._public_prefixes = tuple(prefixes)
        self._allow_anonymous_read = bool(allow_anonymous_read)
        if is_revoked is not None and not callable(is_revoked):
            raise ValueError("is_revoked: expected a callable claims -> bool or None")
        self._is_revoked = is_revoked
        if not isinstance(realm, str) or not _REALM.fullmatch(realm):
            raise ValueError("realm: expected printable ASCII without quotes or backslashes")
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 0:
            raise ValueError("cache_size: expected a whole number >= 0")
        self._verified = _VerifiedTokens(cache_size)
        self._missing_challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
        self._invalid_challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        self._options: Options = {
            "require": ["exp", "iat", "sub"],
            "verify_signature": True,
            "verify_exp": True,
            "verify_iat": True,
            "verify_nbf": True,
            "verify_iss": issuer is not None,
            "verify_aud": True,
            "verify_sub": True,
            "verify_jti": True,
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in self._public_exact or (
            self._public_prefixes and path.startswith(self._public_prefixes)
        ):
            return self.app(environ, start_response)
        header = environ.get("HTTP_AUTHORIZATION")
        if not header:
            if self._allow_anonymous_read and environ.get("REQUEST_METHOD") in _READ_METHODS:
                environ[PRINCIPAL] = _anonymous_principal()
                return self.app(environ, start_response)
            response = error_response(
                environ,
                401,
                "UNAUTHORIZED",
                "a bearer token is required",
                headers=self._missing_challenge,
            )
            return response(environ, start_response)
        try:
            environ[PRINCIPAL] = self._authenticate(header)
        except jwt.InvalidTokenError as err:
            log.debug("bearer token refused: %s", type(err).__name__)
            response = error_response(
                environ, 401, "UNAUTHORIZED", _message(err), headers=self._invalid_challenge
            )
            return response(environ, start_response)
        return self.app(environ, start_response)

    def _authenticate(self, header: str) -> dict[str, Any]:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _Refused("not a bearer token")
        if len(token) > _MAX_TOKEN_LENGTH:
            raise _Refused("token too long")
        principal = self._remembered(token)
        if principal is None:
            principal = self._verify(token)
        # A copy for this request: the app may change it, the cached one must not change.
        principal = {
            **principal,
            "scopes": list(principal["scopes"]),
            "claims": dict(principal["claims"]),
        }
        if self._is_revoked is not None and self._is_revoked(principal["claims"]):
            raise _Revoked("token revoked")
        return principal

    def _verify(self, token: str) -> dict[str, Any]:
        """Verify ``token`` with pyjwt and the checks it lacks; remember its principal."""
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise _Refused("no key id")
        key = self._keys.get(kid)
        if key is None:
            raise _Refused("unknown key id")
        claims = jwt.decode(
            token,
            key.key,
            algorithms=key.algorithms,
            options=self._options,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
        )
        principal = self._principal(claims)
        self._verified.put(token, kid, key, principal)
        return principal

    def _remembered(self, token: str) -> dict[str, Any] | None:
        """The principal of ``token`` if it was verified before and still would be."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        kid, key, principal = cached
        if self._keys.get(kid) is key and principal["claims"]["exp"] > time.time() - self._leeway:
            return principal
        self._verified.drop(token)  # its key rotated out, or it expired: verify afresh
        return None

    def _principal(self, claims: dict[str, Any]) -> dict[str, Any]:
        exp, iat, sub = claims["exp"], claims["iat"], claims["sub"]
        if not _is_number(exp) or not _is_number(iat):
            raise _Refused("exp and iat must be numeric dates")
        if exp <= iat:
            raise _Refused("exp is not after iat")
        if exp - iat > self._max_lifetime:
            raise _Refused("token lifetime too long")
        if "nbf" in claims and not _is_number(claims["nbf"]):
            raise _Refused("nbf must be a numeric date")
        if not isinstance(sub, str) or not sub:
            raise _Refused("sub must be a non-empty string")
        scopes = claims.get("scopes")
        if scopes is None:
            scope = claims.get("scope")
            if scope is not None and not isinstance(scope, str):
                raise _Refused("scope must be a space-separated string")
            scopes = scope.split() if scope else []
        elif not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise _Refused("scopes must be a list of strings")
        token_id = claims.get("jti")
        return {
            "sub": sub,
            "scopes": list(scopes),
            "token_id": token_id if isinstance(token_id, str) else None,
            "claims": dict(claims),
            "anonymous": False,
        }


def _message(err: jwt.InvalidTokenError) -> str:
    """A client-facing reason: specific where it helps the client, generic otherwise."""
    if isinstance(err, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(err, jwt.ImmatureSignatureError):
        return "the token is not valid yet"
    if isinstance(err, _Revoked):
        return "the token has been revoked"
    return "the token is invalid"
