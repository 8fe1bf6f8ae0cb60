"""A stack composed by hand from the middlewares around the repository core.

Instead of :func:`goodrepo.create_app`, this wraps ``Repository.open(data).wsgi_app()``
(the core: the schema's artifact routes, no accounts) in four middlewares, outermost
first::

    RequestIDMiddleware        X-Request-ID on every answer, one JSON access-log line
    SecurityHeadersMiddleware  nosniff, Referrer-Policy, X-Frame-Options
    HealthMiddleware           /health, /health/live, /health/ready (checks repo.check)
    JWTAuthMiddleware          HS256 bearer tokens verified with one static key
    core                       the artifact routes; scopes come from the token

There is no login, no user store, no rate limit, no CORS and no metrics: tokens are
minted by whoever holds the key. The key comes from the ``CUSTOM_STACK_JWT_KEY``
environment variable (at least 32 bytes: the auth middleware refuses shorter HS256 keys)
and is known by the key id ``static``. A token carries ``sub``, ``scopes`` (``read``,
``write``, ``admin``), ``iat``, ``exp`` and ``jti``.

Run it (after ``pip install .``)::

    export CUSTOM_STACK_JWT_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
    python examples/custom_stack.py --port 8080 --data ./data

Try it::

    TOKEN=$(python examples/custom_stack.py --mint-token alice --scopes read,write)
    echo hello > app.tar.gz
    curl -X PUT --data-binary @app.tar.gz -H "Authorization: Bearer $TOKEN" \\
      localhost:8080/v1/acme/app/1.0.0/linux-amd64/blob
    curl -H "Authorization: Bearer $TOKEN" localhost:8080/v1/acme/app/latest
    curl -i localhost:8080/v1/acme/app/latest        # 401, WWW-Authenticate: Bearer ...
    curl localhost:8080/health/ready
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt
import waitress

from goodrepo import Repository
from goodrepo.errors import StoreError
from middleware.auth import JWTAuthMiddleware
from middleware.health import HealthMiddleware
from middleware.jsonlog import configure_json_logging
from middleware.request_id import RequestIDMiddleware
from middleware.security_headers import SecurityHeadersMiddleware

KEY_ENV = "CUSTOM_STACK_JWT_KEY"
KEY_ID = "static"
ALGORITHM = "HS256"
MIN_KEY_BYTES = 32


def make_app(repo: Repository, *, jwt_key: str | bytes, allow_anonymous_read: bool = False) -> Any:
    """The hand-made stack around ``repo``'s core app, verifying tokens with ``jwt_key``.

    ``allow_anonymous_read`` lets GET and HEAD without a token act with scope ``read``.
    The caller owns ``repo`` and closes it. ``ValueError`` for a key that is too short.
    """
    app: Any = repo.wsgi_app()
    app = JWTAuthMiddleware(
        app,
        keys={KEY_ID: jwt_key},
        algorithms=[ALGORITHM],
        public_paths=(),  # no login endpoint here; the probes are answered further out
        allow_anonymous_read=allow_anonymous_read,
    )
    app = HealthMiddleware(app, checks={"repository": repo.check})
    app = SecurityHeadersMiddleware(app)
    return RequestIDMiddleware(app)


def mint_token(
    jwt_key: str | bytes, sub: str, scopes: Iterable[str] = ("read",), ttl: int = 900
) -> str:
    """A token for ``sub`` with ``scopes``, valid for ``ttl`` seconds, signed with the key."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "scopes": sorted(set(scopes)),
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, jwt_key, algorithm=ALGORITHM, headers={"kid": KEY_ID})


def _raise_interrupt(signum: int, frame: Any) -> None:
    # waitress stops its loop on KeyboardInterrupt: treat SIGTERM like Ctrl-C, once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the custom stack, or print a token with ``--mint-token``; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=f"goodrepo's core in a hand-made middleware stack; the JWT key comes "
        f"from ${KEY_ENV}."
    )
    parser.add_argument("--data", default="./data", help="data directory (default ./data)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--anonymous-read", action="store_true", help="let GET/HEAD without a token read"
    )
    parser.add_argument("--mint-token", metavar="SUB", help="print a token for SUB and exit")
    parser.add_argument("--scopes", default="read", help="scopes of the minted token (read)")
    parser.add_argument("--ttl", type=int, default=900, help="lifetime of the token (900 s)")
    args = parser.parse_args(argv)

    key = os.environ.get(KEY_ENV, "")
    if len(key.encode()) < MIN_KEY_BYTES:
        print(f"set {KEY_ENV} to a secret of at least {MIN_KEY_BYTES} bytes", file=sys.stderr)
        return 2
    if args.mint_token:
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        print(mint_token(key, args.mint_token, scopes, args.ttl))
        return 0

    try:
        repo = Repository.open(args.data)
    except StoreError as err:  # e.g. another process holds the data directory
        print(f"cannot open the repository: {err.message}", file=sys.stderr)
        return 1
    configure_json_logging("INFO")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app = make_app(repo, jwt_key=key, allow_anonymous_read=args.anonymous_read)
        waitress.serve(app, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass  # a stop signal before waitress started
    finally:
        repo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
