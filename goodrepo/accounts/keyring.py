"""The key ring: HS256 signing secrets in the KV, rotated without breaking live tokens.

Each key is ``a:key:<kid>`` ``{"kid", "secret" (base64, 256 bits or more), "created_at",
"retired_at", "keep_until", "lifetime"}``; the head ``a:keyring`` names the current kid
and carries a version counter bumped by every change. New tokens are signed with the
current key. :meth:`KeyRing.rotate` makes a new current key and retires the old one,
which keeps verifying until every token it signed has expired: the longest access-token
lifetime after its retirement, or later when an API token signed with it lives longer
(``keep_until``, raised by the token service). Then it is pruned. That lifetime is the
longest ``token_lifetime`` of any key ring that signed with the key (``lifetime``,
recorded when it first signs), so lowering the access-token lifetime across a restart
does not cut short the tokens signed before.

The auth middleware asks for :meth:`KeyRing.verification_keys` on every request, so the
ring is cached in memory and re-read only when the head's version changed, looked at no
more than once per ``refresh_interval`` seconds.

Usage::

    ring = KeyRing(kv)
    key = ring.current()             # Key(kid=..., secret=b"...")
    ring.rotate()                    # -> the new kid
    keys = ring.verification_keys()  # {kid: secret}
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from ..storage.kv import KV, Transaction, loads
from . import _store

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Key:
    """One signing key; the secret never appears in a repr."""

    kid: str
    secret: bytes = field(repr=False)
    created_at: float
    retired_at: float | None = None
    keep_until: float = 0.0
    lifetime: float = 0.0

    def expires_at(self, token_lifetime: float) -> float | None:
        """When this key stops verifying (None while it is current)."""
        if self.retired_at is None:
            return None
        return max(self.retired_at + max(token_lifetime, self.lifetime), self.keep_until)


@dataclass(frozen=True)
class _Snapshot:
    version: int
    current: str | None
    keys: dict[str, Key]
    checked: float  # monotonic time of the last look at the head


class KeyRing:
    """HS256 secrets with a current key, retired keys and an in-memory cache.

    ``token_lifetime`` is the longest access-token lifetime plus clock leeway (retired
    keys verify that long after retirement); ``refresh_interval`` bounds how stale the
    cache may be when another process changes the ring; ``secret_bytes`` (>= 32) sizes
    new secrets; ``clock`` gives epoch seconds.

    Usage::

        ring = KeyRing(kv, token_lifetime=900 + 30)
        kid = ring.rotate()
    """

    def __init__(
        self,
        kv: KV,
        *,
        token_lifetime: float = 900 + 60,
        refresh_interval: float = 2.0,
        secret_bytes: int = MIN_SECRET_BYTES,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if secret_bytes < MIN_SECRET_BYTES:
            raise ValueError(f"secret_bytes must be at least {MIN_SECRET_BYTES}")
        self.kv = kv
        self.token_lifetime = token_lifetime
        self.refresh_interval = refresh_interval
        self.secret_bytes = secret_bytes
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None

    # -- reads -------------------------------------------------------------------------

    def current(self) -> Key:
        """The key new tokens are signed with (created on a fresh store)."""
        snap = self._snapshot()
        if snap.current is None or snap.current not in snap.keys:
            self._write(self._create_first)
            snap = self._snapshot(force=True)
        if snap.current is None or snap.current not in snap.keys:
            raise StoreError("the key ring has no current key")
        key = snap.keys[snap.current]
        if key.lifetime < self.token_lifetime and not self.kv.read_only:
            # Tokens this ring signs may outlive what the key records: record it first.
            self._write(self._record_lifetime)
            return self.current()
        return key

    def verification_keys(self) -> dict[str, bytes]:
        """``{kid: secret}`` of every key that may still verify a live token (cheap)."""
        now = self.clock()
        return {k.kid: k.secret for k in self._snapshot().keys.values() if self._live(k, now)}

    def public_list(self) -> list[dict[str, Any]]:
        """Key ids and dates, oldest first, without secrets."""
        snap = self._snapshot()
        now = self.clock()
        keys = sorted((k for k in snap.keys.values() if self._live(k, now)), key=_age)
        return [
            {
                "kid": k.kid,
                "created_at": _store.isoformat(k.created_at),
                "retired_at": _store.isoformat(k.retired_at),
                "current": k.kid == snap.current,
            }
            for k in keys
        ]

    # -- writes ------------------------------------------------------------------------

    def rotate(self, *, revoke_previous: bool = False) -> str:
        """Make a new current key; returns its kid.

        The previous key retires and keeps verifying the tokens it signed, unless
        ``revoke_previous`` (for a leaked key): then it is deleted and every token it
        signed stops working at once. Expired retired keys are pruned.
        """

        def change(txn: Transaction, head: dict[str, Any], now: float) -> None:
            old = head.get("current")
            if old is not None:
                doc = txn.get_json(_store.key_key(old), lock=True)
                if doc is not None and revoke_previous:
                    txn.delete(_store.key_key(old))
                elif doc is not None:
                    txn.put_json(_store.key_key(old), dict(doc, retired_at=now))
            head["current"] = self._new_key(txn, now)

        head = self._write(change)
        log.info("signing key rotated: new kid %s", head["current"])
        if revoke_previous:
            log.warning("previous signing key revoked: tokens it signed no longer verify")
        self.prune()
        return str(head["current"])

    def prune(self) -> list[str]:
        """Delete retired keys past their last use; returns their kids."""
        now = self.clock()
        snap = self._snapshot(force=True)
        dead = [k.kid for k in snap.keys.values() if not self._live(k, now)]
        if dead and not self.kv.read_only:

            def change(txn: Transaction, head: dict[str, Any], now: float) -> None:
                for kid in dead:
                    txn.delete(_store.key_key(kid))

            self._write(change)
            log.info("pruned expired signing keys: %s", ", ".join(dead))
        return dead

    def keep_until(self, txn: Transaction, kid: str, until: float) -> None:
        """In ``txn``: keep key ``kid`` verifying at least until ``until`` (epoch).

        The token service calls this when it signs a long-lived API token.
        """
        # Locks in the order every writer of the ring takes them: head, then keys.
        head = txn.get_json(_store.KEYRING, lock=True) or {"version": 0, "current": None}
        doc = txn.get_json(_store.key_key(kid), lock=True)
        if doc is not None and until > doc.get("keep_until", 0):
            txn.put_json(_store.key_key(kid), dict(doc, keep_until=until))
            txn.put_json(_store.KEYRING, dict(head, version=head["version"] + 1))
            txn.after_commit(self.invalidate)

    def invalidate(self) -> None:
        """Forget the cache: the next read looks at the KV."""
        self._snap = None

    # -- helpers -----------------------------------------------------------------------

    def _live(self, key: Key, now: float) -> bool:
        end = key.expires_at(self.token_lifetime)
        return end is None or now < end

    def _snapshot(self, *, force: bool = False) -> _Snapshot:
        snap = self._snap
        mono = self.monotonic()
        if snap is not None and not force and mono - snap.checked < self.refresh_interval:
            return snap
        with self._lock:
            head = self.kv.get_json(_store.KEYRING) or {"version": 0, "current": None}
            snap = self._snap
            if snap is not None and snap.version == head["version"] and not force:
                snap = _Snapshot(snap.version, snap.current, snap.keys, mono)
            else:
                snap = _Snapshot(head["version"], head.get("current"), self._read_keys(), mono)
            self._snap = snap
            return snap

    def _read_keys(self) -> dict[str, Key]:
        keys = {}
        for _, raw in self.kv.scan(_store.KEY):
            doc = loads(raw)
            keys[doc["kid"]] = Key(
                kid=doc["kid"],
                secret=base64.b64decode(doc["secret"]),
                created_at=doc["created_at"],
                retired_at=doc.get("retired_at"),
                keep_until=doc.get("keep_until", 0.0),
                lifetime=doc.get("lifetime", 0.0),
            )
        return keys

    def _write(self, change: Callable[[Transaction, dict[str, Any], float], None]) -> Any:
        """Apply ``change`` to the head in one transaction and bump its version."""
        with self.kv.transaction() as txn:
            head = txn.get_json(_store.KEYRING, lock=True) or {"version": 0, "current": None}
            change(txn, head, self.clock())
            head["version"] += 1
            txn.put_json(_store.KEYRING, head)
        self.invalidate()
        return head

    def _create_first(self, txn: Transaction, head: dict[str, Any], now: float) -> None:
        # Another thread or process may have created it while we waited for the lock.
        if head.get("current") is None or txn.get_json(_store.key_key(head["current"])) is None:
            head["current"] = self._new_key(txn, now)
            log.info("signing key created: kid %s", head["current"])

    def _record_lifetime(self, txn: Transaction, head: dict[str, Any], now: float) -> None:
        kid = head.get("current")
        if kid is None:
            return
        doc = txn.get_json(_store.key_key(kid), lock=True)
        if doc is not None and doc.get("lifetime", 0.0) < self.token_lifetime:
            txn.put_json(_store.key_key(kid), dict(doc, lifetime=self.token_lifetime))

    def _new_key(self, txn: Transaction, now: float) -> str:
        kid = secrets.token_hex(8)
        secret = base64.b64encode(secrets.token_bytes(self.secret_bytes)).decode("ascii")
        doc = {"kid": kid, "secret": secret, "created_at": now, "retired_at": None}
        txn.put_json(_store.key_key(kid), dict(doc, keep_until=0.0, lifetime=self.token_lifetime))
        return kid


def _age(key: Key) -> tuple[float, str]:
    return (key.created_at, key.kid)
