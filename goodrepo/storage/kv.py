"""The embedded key-value store: one RocksDB (through rocksdict) per data directory.

Keys are bytes, values are JSON documents encoded as UTF-8. Writes that matter go through
:class:`Transaction`: staged, then applied atomically as one ``WriteBatch``, then made
durable by a sync of the WAL before ``commit`` returns, so a write that acknowledges a
publish is durable before the answer is sent. The sync runs outside the commit lock and
without the GIL, and one sync covers every batch applied before it (group commit).
Readers that take no lock may see a batch between its apply and its sync; the event log
hides such entries from followers (:meth:`KV.durable_seq`).

Concurrency: a transaction locks exactly the keys it reads or writes (``lock=True`` reads,
every write), and holds them until its commit is durable or it aborts. Unrelated
transactions never wait for each other except for the short, serialised apply of the
batch itself, which also hands out the sequence numbers of append-only logs so that they
appear in commit order.

Usage::

    kv = KV(tmp_path / "kv")
    with kv.transaction() as txn:
        if txn.get_json(b"d:x", lock=True) is None:
            txn.put_json(b"d:x", {"a": 1})
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    DbClosedError,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from ..errors import StoreError

log = logging.getLogger(__name__)

# What a call gets from a database another thread is closing, or has closed.
_CLOSING_ERRORS = (RuntimeError, DbClosedError)

LOCK_TIMEOUT = 30.0
_SEQ_WIDTH = 8


# One encoder for every document: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    """Encode a JSON document the one way the store writes them."""
    return _ENCODER.encode(value).encode("utf-8")


def loads(raw: bytes | None) -> Any:
    """Decode a stored JSON document; ``None`` stays ``None``."""
    return None if raw is None else json.loads(raw)


def _make_private_dir(path: Path) -> None:
    """Create ``path`` readable by its owner only, and make an existing one so: the store
    holds signing keys and password hashes, and RocksDB's files follow the umask."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as err:
        raise StoreError(f"cannot create the KV store directory {path}: {err.strerror}") from err


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return None


def seq_key(log_prefix: bytes, seq: int) -> bytes:
    """The key of entry ``seq`` of the append-only log stored under ``log_prefix``."""
    return log_prefix + seq.to_bytes(_SEQ_WIDTH, "big")


