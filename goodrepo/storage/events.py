"""The append-only event log: every write that changes the repository records an event.

Events are appended in the same atomic commit as the write they describe, with a ``seq``
handed out at commit time, so the log is in commit order and ``seq`` strictly increases,
across restarts too (the next ``seq`` is found from the last stored key when the store
opens). Followers read it with :meth:`EventLog.read` and apply events by ``event_id``.

Usage::

    events = EventLog(kv)
    with kv.transaction() as txn:
        events.emit(txn, "artifact.published", {"namespace": "acme"})
    events.read(after=0, limit=100)
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from typing import Any

from .kv import KV, Transaction, loads, seq_key

PREFIX = b"e:"


def now_iso8601() -> str:
    """The current UTC time as an RFC 3339 timestamp with milliseconds and ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    """Append-only log of repository events stored in the KV under ``e:``."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        newest = [loads(value)["at"] for _, value in kv.scan(PREFIX, reverse=True, limit=1)]
        self._last_at: str = newest[0] if newest else ""

    def emit(self, txn: Transaction, type_: str, payload: dict[str, Any]) -> None:
        """Append an event to ``txn``; it gets its ``seq`` when the transaction commits."""
        # A random (version 4) UUID from ``random``, which reseeds after fork, not from
        # ``uuid4``: its ``os.urandom`` call releases the GIL, which costs a threaded
        # server more than it is worth. An event ID must be unique, not secret.
        event_id = str(uuid.UUID(int=random.getrandbits(128), version=4))

        def build(seq: int) -> dict[str, Any]:
            # Stamped as the transaction commits, which hands out seqs in order, and never
            # before the event ahead of it: ``at`` grows with ``seq``, even when another
            # transaction began first or the clock steps back.
            at = self._last_at = max(now_iso8601(), self._last_at)
            return {"seq": seq, "event_id": event_id, "type": type_, "payload": payload, "at": at}

        txn.append(PREFIX, build)

    def read(self, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """Events with ``seq > after``, oldest first, and the ``seq`` to ask after next.

        Only durable events are listed: a follower never applies an event that a crash of
        this machine could still take back.
        """
        durable = self.kv.durable_seq(PREFIX)
        start = seq_key(PREFIX, after) if after > 0 else None
        events = [
            event
            for event in (loads(v) for _, v in self.kv.scan(PREFIX, start=start, limit=limit))
            if event["seq"] <= durable
        ]
        return events, (events[-1]["seq"] if events else after)

    def last_seq(self) -> int:
        """The ``seq`` of the newest event (0 when the log is empty)."""
        return self.kv.next_seq(PREFIX) - 1
