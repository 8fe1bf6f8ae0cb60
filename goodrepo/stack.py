"""The standard goodrepo stack: the core, the accounts and admin endpoints, and the
middlewares around them, built from validated settings in one function.

Order, outermost first, and why:

1. request id — every response, refusals included, carries ``X-Request-ID``, and the
   access log sees the final status of everything below it;
2. metrics — counts and times every request, refusals included;
3. security headers — added to every answer, the middlewares' own included;
4. CORS — answers preflights before anything asks for a token, and decorates refusals so
   that browsers can read them;
5. server refusals — a request that ``goodrepo serve``'s HTTP server refused before
   reading it (a body over the limit, a malformed request) is answered here, in the JSON
   error shape, with everything the layers above add (see :mod:`goodrepo.refusals`);
6. health — probes need no token and are not rate limited;
7. rate limit — refuses floods (login attempts first) before any password hashing or
   token verification is spent on them;
8. auth — verifies the bearer token and puts the principal in the environ;
9. the accounts and admin endpoints, then the schema's routes (the core).

Before any of it, :func:`create_app` reads and validates ``schema_file`` and only then
opens (or creates) the data directory, so that a schema file that cannot be read or is
rejected leaves nothing behind.

Usage::

    app = create_app(data="./data", allow_anon_read=True)
    waitress.serve(app, listen="127.0.0.1:8080")
    app.close()
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from middleware.auth import DEFAULT_PUBLIC_PATHS, JWTAuthMiddleware
from middleware.cors import CORSMiddleware
from middleware.errors import error_response
from middleware.health import HealthMiddleware
from middleware.metrics import DEFAULT_COUNTERS, MetricsMiddleware
from middleware.ratelimit import RateLimitMiddleware, Rule
from middleware.request_id import RequestIDMiddleware
from middleware.security_headers import SecurityHeadersMiddleware

from . import schema as schema_mod
from .accounts import KeyRing, LoginThrottle, PasswordPolicy, TokenService, Users
from .api.admin import MAX_SCHEMA_BYTES, AdminEndpoints
from .api.auth import AuthEndpoints
from .api.base import ApiRequest, Endpoint, JsonApi
from .errors import (
    ConfigurationError,
    Forbidden,
    GoodrepoError,
    InvalidConfig,
    StoreError,
    Unauthorized,
    UserExists,
)
from .repository import Repository
from .settings import Settings

log = logging.getLogger(__name__)

UNLIMITED_BODY = 1 << 62  # waitress has no "no limit"; no body comes near this
SERVER_REFUSAL = "goodrepo.server_refusal"
"""Environ key: ``(status, code, message)`` of a request the HTTP server refused before
reading it. Only the server sets it (a request header cannot: those become ``HTTP_*``)."""
COUNTERS = {
    **DEFAULT_COUNTERS,
    "response_cache_hits": "Metadata and latest answers served from the response cache.",
}


class GoodrepoApp:
    """The WSGI app of a goodrepo server, with handles on what it is built from.

    Attributes: ``repo`` (the :class:`Repository`), ``settings``, ``users``, ``keyring``,
    ``tokens``, ``registry`` (the Prometheus registry) and ``core`` (the app inside the
    middlewares).
    """

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        registry: CollectorRegistry,
        *,
        password_hasher: Any = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.registry = registry
        # Retired keys verify for as long as a token they signed may still be accepted.
        lifetime = settings.access_token_ttl + settings.jwt_leeway + 60
        self.keyring = KeyRing(repo.kv, token_lifetime=lifetime)
        self.users = Users(
            repo.kv,
            PasswordPolicy(min_length=settings.password_min_length),
            hasher=password_hasher,
        )
        self.tokens = TokenService(
            repo.kv,
            self.keyring,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=settings.access_token_ttl,
            refresh_ttl=settings.refresh_token_ttl,
            api_token_max_ttl=settings.api_token_max_ttl,
            leeway=settings.jwt_leeway,
        )
        self.keyring.current()  # a fresh data directory gets its first key now
        throttle = LoginThrottle.from_limit(settings.login_rate_limit)
        endpoints = [
            *AuthEndpoints(self.users, self.tokens, throttle).endpoints(),
            *AdminEndpoints(repo, self.users, self.keyring, self.tokens).endpoints(),
            Endpoint("GET", "/metrics", self._serve_metrics, scopes=None),
        ]
        self.core = JsonApi(endpoints, repo.wsgi_app(), lambda: repo.runtime.scope_implies)
        app: Callable[..., Any] = JWTAuthMiddleware(
            self.core,
            keys=self.keyring.verification_keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
            max_lifetime=settings.api_token_max_ttl + 86400,
            public_paths=(*DEFAULT_PUBLIC_PATHS, "/metrics"),
            allow_anonymous_read=settings.allow_anon_read,
            is_revoked=self._is_revoked,
        )
        try:
            app = self._ratelimit = RateLimitMiddleware(
                app,
                rules=[
                    Rule(
                        settings.login_rate_limit,
                        methods=["POST"],
                        path="/auth/login",
                        name="login",
                    )
                ],
                storage=settings.ratelimit_storage,
                trusted_proxies=settings.trusted_proxies,
            )
        except ValueError as err:  # what the settings cannot check: the storage's options
            where = settings._origin_of("ratelimit_storage")
            problem = settings.redact(str(err).removeprefix("storage: "))
            raise ConfigurationError(f"ratelimit_storage: {problem} (from {where})") from None
        app = HealthMiddleware(app, checks=self.readiness_checks())
        app = _ServerRefusals(app)
        app = CORSMiddleware(app, allow_origins=settings.cors_origins)
        app = SecurityHeadersMiddleware(app, hsts_max_age=settings.hsts or None)
        metrics = MetricsMiddleware(app, registry=registry, path=None, counters=COUNTERS)
        self._metrics_app = metrics.metrics_app
        self.wsgi = RequestIDMiddleware(metrics)
        self._metrics_allow = [
            ipaddress.ip_network(a, strict=False) for a in settings.metrics_allow
        ]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.wsgi(environ, start_response)

    def _is_revoked(self, claims: dict[str, Any]) -> bool:
        """API tokens revoked early; any token of a user deleted or disabled; access tokens
        issued before the user's last password change, disabling or re-creation."""
        if self.tokens.is_revoked(claims):
            return True
        try:
            floor = self.users.session_floor(str(claims.get("sub", "")))
        except GoodrepoError:
            return True
        if claims.get("typ") == "api":
            return False  # API tokens live by their own record (checked above)
        # Our tokens carry the exact issue time; one with whole seconds only (from an
        # earlier version) counts as issued at the start of its second.
        return bool(claims.get("iat", 0) < floor)

    def readiness_checks(self) -> dict[str, Callable[[], object]]:
        """KV read/write, every blob store writable, free disk above the threshold."""
        checks: dict[str, Callable[[], object]] = {"kv": self.repo.kv.check}

        def blobs() -> None:
            for store in self.repo.runtime.blob_stores.values():
                store.check()

        def disk() -> None:
            threshold = self.settings.min_free_disk
            for name, store in self.repo.runtime.blob_stores.items():
                free = store.free_bytes()
                if free < threshold:
                    raise StoreError(f"blob store {name}: {free} bytes free, below {threshold}")

        checks["blob_stores"] = blobs
        if self.settings.min_free_disk > 0:
            checks["disk"] = disk
        return checks

    def _serve_metrics(self, req: ApiRequest) -> Any:
        # /metrics is a public path of the auth middleware, so that the address allow-list
        # and the static metrics token work: a bearer JWT is verified here instead.
        header = req.request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        secret = self.settings.metrics_token
        if token and secret and hmac.compare_digest(token.encode(), secret.encode()):
            return self._metrics_app
        if token:
            claims = self.tokens.verify(token)  # 401 for a bad token
            if self._is_revoked(claims):
                raise Unauthorized("the token has been revoked")
            if "admin" in (claims.get("scopes") or ()):
                return self._metrics_app
            raise Forbidden("metrics need the admin scope")
        if self._metrics_allow:
            try:
                addr = ipaddress.ip_address(req.client)
            except ValueError:
                addr = None
            if addr is not None and any(addr in net for net in self._metrics_allow):
                return self._metrics_app
        raise Unauthorized("metrics need the admin scope or an allowed address")

    def bootstrap_admin(self) -> str | None:
        """Create the ``admin`` user on a store without users; returns a generated password.

        The password is ``settings.admin_password`` when set (nothing is returned then),
        else a fresh random one, returned so that the caller can show it once.
        """
        rows, _ = self.users.list(limit=1)
        if rows:
            return None
        password = self.settings.admin_password
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(18)
        try:
            self.users.create("admin", password, ["admin"])
        except UserExists:
            return None
        log.info("created the admin user")
        return generated

    def maintenance(self) -> None:
        """Housekeeping: drop expired refresh tokens and API-token records, and retired
        signing keys past their last use. ``goodrepo serve`` runs it hourly."""
        purged = self.tokens.purge_expired()
        pruned = self.keyring.prune()
        log.info(
            "maintenance: %d expired token records, %d retired keys removed", purged, len(pruned)
        )

    def request_body_limit(self) -> int:
        """The ``max_request_body_size`` to give waitress for this repository's schema.

        waitress refuses a body of that many bytes or more before the app sees it, so this
        is one byte over the largest body the app accepts: a blob of the largest
        ``max_blob_bytes`` of the blob stores, or a schema for ``PUT /admin/config`` if
        that is larger. A store without ``max_blob_bytes`` accepts any size, and then so
        does the server. The schema of the moment counts: ``goodrepo serve`` reads it at
        start and again after every schema swap.
        """
        stores = self.repo.schema["storage"]["blob_stores"].values()
        limits = [store.get("max_blob_bytes") for store in stores]
        if not all(limits):
            return UNLIMITED_BODY
        return max([*limits, MAX_SCHEMA_BYTES]) + 1

    def close(self) -> None:
        """Close the repository and the rate limiter's storage connections (Redis)."""
        try:
            self._ratelimit.close()
        finally:
            self.repo.close()