class _KeyLocks:
    """Per-key locks created on demand and dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[bytes, list[Any]] = {}  # key -> [lock, users]

    def acquire(self, key: bytes, timeout: float = LOCK_TIMEOUT) -> None:
        with self._mutex:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        if not entry[0].acquire(timeout=timeout):
            self._drop(key, entry)
            raise StoreError("timed out waiting for a lock on a record")

    def release(self, key: bytes) -> None:
        with self._mutex:
            entry = self._locks[key]
        entry[0].release()
        self._drop(key, entry)

    def _drop(self, key: bytes, entry: list[Any]) -> None:
        with self._mutex:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class KV:
    """A RocksDB database holding JSON documents under byte keys.

    ``path`` is created if missing. ``read_only=True`` opens a secondary instance (for
    followers and inspection tools) that never writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        # RocksDB's own info log: a few bounded files, not one more on every open.
        opts.set_keep_log_file_num(5)
        opts.set_max_log_file_size(8 << 20)
        try:
            if read_only:
                secondary = self.path.with_name(self.path.name + ".secondary")
                secondary.mkdir(parents=True, exist_ok=True)
                self._db = Rdict(
                    str(self.path), opts, access_type=AccessType.secondary(str(secondary))
                )
            else:
                _make_private_dir(self.path)
                self._db = Rdict(str(self.path), opts)
        except StoreError:
            raise
        except Exception as err:  # rocksdict raises plain Exception for open failures
            raise StoreError(f"cannot open the KV store: {err}") from err
        self._sync = WriteOptions()
        self._sync.sync = True
        self._locks = _KeyLocks()
        self._nosync = WriteOptions()
        self._commit_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # batches applied
        self._synced = 0  # batches known durable
        self._durable_log_next: dict[bytes, int] = {}
        self._log_next: dict[bytes, int] = {}
        self._closed = False
        self._close_lock = threading.Lock()

    # -- reads -------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The raw value under ``key``, or None."""
        try:
            value = self._db.get(key)
        except _CLOSING_ERRORS as err:
            self._raise_if_closed(err)
            raise
        return value if value is None else bytes(value)

    def get_json(self, key: bytes) -> Any:
        """The JSON document under ``key``, or None."""
        return loads(self.get(key))

    def scan(
        self,
        prefix: bytes,
        *,
        start: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` for keys starting with ``prefix``, in key order.

        ``start`` is an exclusive bound to resume after (forwards) or before (backwards),
        as returned in a cursor. ``limit`` bounds the number of rows read.
        """
        end = prefix_end(prefix)
        ropts = ReadOptions()
        if prefix:  # an empty lower bound makes rocksdict's raw-mode iterator invalid
            ropts.set_iterate_lower_bound(prefix)
        if end is not None:
            ropts.set_iterate_upper_bound(end)
        try:
            it = self._db.iter(ropts)
            # The bounds spare RocksDB work; the explicit checks below keep the contract even
            # where an iterator does not honour them (reverse seeks).
            if reverse:
                if start is not None:
                    it.seek_for_prev(start)
                    if it.valid() and bytes(it.key()) == start:
                        it.prev()
                elif end is not None:
                    it.seek_for_prev(end)
                    if it.valid() and bytes(it.key()) == end:
                        it.prev()
                else:
                    it.seek_to_last()
            else:
                if start is not None:
                    it.seek(start)
                    if it.valid() and bytes(it.key()) == start:
                        it.next()
                else:
                    it.seek(prefix)
            count = 0
            while it.valid() and (limit is None or count < limit):
                key = bytes(it.key())
                if not key.startswith(prefix):
                    break
                yield key, bytes(it.value())
                count += 1
                if reverse:
                    it.prev()
                else:
                    it.next()
        except _CLOSING_ERRORS as err:
            self._raise_if_closed(err)
            raise

    def last_key(self, prefix: bytes) -> bytes | None:
        """The greatest key starting with ``prefix``, or None (one seek)."""
        for key, _ in self.scan(prefix, reverse=True, limit=1):
            return key
        return None

    # -- writes ------------------------------------------------------------------------

    def transaction(self) -> Transaction:
        """Start a transaction; use it as a context manager or call commit/abort."""
        if self.read_only:
            raise StoreError("this KV store is opened read-only")
        return Transaction(self)

    def put_json(self, key: bytes, value: Any) -> None:
        """Write one document outside any transaction (durable on return)."""
        with self.transaction() as txn:
            txn.put_json(key, value)

    def next_seq(self, log_prefix: bytes) -> int:
        """The sequence number the next entry of a log will get."""
        with self._commit_lock:
            return self._peek_seq(log_prefix)

    def _peek_seq(self, log_prefix: bytes) -> int:
        nxt = self._log_next.get(log_prefix)
        if nxt is None:
            last = self.last_key(log_prefix)
            nxt = 1 if last is None else int.from_bytes(last[len(log_prefix) :], "big") + 1
            self._log_next[log_prefix] = nxt
            # What a new process finds on disk is as durable as it gets.
            self._durable_log_next.setdefault(log_prefix, nxt)
        return nxt

    def _write(
        self,
        staged: dict[bytes, bytes | None],
        appends: list[tuple[bytes, Callable[[int], Any]]],
    ) -> list[int]:
        """Commit one transaction's writes atomically and durably; returns its log seqs.

        The batch is applied under the commit lock (which also hands out log seqs, so
        logs are in commit order), then the WAL is synced outside it. One sync makes
        every batch written before it durable, so concurrent commits share syncs (group
        commit), and the sync runs without holding the GIL.
        """
        batch = WriteBatch(raw_mode=True)
        seqs: list[int] = []
        with self._commit_lock:
            taken: dict[bytes, int] = {}
            for log_prefix, build in appends:
                seq = taken.get(log_prefix) or self._peek_seq(log_prefix)
                batch.put(seq_key(log_prefix, seq), dumps(build(seq)))
                taken[log_prefix] = seq + 1
                seqs.append(seq)
            for key, value in staged.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            try:
                self._db.write(batch, self._nosync)
            except Exception as err:  # rocksdict raises plain Exception on I/O errors
                raise StoreError(f"KV write failed: {err}") from err
            self._log_next.update(taken)
            self._written += 1
            ticket = self._written
            horizon = dict(self._log_next)
        self._sync_through(ticket, horizon)
        return seqs

    def _sync_through(self, ticket: int, horizon: dict[bytes, int]) -> None:
        with self._sync_lock:
            if self._synced >= ticket:
                return  # a sync that started after our write covered it
            with self._commit_lock:
                target = self._written
                horizon = dict(self._log_next)
            try:
                self._db.flush_wal(True)
            except Exception as err:  # rocksdict raises plain Exception on I/O errors
                raise StoreError(f"KV sync failed: {err}") from err
            self._synced = target
            self._durable_log_next.update(horizon)

    def durable_seq(self, log_prefix: bytes) -> int:
        """The highest seq of a log known to be durable (synced, not only written)."""
        self.next_seq(log_prefix)  # loads the log's position from disk on first use
        return self._durable_log_next[log_prefix] - 1

    # -- maintenance -------------------------------------------------------------------

    def check(self) -> None:
        """Probe read and write; raises StoreError when the store cannot serve."""
        key = b"m:probe"
        self.put_json(key, {"ok": True})
        if self.get_json(key) != {"ok": True}:
            raise StoreError("KV probe read back a different value")

    def property_int(self, name: str) -> int | None:
        """An integer RocksDB property (``rocksdb.estimate-num-keys`` ...), O(1)."""
        return self._db.property_int_value(name)

    def catch_up(self) -> None:
        """For read-only instances: see what the primary wrote since."""
        self._db.try_catch_up_with_primary()

    def checkpoint(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent on-disk copy of the database to ``target`` (must not exist)."""
        from rocksdict import Checkpoint

        try:
            Checkpoint(self._db).create_checkpoint(str(target))
        except Exception as err:  # rocksdict raises plain Exception for I/O errors
            raise StoreError(f"cannot write a checkpoint: {err}") from err

    def close(self) -> None:
        """Close the database; safe to call twice. Any use from then on is a
        ``StoreError``; a call another thread has under way is waited for (up to
        ``LOCK_TIMEOUT``), or fails with that error."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            db, self._db = self._db, _ClosedDatabase()  # type: ignore[assignment]
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    db.close()
                    return
                except RuntimeError as err:  # "Already borrowed": a call under way
                    if time.monotonic() > deadline:
                        raise StoreError("cannot close the KV store: it stays in use") from err
                    time.sleep(0.01)

    def _raise_if_closed(self, err: BaseException) -> None:
        """After ``err`` from the database: the clear error if it was closed meanwhile."""
        if self._closed:
            raise StoreError("the KV store is closed") from err


class _ClosedDatabase:
    """Stands in for the database once it is closed: every use is a clear error."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError("the KV store is closed")


class Transaction:
    """Writes staged in one batch, committed atomically, with per-key locks.

    Reads see the transaction's own staged writes first. ``lock=True`` on a read takes the
    key's lock so that a check-then-write (compare-and-swap) cannot race.
    """

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self._staged: dict[bytes, bytes | None] = {}
        self._held: list[bytes] = []
        self._appends: list[tuple[bytes, Callable[[int], Any]]] = []
        self._after_commit: list[Callable[[], None]] = []
        self.done = False
        self.seqs: list[int] = []

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def lock(self, key: bytes) -> None:
        """Hold ``key``'s lock until commit or abort (idempotent)."""
        if key not in self._held:
            self._kv._locks.acquire(key)
            self._held.append(key)

    def get(self, key: bytes, *, lock: bool = False) -> bytes | None:
        """The value under ``key`` as this transaction sees it."""
        if lock:
            self.lock(key)
        if key in self._staged:
            return self._staged[key]
        return self._kv.get(key)

    def get_json(self, key: bytes, *, lock: bool = False) -> Any:
        return loads(self.get(key, lock=lock))

    def put(self, key: bytes, value: bytes, *, lock: bool = True) -> None:
        """Stage ``value`` under ``key``. ``lock=False`` only for a key that a lock this
        transaction already holds stands for (an index row's other copies)."""
        if lock:
            self.lock(key)
        self._staged[key] = value

    def put_json(self, key: bytes, value: Any) -> None:
        self.put(key, dumps(value))

    def delete(self, key: bytes) -> None:
        self.lock(key)
        self._staged[key] = None

    def cas_put_json(self, key: bytes, value: Any, *, if_absent: bool = True) -> Any:
        """Put ``value`` if ``key`` is absent; return the existing document otherwise.

        With ``if_absent=False`` the put is unconditional and the previous document (or
        None) is returned.
        """
        return self.cas_put(key, dumps(value), if_absent=if_absent)

    def cas_put(self, key: bytes, raw: bytes, *, if_absent: bool = True) -> Any:
        """:meth:`cas_put_json` with the document already encoded."""
        existing = self.get_json(key, lock=True)
        if existing is not None and if_absent:
            return existing
        self.put(key, raw)
        return existing

    def append(self, log_prefix: bytes, build: Callable[[int], Any]) -> None:
        """Append to a log at commit: ``build(seq)`` makes the entry once seq is known."""
        self._appends.append((log_prefix, build))

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the batch is durable (cache invalidation and the like)."""
        self._after_commit.append(fn)

    def commit(self) -> list[int]:
        """Write the batch atomically and durably; returns the log seqs it appended."""
        if self.done:
            raise StoreError("transaction already finished")
        try:
            if self._staged or self._appends:
                self.seqs = self._kv._write(self._staged, self._appends)
        finally:
            self.done = True
            self._release()
        for fn in self._after_commit:
            fn()
        return self.seqs

    def abort(self) -> None:
        """Discard every staged write."""
        if not self.done:
            self.done = True
            self._release()

    def _release(self) -> None:
        for key in reversed(self._held):
            self._kv._locks.release(key)
        self._held.clear()
