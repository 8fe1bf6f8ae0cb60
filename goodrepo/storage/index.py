"""Version indexes persisted in the KV, ordered by an order-preserving version encoding.

A version index groups rows (one per ``version``/``variant`` of a package) by the schema's
``group_by`` fields and keeps them in version order, so that "latest" and the newest-first
version list are bounded scans from the end of a prefix: their cost does not depend on how
many versions a package has. Every row is written under four sub-spaces so that each kind
of "latest" question is answered by the first row of one reverse scan:

``A``  all rows            group / version / variant
``S``  releases only       group / version / variant
``B``  all rows by variant group / variant / version
``T``  releases by variant group / variant / version

Group counters (``C``) hold, at each level of ``group_by``, how many children a group has:
versions per package, packages per namespace. They change in the same transaction as the
rows, under the transaction's key locks.

Usage::

    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    with kv.transaction() as txn:
        idx.put(txn, {"namespace": "acme", "name": "app", "version": "1.0.0", "variant": "x"})
    idx.latest(["acme", "app"])
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from ..errors import GoodrepoError, InvalidRequest, ValidationError
from ..versions import VersionScheme
from .kv import KV, Transaction, dumps, loads

SEP = b"\x00"


def _tag(scope: bytes) -> bytes:
    return hashlib.sha256(scope).digest()[:4]


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url, as cursors are written."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url text; ``ValueError`` for any other character or a
    form :func:`b64url_encode` would not write (so one cursor has one spelling)."""
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if b64url_encode(raw) != text:
        raise ValueError("not canonical unpadded base64url")
    return raw


def encode_cursor(key_suffix: bytes, scope: bytes) -> str:
    """An opaque cursor for the position after ``key_suffix`` in the listing ``scope``."""
    return b64url_encode(_tag(scope) + key_suffix)


