"""The key ring: creation, rotation, pruning on an injected clock, the in-memory cache."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from goodrepo.accounts import KeyRing
from goodrepo.storage.kv import KV

LIFETIME = 1000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingKV:
    """Delegates to a KV and counts the reads."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self.reads = 0

    def get_json(self, key):
        self.reads += 1
        return self._kv.get_json(key)

    def scan(self, *args, **kwargs):
        self.reads += 1
        return self._kv.scan(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._kv, name)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ring(kv, clock):
    return KeyRing(kv, token_lifetime=LIFETIME, clock=clock)


def stored_keys(kv):
    return {json.loads(v)["kid"]: json.loads(v) for _, v in kv.scan(b"a:key:")}


def test_fresh_store_gets_a_first_key(ring, kv):
    assert stored_keys(kv) == {}
    key = ring.current()
    assert len(key.secret) >= 32
    assert ring.current() == key
    doc = stored_keys(kv)[key.kid]
    assert base64.b64decode(doc["secret"]) == key.secret
    assert kv.get_json(b"a:keyring")["current"] == key.kid
    assert "secret" not in repr(key)
    assert ring.verification_keys() == {key.kid: key.secret}


def test_concurrent_first_use_makes_one_key(kv, clock):
    rings = [KeyRing(kv, clock=clock) for _ in range(8)]
    barrier = threading.Barrier(len(rings))
    kids: list[str] = []

    def first(r: KeyRing) -> None:
        barrier.wait()
        kids.append(r.current().kid)

    threads = [threading.Thread(target=first, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(kids)) == 1
    assert list(stored_keys(kv)) == kids[:1]


def test_secrets_are_random_and_long_enough(kv):
    ring = KeyRing(kv, secret_bytes=64)
    first = ring.current()
    ring.rotate()
    second = ring.current()
    assert len(first.secret) == len(second.secret) == 64
    assert first.secret != second.secret
    with pytest.raises(ValueError, match="at least 32"):
        KeyRing(kv, secret_bytes=16)


def test_rotation_keeps_the_old_key_verifying(ring, clock):
    old = ring.current()
    clock.now += 10
    kid = ring.rotate()
    assert kid != old.kid
    assert ring.current().kid == kid
    assert set(ring.verification_keys()) == {old.kid, kid}
    listed = ring.public_list()
    assert [k["kid"] for k in listed] == [old.kid, kid]
    assert [k["current"] for k in listed] == [False, True]
    assert listed[0]["retired_at"] is not None and listed[1]["retired_at"] is None
    assert listed[0]["created_at"] == "2026-01-01T00:00:00Z"


def test_public_list_never_shows_a_secret(ring):
    secret = ring.current().secret
    ring.rotate()
    text = json.dumps(ring.public_list())
    assert "secret" not in text
    assert base64.b64encode(secret).decode() not in text
    assert all(
        set(k) == {"kid", "created_at", "retired_at", "current"} for k in ring.public_list()
    )


def test_retired_keys_expire_and_are_pruned(ring, kv, clock):
    old = ring.current().kid
    ring.rotate()
    clock.now += LIFETIME - 1
    assert old in ring.verification_keys()
    clock.now += 1
    assert old not in ring.verification_keys()
    assert old not in [k["kid"] for k in ring.public_list()]
    assert old in stored_keys(kv)  # filtered at once, deleted by the next prune
    assert ring.prune() == [old]
    assert old not in stored_keys(kv)
    assert ring.prune() == []


def test_rotation_prunes_expired_keys(ring, kv, clock):
    first = ring.current().kid
    second = ring.rotate()
    clock.now += LIFETIME + 1
    third = ring.rotate()
    assert set(stored_keys(kv)) == {second, third}  # second just retired: kept
    assert first not in ring.verification_keys()


def test_current_key_never_expires(ring, clock):
    kid = ring.current().kid
    clock.now += 10 * 365 * 86400
    assert kid in ring.verification_keys()


def test_keep_until_extends_a_retired_key(ring, kv, clock):
    kid = ring.current().kid
    with kv.transaction() as txn:
        ring.keep_until(txn, kid, clock.now + 5 * LIFETIME)
    ring.rotate()
    clock.now += 4 * LIFETIME
    assert kid in ring.verification_keys()
    assert ring.prune() == []
    clock.now += LIFETIME
    assert kid not in ring.verification_keys()
    assert ring.prune() == [kid]


def test_keep_until_never_shortens(ring, kv, clock):
    kid = ring.current().kid
    with kv.transaction() as txn:
        ring.keep_until(txn, kid, clock.now + 5 * LIFETIME)
    with kv.transaction() as txn:
        ring.keep_until(txn, kid, clock.now + 2 * LIFETIME)
    assert stored_keys(kv)[kid]["keep_until"] == clock.now + 5 * LIFETIME


def test_revoking_the_previous_key(ring, kv):
    old = ring.current().kid
    new = ring.rotate(revoke_previous=True)
    assert old != new
    assert set(ring.verification_keys()) == {new}
    assert set(stored_keys(kv)) == {new}


def test_verification_keys_is_served_from_memory(kv, clock):
    counting = CountingKV(kv)
    mono = Clock(0.0)
    ring = KeyRing(counting, clock=clock, monotonic=mono, refresh_interval=2.0)  # type: ignore[arg-type]
    ring.current()
    counting.reads = 0
    for _ in range(1000):
        ring.verification_keys()
    assert counting.reads == 0
    mono.now += 2.5
    ring.verification_keys()
    assert counting.reads == 1  # the head only: its version did not change


def test_another_instance_sees_a_rotation_after_the_refresh_interval(kv, clock):
    mono = Clock(0.0)
    writer = KeyRing(kv, clock=clock)
    reader = KeyRing(kv, clock=clock, monotonic=mono, refresh_interval=2.0)
    first = writer.current().kid
    assert set(reader.verification_keys()) == {first}
    second = writer.rotate()
    assert set(reader.verification_keys()) == {first}  # cached
    mono.now += 2.0
    assert set(reader.verification_keys()) == {first, second}
    assert reader.current().kid == second


def test_a_shorter_lifetime_after_a_restart_keeps_tokens_signed_before(kv, clock):
    """Tokens signed for a day keep verifying after a restart with 60 s tokens."""
    before = KeyRing(kv, token_lifetime=86400.0, clock=clock)
    old = before.current()  # signing with it records the day
    after = KeyRing(kv, token_lifetime=60.0, clock=clock)
    assert after.current() == old  # and a shorter lifetime does not lower it
    after.rotate()
    clock.now += 3600
    after.prune()
    assert old.kid in after.verification_keys()
    clock.now += 86400
    after.prune()
    assert old.kid not in after.verification_keys()
    assert old.kid not in stored_keys(kv)
