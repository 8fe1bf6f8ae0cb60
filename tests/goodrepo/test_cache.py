"""The response cache: bounds, TTL, LRU order, race-safe invalidation, threads."""

from __future__ import annotations

import random
import threading
import time

import pytest

from goodrepo.storage import cache as cache_mod
from goodrepo.storage.cache import ResponseCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_get_put_json_and_bytes(clock: Clock) -> None:
    cache = ResponseCache(clock=clock)
    hit, value, token = cache.get("k")
    assert (hit, value) == (False, None)
    assert cache.put("k", {"versions": ["1.0.0"], "n": 1}, token=token)
    assert cache.put("b", b"\x00raw")
    assert cache.get("k")[:2] == (True, {"versions": ["1.0.0"], "n": 1})
    assert cache.get("b")[:2] == (True, b"\x00raw")
    assert cache.stats() == {"hits": 2, "misses": 1, "entries": 2, "bytes": 28 + 4, "evictions": 0}


def test_values_are_not_shared(clock: Clock) -> None:
    cache = ResponseCache(clock=clock)
    value = {"a": [1]}
    cache.put("k", value)
    value["a"].append(2)
    got = cache.get("k")[1]
    got["a"].append(3)
    assert cache.get("k")[1] == {"a": [1]}


def test_ttl(clock: Clock) -> None:
    cache = ResponseCache(default_ttl=10, clock=clock)
    cache.put("default", 1)
    cache.put("short", 2, ttl=1)
    clock.now += 1
    assert cache.get("short")[0] is False
    assert cache.get("default")[0] is True
    clock.now += 9
    assert cache.get("default")[0] is False
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    assert not cache.put("zero", 3, ttl=0)
    assert not cache.put("inf", 3, ttl=float("inf"))


def test_lru_eviction_by_entries(clock: Clock) -> None:
    cache = ResponseCache(max_entries=3, clock=clock)
    for key in "abc":
        cache.put(key, key)
    cache.get("a")  # a is now the most recently used
    cache.put("d", "d")
    assert [k for k in "abcd" if cache.get(k)[0]] == ["a", "c", "d"]
    assert cache.stats()["evictions"] == 1


def test_eviction_by_bytes(clock: Clock) -> None:
    cache = ResponseCache(max_bytes=250, max_entry_bytes=100, clock=clock)
    for key in "abc":
        assert cache.put(key, b"x" * 100)
    assert [k for k in "abc" if cache.get(k)[0]] == ["b", "c"]
    assert cache.stats()["bytes"] == 200


def test_entry_size_limit(clock: Clock) -> None:
    cache = ResponseCache(max_entry_bytes=10, clock=clock)
    assert cache.put("k", b"x" * 10)
    assert not cache.put("k", b"x" * 11)
    assert cache.get("k")[0] is False  # the older value is not left behind
    assert not cache.put("j", "x" * 9)  # 11 bytes once JSON-encoded
    assert cache.stats()["bytes"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_entries": 0},
        {"max_bytes": 10, "max_entry_bytes": 11},
        {"default_ttl": 0},
        {"default_ttl": float("nan")},
    ],
)
def test_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ResponseCache(**kwargs)


def test_put_non_json_is_type_error() -> None:
    with pytest.raises(TypeError):
        ResponseCache().put("k", object())


def test_invalidate_prefix(clock: Clock) -> None:
    cache = ResponseCache(clock=clock)
    for key in ["v:acme/app", "v:acme/lib", "v:other/app", "latest:acme/app"]:
        cache.put(key, 1)
    assert cache.invalidate_prefix("v:acme/") == 2
    assert [k for k in ["v:acme/app", "v:other/app", "latest:acme/app"] if cache.get(k)[0]] == [
        "v:other/app",
        "latest:acme/app",
    ]
    cache.clear()
    assert cache.stats()["entries"] == 0


def test_put_after_covering_invalidation_is_refused(clock: Clock) -> None:
    """The race: a reader computes from old state while a writer commits and invalidates."""
    cache = ResponseCache(clock=clock)
    _, _, token = cache.get("latest:acme/app")  # reader misses, starts computing
    cache.invalidate_prefix("latest:acme/")  # writer commits, invalidates
    assert not cache.put("latest:acme/app", "stale", token=token)
    assert cache.get("latest:acme/app")[0] is False
    _, _, fresh = cache.get("latest:acme/app")
    assert cache.put("latest:acme/app", "fresh", token=fresh)


def test_unrelated_invalidation_does_not_refuse(clock: Clock) -> None:
    cache = ResponseCache(clock=clock)
    _, _, token = cache.get("latest:acme/app")
    cache.invalidate_prefix("latest:other/")
    assert cache.put("latest:acme/app", "ok", token=token)
    _, _, token = cache.get("x")
    cache.clear()
    assert not cache.put("x", "stale", token=token)


def test_forgotten_invalidations_refuse_conservatively(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "INVALIDATION_LOG", 4)
    cache = ResponseCache(clock=clock)
    _, _, token = cache.get("a:1")
    for i in range(4):
        cache.invalidate_prefix(f"b:{i}")
    assert cache.put("a:1", 1, token=token)  # every later invalidation still known
    _, _, token = cache.get("a:1")
    for i in range(5):
        cache.invalidate_prefix(f"b:{i}")
    assert not cache.put("a:1", 1, token=token)  # one is forgotten: cannot tell


def test_threads_hammering() -> None:
    cache = ResponseCache(max_entries=50, max_bytes=4000, max_entry_bytes=200)
    version = {f"k{i}": 0 for i in range(20)}  # the "database"
    db_lock = threading.Lock()
    errors: list[str] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(2000):
            key = f"k{rnd.randrange(20)}"
            if rnd.random() < 0.1:
                with db_lock:
                    version[key] += 1
                    cache.invalidate_prefix(key)  # invalidate after the write, as a pipeline
                continue
            with db_lock:
                before = version[key]
            hit, value, token = cache.get(key)
            with db_lock:
                current = version[key]
            if hit:
                # every write finished before `before` was read also invalidated before get
                if not before <= value["v"] <= current:
                    errors.append(f"{key}: cached {value['v']}, database {before}..{current}")
                continue
            if rnd.random() < 0.2:
                time.sleep(0.0001)  # a slow computation widens the race window
            cache.put(key, {"v": current, "pad": "x" * rnd.randrange(150)}, token=token)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = cache.stats()
    assert stats["entries"] <= 50 and stats["bytes"] <= 4000
    assert stats["hits"] + stats["misses"] > 0
    # no stale value survived: every cached entry matches the final state
    for key, v in version.items():
        hit, value, _ = cache.get(key)
        assert not hit or value["v"] == v, key
    # byte accounting stayed exact
    assert cache.stats()["bytes"] == sum(len(e.data) for e in cache._entries.values())