class _ServerRefusals:
    """Answers a request carrying :data:`SERVER_REFUSAL` with that error; passes on the rest."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        refusal = environ.get(SERVER_REFUSAL)
        if refusal is None:
            return self.app(environ, start_response)
        status, code, message = refusal
        return error_response(environ, status, code, message)(environ, start_response)


def create_app(
    settings: Settings | None = None,
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    repository: Repository | None = None,
    registry: CollectorRegistry | None = None,
    password_hasher: Any = None,
    **overrides: Any,
) -> GoodrepoApp:
    """Build the standard stack around a repository and return its WSGI app.

    Settings come from ``settings`` if given, else from defaults < ``config_file`` (TOML)
    < ``GOODREPO_*`` environment variables (``env``, default ``os.environ``) <
    ``overrides``. ``repository`` defaults to
    ``Repository.open(settings.data, schema=settings.schema_file)``, with the schema file
    read and validated first: :class:`~goodrepo.errors.ConfigurationError` when it cannot
    be read, :class:`~goodrepo.errors.InvalidConfig` naming it when it is rejected, and no
    data directory is created then. ``registry`` is the Prometheus registry (a fresh one by
    default).
    """
    if settings is None:
        settings = Settings.load(config_file=config_file, env=env, **overrides)
    elif overrides or config_file or env is not None:
        raise TypeError("pass either settings or config_file/overrides, not both")
    repo = repository or Repository.open(settings.data, schema=_seed_schema(settings))
    try:
        return GoodrepoApp(
            settings, repo, registry or CollectorRegistry(), password_hasher=password_hasher
        )
    except BaseException:
        if repository is None:
            repo.close()
        raise


def _seed_schema(settings: Settings) -> dict[str, Any] | None:
    """The validated schema of ``settings.schema_file`` (None for the built-in one)."""
    path = settings.schema_file
    if path is None:
        return None
    try:
        return schema_mod.load_file(path)
    except OSError as err:
        raise ConfigurationError(
            f"schema_file: cannot read {path}: {err.strerror or err}"
        ) from err
    except InvalidConfig as err:
        count = len(err.problems)
        raise InvalidConfig(
            err.problems, f"schema file {path} rejected with {count} problem(s)"
        ) from err
