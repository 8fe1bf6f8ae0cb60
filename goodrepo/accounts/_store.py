"""The KV key space of accounts (everything under ``a:``), timestamps and pagination.

Keys (values are JSON documents)::

    a:user:<username>            a user: hash, scopes, disabled, dates
    a:keyring                    the key ring's head: current kid and a version counter
    a:key:<kid>                  one signing key: base64 secret, dates
    a:refresh:<sha256 hex>       one refresh token (stored hashed): user, family, expiry
    a:family:<username>:<fid>    one refresh-token family: its live token, expiry
    a:token:<id>                 one API token (never the token itself)

Usernames never contain ``:``, so ``a:family:<username>:`` is an exact prefix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from ..storage.index import b64url_decode, b64url_encode
from ..storage.kv import KV, loads

USER = b"a:user:"
KEYRING = b"a:keyring"
KEY = b"a:key:"
REFRESH = b"a:refresh:"
FAMILY = b"a:family:"
TOKEN = b"a:token:"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def user_key(username: str) -> bytes:
    return USER + username.encode("ascii")


def key_key(kid: str) -> bytes:
    return KEY + kid.encode("ascii")


def refresh_key(digest: str) -> bytes:
    return REFRESH + digest.encode("ascii")


def family_prefix(username: str) -> bytes:
    return FAMILY + username.encode("ascii") + b":"


def family_key(username: str, fid: str) -> bytes:
    return family_prefix(username) + fid.encode("ascii")


def token_key(token_id: str) -> bytes:
    return TOKEN + token_id.encode("ascii")


def isoformat(ts: float | None) -> str | None:
    """An epoch timestamp as RFC 3339 UTC text (``2026-01-31T12:00:00Z``), None stays."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def page(
    kv: KV,
    prefix: bytes,
    limit: int | None,
    cursor: str | None,
    render: Callable[[Any], dict[str, Any] | None],
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the documents under ``prefix``, in key order, and the next cursor.

    ``limit`` defaults to 100 and must lie in 1..1000; ``cursor`` is the opaque value a
    previous page returned. Both raise :class:`InvalidRequest` when malformed.
    ``render`` turns a document into the row shown, or None to leave it out.
    """
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    start = None if cursor is None else prefix + _decode_cursor(cursor)
    rows: list[dict[str, Any]] = []
    last: bytes | None = None
    for key, raw in kv.scan(prefix, start=start):
        if len(rows) == limit and last is not None:
            return rows, b64url_encode(last[len(prefix) :])
        last = key
        row = render(loads(raw))
        if row is not None:
            rows.append(row)
    return rows, None


def _decode_cursor(cursor: str) -> bytes:
    try:
        raw = b64url_decode(cursor)
    except ValueError as err:
        raise InvalidRequest("malformed cursor") from err
    if not raw or len(raw) > 256 or not raw.isascii() or b":" in raw:
        raise InvalidRequest("malformed cursor")
    return raw