def decode_cursor(cursor: str | None, scope: bytes) -> bytes | None:
    """The key suffix inside a cursor of listing ``scope``; INVALID_REQUEST for any other."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = b64url_decode(cursor)
    except ValueError as err:
        raise InvalidRequest("cursor is not valid", details={"field": "cursor"}) from err
    if len(raw) <= 4 or len(raw) > 1024 or raw[:4] != _tag(scope):
        raise InvalidRequest("cursor is not valid for this listing", details={"field": "cursor"})
    return raw[4:]


def scan_page(
    kv: KV, prefix: bytes, *, limit: int, cursor: str | None, reverse: bool = False
) -> tuple[list[tuple[bytes, Any]], str | None]:
    """One page of ``(key suffix, document)`` under ``prefix`` and the next cursor."""
    after = decode_cursor(cursor, prefix)
    start = prefix + after if after is not None else None
    rows = [
        (key[len(prefix) :], loads(value))
        for key, value in kv.scan(prefix, start=start, reverse=reverse, limit=limit + 1)
    ]
    next_cursor = encode_cursor(rows[limit - 1][0], prefix) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _part(field: str, value: Any) -> bytes:
    """``value`` as a part of an index key: printable ASCII text, VALIDATION_ERROR naming
    ``field`` otherwise (a NUL inside would let two groups share their keys)."""
    if not (isinstance(value, str) and value.isascii() and value.isprintable()):
        raise ValidationError(f"{field} must be printable ASCII text", details={"field": field})
    return value.encode("ascii")


class VersionIndex:
    """An ordered index of versioned rows, grouped by ``group_by`` fields."""

    def __init__(
        self,
        kv: KV,
        name: str,
        scheme: VersionScheme,
        group_by: Sequence[str],
        *,
        version_field: str = "version",
        variant_field: str = "variant",
    ) -> None:
        self.kv = kv
        self.name = name
        self.scheme = scheme
        self.group_by = tuple(group_by)
        self.version_field = version_field
        self.variant_field = variant_field
        self._base = b"i:" + name.encode("ascii") + SEP

    # -- keys ---------------------------------------------------------------------------

    def _group(self, values: Sequence[str]) -> bytes:
        return b"".join(_part(f, v) + SEP for f, v in zip(self.group_by, values, strict=False))

    def _space(self, kind: bytes, group: Sequence[str]) -> bytes:
        return self._base + kind + SEP + self._group(group)

    def _row_keys(self, row: dict[str, Any]) -> tuple[bytes, list[bytes]]:
        if not isinstance(row, dict):
            raise GoodrepoError("an index row is not an object (a schema fault)")
        group: list[Any] = [row.get(f) for f in self.group_by]  # checked by _part
        version = row.get(self.version_field)
        if not isinstance(version, str):
            raise ValidationError(
                f"{self.version_field} must be text", details={"field": self.version_field}
            )
        variant = _part(self.variant_field, row.get(self.variant_field))
        ver = self.scheme.encode(version)
        by_version = ver + SEP + variant
        by_variant = variant + SEP + ver
        primary = self._space(b"A", group) + by_version
        keys = [self._space(b"B", group) + by_variant]
        if not self.scheme.is_prerelease(version):
            keys.append(self._space(b"S", group) + by_version)
            keys.append(self._space(b"T", group) + by_variant)
        return primary, keys

    def _counter_key(self, group: Sequence[str]) -> bytes:
        return self._base + b"C" + bytes([len(group)]) + SEP + self._group(group)

    # -- writes (inside a transaction) --------------------------------------------------

    def has_rows(self) -> bool:
        """Whether the index holds any row."""
        return next(self.kv.scan(self._base, limit=1), None) is not None

    def has_row(self, row: dict[str, Any]) -> bool:
        """Whether a row with ``row``'s coordinates is stored."""
        return self.kv.get(self._row_keys(row)[0]) is not None

    def put(self, txn: Transaction, row: dict[str, Any]) -> bool:
        """Insert or replace ``row``; returns True when it is new."""
        primary, others = self._row_keys(row)
        created = txn.get(primary, lock=True) is None
        raw = dumps(row)
        txn.put(primary, raw)
        for key in others:
            # The other copies are made of the primary key's parts: its lock covers them.
            txn.put(key, raw, lock=False)
        if created:
            self._count(txn, [row[f] for f in self.group_by], +1)
        return created

    def delete(self, txn: Transaction, row: dict[str, Any]) -> bool:
        """Remove the row with ``row``'s coordinates; returns True when one was there."""
        primary, others = self._row_keys(row)
        if txn.get(primary, lock=True) is None:
            return False
        for key in [primary, *others]:
            txn.delete(key)
        self._count(txn, [row[f] for f in self.group_by], -1)
        return True

    def _count(self, txn: Transaction, group: list[str], delta: int) -> None:
        # Walk up the levels while a group appears (0 -> 1) or disappears (1 -> 0).
        for depth in range(len(group), 0, -1):
            key = self._counter_key(group[:depth])
            doc = txn.get_json(key, lock=True) or {"count": 0}
            before = doc["count"]
            doc["count"] = before + delta
            if doc["count"] <= 0:
                txn.delete(key)
            else:
                txn.put_json(key, doc)
            if not ((before == 0 and delta > 0) or (doc["count"] == 0 and delta < 0)):
                break

    # -- reads --------------------------------------------------------------------------

    def latest(
        self, group: Sequence[str], *, prerelease: bool = False, variant: str | None = None
    ) -> dict[str, Any] | None:
        """The row with the highest version in ``group`` (one seek, whatever the size)."""
        if variant is None:
            prefix = self._space(b"A" if prerelease else b"S", group)
        else:
            prefix = self._space(b"B" if prerelease else b"T", group)
            prefix += _part(self.variant_field, variant) + SEP
        for _, value in self.kv.scan(prefix, reverse=True, limit=1):
            return loads(value)
        return None

    def versions(
        self, group: Sequence[str], *, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Rows of ``group``, newest first, one page at a time."""
        rows, nxt = scan_page(
            self.kv, self._space(b"A", group), limit=limit, cursor=cursor, reverse=True
        )
        return [doc for _, doc in rows], nxt

    def count(self, group: Sequence[str]) -> int:
        """How many children ``group`` has (rows for a full group, sub-groups otherwise)."""
        doc = self.kv.get_json(self._counter_key(group))
        return doc["count"] if doc else 0

    def groups(
        self,
        parent: Sequence[str],
        *,
        limit: int,
        cursor: str | None = None,
        name_prefix: str = "",
    ) -> tuple[list[tuple[str, int]], str | None]:
        """Child groups of ``parent`` with their counts, in name order, paginated."""
        base = self._counter_key([*parent, ""])[:-1]  # counter keys one level down
        prefix = base + (_part(self.group_by[len(parent)], name_prefix) if name_prefix else b"")
        scope = prefix + b"\x00groups"
        after = decode_cursor(cursor, scope)
        start = base + after if after is not None else None
        rows = []
        for key, value in self.kv.scan(prefix, start=start, limit=limit + 1):
            rows.append((key[len(base) : -1], loads(value)["count"]))
        nxt = encode_cursor(rows[limit - 1][0] + SEP, scope) if len(rows) > limit else None
        return [(k.decode("ascii"), n) for k, n in rows[:limit]], nxt
