"""The KV store's transactions and logs, and the persisted version index."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from goodrepo.errors import GoodrepoError, InvalidRequest, ValidationError
from goodrepo.storage import events as events_mod
from goodrepo.storage.events import EventLog
from goodrepo.storage.index import VersionIndex
from goodrepo.storage.kv import KV
from goodrepo.versions import get_scheme


def test_transaction_commits_atomically_or_not_at_all(kv: KV) -> None:
    with kv.transaction() as txn:
        txn.put_json(b"d:a", 1)
        txn.put_json(b"d:b", 2)
        assert txn.get_json(b"d:a") == 1  # reads its own writes
        assert kv.get_json(b"d:a") is None  # nobody else sees them yet
    assert (kv.get_json(b"d:a"), kv.get_json(b"d:b")) == (1, 2)
    with pytest.raises(RuntimeError), kv.transaction() as txn:
        txn.put_json(b"d:c", 3)
        raise RuntimeError("boom")
    assert kv.get_json(b"d:c") is None


def test_cas_put_has_one_winner_under_threads(kv: KV) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(50)

    def contender(i: int) -> None:
        barrier.wait()
        with kv.transaction() as txn:
            if txn.cas_put_json(b"d:x", {"by": i}) is None:
                winners.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert kv.get_json(b"d:x") == {"by": winners[0]}


def test_scan_bounds_and_direction(kv: KV) -> None:
    with kv.transaction() as txn:
        for k in [b"p:a", b"p:b", b"p:c", b"q:a"]:
            txn.put_json(k, k.decode())
    assert [k for k, _ in kv.scan(b"p:")] == [b"p:a", b"p:b", b"p:c"]
    assert [k for k, _ in kv.scan(b"p:", reverse=True, limit=2)] == [b"p:c", b"p:b"]
    assert [k for k, _ in kv.scan(b"p:", start=b"p:a")] == [b"p:b", b"p:c"]
    assert [k for k, _ in kv.scan(b"p:", start=b"p:c", reverse=True)] == [b"p:b", b"p:a"]


def test_event_seq_survives_restart(tmp_path: Path) -> None:
    kv = KV(tmp_path / "kv")
    log = EventLog(kv)
    for i in range(3):
        with kv.transaction() as txn:
            log.emit(txn, "x", {"i": i})
    kv.close()
    kv = KV(tmp_path / "kv")
    log = EventLog(kv)
    with kv.transaction() as txn:
        log.emit(txn, "x", {"i": 3})
    events, nxt = log.read(0, 10)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert nxt == 4 and log.last_seq() == 4
    assert kv.durable_seq(b"e:") == 4  # commit returns only once its batch is synced
    assert len({e["event_id"] for e in events}) == 4
    assert log.read(2, 1)[0][0]["seq"] == 3
    kv.close()


def test_event_seq_is_in_commit_order_under_threads(kv: KV) -> None:
    log = EventLog(kv)

    def writer(i: int) -> None:
        for j in range(20):
            with kv.transaction() as txn:
                txn.put_json(f"d:{i}:{j}".encode(), j)
                log.emit(txn, "x", {"i": i, "j": j})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events, _ = log.read(0, 1000)
    assert [e["seq"] for e in events] == list(range(1, 161))


def test_event_times_grow_with_seq(kv: KV, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(kv)
    with kv.transaction() as first:
        log.emit(first, "x", {"n": 1})
        time.sleep(0.005)
        with kv.transaction() as second:  # began later, commits first
            log.emit(second, "x", {"n": 2})
    # The clock steps back (a correction): the next event is not dated before the last.
    monkeypatch.setattr(events_mod, "now_iso8601", lambda: "2000-01-01T00:00:00.000Z")
    with kv.transaction() as third:
        log.emit(third, "x", {"n": 3})
    with kv.transaction() as fourth:  # and after a restart
        EventLog(kv).emit(fourth, "x", {"n": 4})
    events, _ = log.read(0, 10)
    assert [e["payload"]["n"] for e in events] == [2, 1, 3, 4]
    times = [e["at"] for e in events]
    assert times == sorted(times) and times[3] == times[2] == times[1]


def _row(name: str, version: str, variant: str = "linux") -> dict[str, str]:
    return {"namespace": "acme", "name": name, "version": version, "variant": variant}


def test_version_index(kv: KV) -> None:
    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    with kv.transaction() as txn:
        for v in ["1.0.0", "1.10.0", "1.9.0", "2.0.0-rc.1"]:
            idx.put(txn, _row("app", v))
        idx.put(txn, _row("app", "1.9.0", "windows"))
        idx.put(txn, _row("lib", "0.1.0"))
    assert idx.latest(["acme", "app"])["version"] == "1.10.0"
    assert idx.latest(["acme", "app"], prerelease=True)["version"] == "2.0.0-rc.1"
    assert idx.latest(["acme", "app"], variant="windows")["version"] == "1.9.0"
    assert idx.latest(["acme", "nope"]) is None
    rows, nxt = idx.versions(["acme", "app"], limit=3)
    assert [(r["version"], r["variant"]) for r in rows] == [
        ("2.0.0-rc.1", "linux"),
        ("1.10.0", "linux"),
        ("1.9.0", "windows"),
    ]
    rows, nxt = idx.versions(["acme", "app"], limit=3, cursor=nxt)
    assert [(r["version"], r["variant"]) for r in rows] == [("1.9.0", "linux"), ("1.0.0", "linux")]
    assert nxt is None
    assert idx.count(["acme", "app"]) == 5
    assert idx.groups(["acme"], limit=10) == ([("app", 5), ("lib", 1)], None)
    assert idx.groups([], limit=10) == ([("acme", 2)], None)
    assert idx.groups(["acme"], limit=10, name_prefix="l") == ([("lib", 1)], None)
    page, cursor = idx.groups(["acme"], limit=1)
    assert page == [("app", 5)]
    assert idx.groups(["acme"], limit=1, cursor=cursor) == ([("lib", 1)], None)


def test_index_delete_updates_counts(kv: KV) -> None:
    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    with kv.transaction() as txn:
        idx.put(txn, _row("app", "1.0.0"))
        assert idx.put(txn, _row("app", "1.0.0")) is False  # replacing is not new
    with kv.transaction() as txn:
        assert idx.delete(txn, _row("app", "1.0.0")) is True
        assert idx.delete(txn, _row("app", "1.0.0")) is False
    assert idx.latest(["acme", "app"]) is None
    assert idx.groups([], limit=10) == ([], None)


def test_bad_cursor(kv: KV) -> None:
    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    with pytest.raises(InvalidRequest):
        idx.versions(["acme", "app"], limit=1, cursor="***")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"namespace": "a\x00b", "name": "c"}, "namespace"),  # would share keys with a/b\x00c
        ({"namespace": "acme", "name": "caf\u00e9"}, "name"),
        ({"namespace": "acme", "name": None}, "name"),
        ({"namespace": "acme", "name": "app", "variant": 7}, "variant"),
        ({"namespace": "acme", "name": "app", "variant": None}, "variant"),
        ({"namespace": "acme", "name": "app", "version": None}, "version"),
    ],
)
def test_index_key_parts_are_printable_ascii_text(
    kv: KV, row: dict[str, object], field: str
) -> None:
    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    row = {"version": "1.0.0", "variant": "linux", **row}
    with kv.transaction() as txn, pytest.raises(ValidationError) as caught:
        idx.put(txn, row)
    assert caught.value.details == {"field": field}
    if field != "version" and row["variant"] is not None:  # None: any variant
        with pytest.raises(ValidationError):
            idx.latest([row["namespace"], row["name"]], variant=row["variant"])  # type: ignore[arg-type]
    assert list(kv.scan(b"")) == []


def test_an_index_row_that_is_not_an_object_is_a_schema_fault(kv: KV) -> None:
    idx = VersionIndex(kv, "versions", get_scheme("semver"), ["namespace", "name"])
    with kv.transaction() as txn, pytest.raises(GoodrepoError, match="not an object"):
        idx.put(txn, "sha256:00")  # type: ignore[arg-type]
