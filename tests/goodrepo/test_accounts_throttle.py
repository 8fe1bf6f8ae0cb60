"""Login failure throttling on an injected clock."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from goodrepo.accounts import LoginThrottle
from goodrepo.errors import InvalidCredentials, RateLimited, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def throttle(clock):
    return LoginThrottle(max_failures=3, window=60, clock=clock)


def fail(throttle, n, username="alice", address="192.0.2.1"):
    for _ in range(n):
        throttle.check(username, address)
        throttle.failure(username, address)


def test_blocks_after_the_limit_with_retry_after(throttle, clock):
    fail(throttle, 2)
    clock.now += 10
    fail(throttle, 1)
    clock.now += 5
    with pytest.raises(RateLimited) as caught:
        throttle.check("alice", "192.0.2.1")
    err = caught.value
    assert (err.status, err.code) == (429, "RATE_LIMITED")
    assert err.headers == {"Retry-After": "45"}  # the first failure leaves at 1060
    assert err.retry_after == 45


def test_sliding_window(throttle, clock):
    fail(throttle, 2)
    clock.now += 30
    fail(throttle, 1)
    clock.now += 30  # the first two have left the window
    throttle.check("alice", "192.0.2.1")
    fail(throttle, 2)
    with pytest.raises(RateLimited) as caught:
        throttle.check("alice", "192.0.2.1")
    assert caught.value.retry_after == 30


def test_per_username_across_addresses(throttle):
    for i in range(3):
        fail(throttle, 1, address=f"192.0.2.{i}")
    with pytest.raises(RateLimited):
        throttle.check("Alice ", "198.51.100.9")  # the same user, normalised
    throttle.check("bob", "198.51.100.9")


def test_per_address_across_usernames(throttle):
    for name in ("a", "b", "c"):
        fail(throttle, 1, username=name)
    with pytest.raises(RateLimited):
        throttle.check("dave", "192.0.2.1")
    throttle.check("dave", "192.0.2.2")


def test_separate_address_limit(clock):
    throttle = LoginThrottle(3, 60, address_max_failures=10, clock=clock)
    for name in ("a", "b", "c", "d", "e"):
        fail(throttle, 1, username=name)
    throttle.check("f", "192.0.2.1")


def test_only_failures_count(throttle):
    for _ in range(20):
        throttle.check("alice", "192.0.2.1")
        throttle.success("alice")
    assert len(throttle) == 0


def test_success_resets_the_username_not_the_address(throttle):
    fail(throttle, 3)
    throttle.success("ALICE")
    with pytest.raises(RateLimited):
        throttle.check("alice", "192.0.2.1")  # the address is still over its limit
    throttle.check("alice", "192.0.2.9")


def test_attempts_under_way_count_against_the_limit(clock):
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock, queue_seconds=0.05)
    with contextlib.ExitStack() as running:
        for i in range(3):  # three guesses at once, from three addresses
            running.enter_context(throttle.attempt("alice", f"192.0.2.{i}"))
        with pytest.raises(RateLimited, match="under way"):  # waited, none ended
            running.enter_context(throttle.attempt("alice", "192.0.2.9"))
    assert len(throttle) == 0  # none failed


def test_an_attempt_waits_for_one_under_way_to_end(clock):
    throttle = LoginThrottle(max_failures=1, window=60, clock=clock)
    order = []

    def second() -> None:
        with throttle.attempt("alice", "192.0.2.2"):
            order.append("second")

    with throttle.attempt("alice", "192.0.2.1"):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.1)
        order.append("first")
    waiting.join(10)
    assert order == ["first", "second"]  # let in once the first succeeded


def test_an_attempt_is_a_failure_only_if_the_password_was_wrong(throttle):
    for error in (InvalidCredentials, StoreError):
        with pytest.raises(error), throttle.attempt("alice", "192.0.2.1"):
            raise error()
    with throttle.attempt("alice", "192.0.2.1"):
        pass  # a success forgets the username's failure
    for _ in range(2):
        with pytest.raises(InvalidCredentials), throttle.attempt("bob", "192.0.2.1"):
            raise InvalidCredentials()
    with pytest.raises(RateLimited):  # the address: alice's one failure and bob's two
        throttle.check("carol", "192.0.2.1")
    throttle.check("alice", "192.0.2.2")


def test_no_address(throttle):
    fail(throttle, 3, address=None)
    with pytest.raises(RateLimited):
        throttle.check("alice", None)


def test_memory_is_bounded(clock):
    throttle = LoginThrottle(3, 60, max_keys=100, clock=clock)
    for i in range(1000):
        throttle.failure(f"user{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    fail(throttle, 3, username="victim", address="192.0.2.77")
    with pytest.raises(RateLimited):
        throttle.check("victim", "192.0.2.78")  # recently touched keys are kept


def test_forgets_keys_once_their_window_is_over(throttle, clock):
    fail(throttle, 1)
    clock.now += 61
    throttle.check("alice", "192.0.2.1")
    assert len(throttle) == 0


def test_thread_safety(clock):
    throttle = LoginThrottle(1000, 60, max_keys=50, clock=clock)

    def hammer(n: int) -> None:
        for i in range(500):
            throttle.failure(f"u{(n * 7 + i) % 80}", f"10.1.{n}.{i % 200}")
            try:
                throttle.check(f"u{i % 80}", f"10.1.{n}.{i % 200}")
            except RateLimited:
                pass

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(throttle) <= 50


@pytest.mark.parametrize(
    ("limit", "failures", "window"),
    [
        pytest.param("5/minute", 5, 60, id="per-minute"),
        pytest.param("10 per hour", 10, 3600, id="per-hour"),
        pytest.param("3/2 minutes", 3, 120, id="multiple-periods"),
    ],
)
def test_from_limit(limit, failures, window):
    throttle = LoginThrottle.from_limit(limit)
    assert (throttle.max_failures, throttle.window) == (failures, window)


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("lots", id="garbage"),
        pytest.param("0/minute", id="zero"),
        pytest.param("5/minute;100/hour", id="several"),
    ],
)
def test_from_limit_rejects(limit):
    with pytest.raises(ValueError):
        LoginThrottle.from_limit(limit)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_failures": 0}, id="no-failures"),
        pytest.param({"address_max_failures": 0}, id="no-address-failures"),
        pytest.param({"window": 0}, id="no-window"),
        pytest.param({"max_keys": 0}, id="no-keys"),
    ],
)
def test_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        LoginThrottle(**kwargs)
