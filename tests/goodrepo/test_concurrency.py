"""Concurrent requests through the core WSGI app, from real threads.

webtest's TestApp is not thread-safe, so each thread drives the app with its own
werkzeug ``Client``, or builds an environ with ``EnvironBuilder`` and calls the app
directly. Every wait is bounded, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder, TestResponse
from werkzeug.wrappers import Response

from goodrepo.repository import Repository
from middleware.keys import PRINCIPAL

from .conftest import ADMIN, WRITER, principal
from .slow import TIMEOUT, BlockingBody, run_bounded, start_slow_publish

COORDS = "acme/app/1.0.0/linux"


def sha(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def client_in_thread(repo: Repository, who: dict[str, Any] = WRITER) -> Client:
    """A werkzeug test client of its own, acting as ``who``."""
    core = repo.wsgi_app()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[PRINCIPAL] = who
        return core(environ, start_response)

    return Client(app, response_wrapper=ClosedResponse)


class ClosedResponse(TestResponse):
    """A test response read whole at once and closed (blob bodies are open files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.get_data()
        self.close()


def put_blob(client: Client, coords: str, body: bytes, **headers: str) -> Any:
    return client.put(
        f"/v1/{coords}/blob",
        data=body,
        headers={"Content-Type": "application/octet-stream", **headers},
    )


def run_together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0..n-1)`` in ``n`` threads released at the same moment; bounded."""
    barrier = threading.Barrier(n, timeout=TIMEOUT)

    def task(i: int) -> Any:
        barrier.wait()
        return fn(i)

    pool = ThreadPoolExecutor(max_workers=n)
    try:
        futures = [pool.submit(task, i) for i in range(n)]
        return [f.result(timeout=TIMEOUT) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # never wait on a stuck thread


def events_of(repo: Repository, type_: str) -> list[dict[str, Any]]:
    events, _ = repo.events.read(0, 10_000)
    return [e for e in events if e["type"] == type_]


def test_same_coordinates_exactly_one_publisher_wins(repo: Repository) -> None:
    n = 50
    # Distinct bodies, large enough for the uploads to overlap.
    bodies = [hashlib.sha256(str(i).encode()).digest() * 4096 for i in range(n)]

    def publish(i: int) -> tuple[int, Any]:
        client = client_in_thread(repo, principal(f"user{i}", "read", "write"))
        res = put_blob(client, COORDS, bodies[i])
        return res.status_code, res.get_json()

    results = run_together(n, publish)
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: n - 1}
    (winner,) = [i for i, (status, _) in enumerate(results) if status == 201]
    digest = sha(bodies[winner])
    assert results[winner][1] == {"ok": True, "digest": digest, "size": len(bodies[winner])}
    for i, (status, body) in enumerate(results):
        if status == 409:
            err = body["error"]
            assert err["code"] == "ALREADY_EXISTS"
            assert err["details"] == {"blob_digest": digest, "identical": False}, i

    reader = client_in_thread(repo)
    meta = reader.get(f"/v1/{COORDS}").get_json()
    assert meta["blob_digest"] == digest
    assert meta["blob_size"] == len(bodies[winner])
    assert meta["created_by"] == f"user{winner}"
    assert reader.get(f"/v1/{COORDS}/blob").get_data() == bodies[winner]
    assert reader.get("/v1/acme/app/latest").get_json()["blob_digest"] == digest
    versions = reader.get("/v1/acme/app/versions").get_json()["versions"]
    assert [(v["version"], v["blob_digest"]) for v in versions] == [("1.0.0", digest)]
    assert reader.get("/v1/acme/packages").get_json()["packages"] == [
        {"name": "app", "latest": "1.0.0", "versions_count": 1}
    ]
    published = events_of(repo, "artifact.published")
    assert len(published) == 1
    assert published[0]["payload"]["blob_digest"] == digest
    assert list((repo.data_dir / "blobs" / ".tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("coords_of", "listing"),
    [
        pytest.param(
            lambda i: f"acme/app/1.{i}.0/linux", "versions", id="versions-of-one-package"
        ),
        pytest.param(
            lambda i: f"acme/pkg{i:02d}/1.0.0/linux", "packages", id="packages-of-one-namespace"
        ),
    ],
)
def test_different_coordinates_in_parallel(
    repo: Repository, coords_of: Callable[[int], str], listing: str
) -> None:
    n = 16

    def publish(i: int) -> int:
        return put_blob(client_in_thread(repo), coords_of(i), f"body {i}".encode()).status_code

    assert run_together(n, publish) == [201] * n
    reader = client_in_thread(repo)
    packages = reader.get("/v1/acme/packages").get_json()["packages"]
    if listing == "versions":
        assert packages == [{"name": "app", "latest": f"1.{n - 1}.0", "versions_count": n}]
        versions = reader.get("/v1/acme/app/versions").get_json()
        assert [v["version"] for v in versions["versions"]] == [
            f"1.{i}.0" for i in reversed(range(n))
        ]
        assert versions["next_cursor"] is None
        assert reader.get("/v1/acme/app/latest").get_json()["version"] == f"1.{n - 1}.0"
    else:
        assert packages == [
            {"name": f"pkg{i:02d}", "latest": "1.0.0", "versions_count": 1} for i in range(n)
        ]
    assert reader.get("/v1/namespaces").get_json()["namespaces"] == ["acme"]
    seqs = [e["seq"] for e in events_of(repo, "artifact.published")]
    assert len(seqs) == n and seqs == sorted(seqs) and len(set(seqs)) == n


def test_concurrent_tag_moves_with_if_match(repo: Repository) -> None:
    threads, rounds = 8, 5
    repo.publish("acme", "app", "0.1.0", "linux", b"start")
    for r in range(rounds):
        for i in range(threads):
            repo.publish("acme", "app", f"{r + 1}.{i}.0", "linux", f"{r}-{i}".encode())
    repo.tag("acme", "app", "stable", "0.1.0", "linux")
    url = "/v1/acme/app/tags/stable"
    reader = client_in_thread(repo)

    for r in range(rounds):
        etag = reader.get(url).headers["ETag"]

        def move(i: int, etag: str = etag, r: int = r) -> tuple[int, Any, str | None]:
            client = client_in_thread(repo)
            res = client.put(
                url,
                json={"target_version": f"{r + 1}.{i}.0", "target_variant": "linux"},
                headers={"If-Match": etag},
            )
            return res.status_code, res.get_json(), res.headers.get("ETag")

        results = run_together(threads, move)
        assert Counter(s for s, _, _ in results) == {200: 1, 412: threads - 1}, r
        (winner,) = [i for i, (s, _, _) in enumerate(results) if s == 200]
        for status, body, _ in results:
            if status == 412:
                assert body["error"]["code"] == "PRECONDITION_FAILED"
        current = reader.get(url)
        assert current.get_json()["target_version"] == f"{r + 1}.{winner}.0"
        assert current.headers["ETag"] == results[winner][2]
    assert len(events_of(repo, "tag.moved")) == 1 + rounds


def test_tag_put_checks_its_target_in_the_transaction_that_writes_the_tag(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DELETE of the target arrives just after the tag PUT has read it. The check and
    # the write are one transaction, so the DELETE waits for the tag's commit: a tag is
    # never written after its target is gone.
    repo.publish("acme", "app", "1.0.0", "linux", b"a")
    target = b"artifact/" + COORDS.encode()
    deleter = client_in_thread(repo, ADMIN)
    deleted: dict[str, int] = {}
    racer = threading.Thread(
        target=lambda: deleted.update(status=deleter.delete(f"/v1/{COORDS}").status_code),
        daemon=True,
    )
    putter = threading.current_thread()
    read = repo.kv.get

    def get(key: bytes) -> bytes | None:
        value = read(key)
        if key.endswith(target) and threading.current_thread() is putter and not racer.ident:
            racer.start()
            racer.join(timeout=1.0)  # done at once unless the tag PUT holds the target
        return value

    monkeypatch.setattr(repo.kv, "get", get)
    res = client_in_thread(repo).put(
        "/v1/acme/app/tags/stable", json={"target_version": "1.0.0", "target_variant": "linux"}
    )
    racer.join(timeout=TIMEOUT)
    assert racer.ident and not racer.is_alive()
    assert (res.status_code, deleted) == (200, {"status": 204})
    events, _ = repo.events.read(0, 100)
    assert [e["type"] for e in events] == [
        "artifact.published",
        "tag.moved",
        "tag.deleted",
        "artifact.deleted",
    ]
    assert client_in_thread(repo).get("/v1/acme/app/tags/stable").status_code == 404


def test_artifact_delete_keeps_a_tag_moved_away_while_it_looked(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DELETE finds the tags pointing at its artifact, then locks each one. A tag moved
    # to another artifact in between is read again under its lock, and kept.
    repo.publish("acme", "app", "1.0.0", "linux", b"a")
    repo.publish("acme", "app", "2.0.0", "linux", b"b")
    repo.tag("acme", "app", "stable", "1.0.0", "linux")
    url = "/v1/acme/app/tags/stable"
    moved: dict[str, int] = {}
    mover = threading.Thread(
        target=lambda: moved.update(
            status=client_in_thread(repo)
            .put(url, json={"target_version": "2.0.0", "target_variant": "linux"})
            .status_code
        ),
        daemon=True,
    )
    deleter = threading.current_thread()
    scan = repo.kv.scan

    def scan_then_move(prefix: bytes, **kwargs: Any) -> Any:
        yield from scan(prefix, **kwargs)
        if prefix.endswith(b"tag/acme/app/") and threading.current_thread() is deleter:
            mover.start()
            mover.join(timeout=TIMEOUT)

    monkeypatch.setattr(repo.kv, "scan", scan_then_move)
    res = client_in_thread(repo, ADMIN).delete(f"/v1/{COORDS}")
    assert (res.status_code, moved) == (204, {"status": 200})
    monkeypatch.undo()
    tag = client_in_thread(repo).get(url).get_json()
    assert tag["target_key"] == "acme/app/2.0.0/linux"
    events, _ = repo.events.read(0, 100)
    assert [e["type"] for e in events][-2:] == ["tag.moved", "artifact.deleted"]


def test_slow_upload_does_not_block_other_requests(repo: Repository) -> None:
    repo.publish("acme", "app", "0.9.0", "linux", b"existing")
    head, tail = b"h" * 300_000, b"t" * 100_000
    body = BlockingBody(head, tail)
    slow, out = start_slow_publish(repo, "acme/app/1.0.0/linux", body, len(head) + len(tail))

    def others() -> list[int]:
        client = client_in_thread(repo)
        answers = [
            put_blob(client, "acme/app/1.1.0/linux", b"same package").status_code,
            put_blob(client, "other/pkg/1.0.0/linux", b"other package").status_code,
            client.get("/v1/acme/app/0.9.0/linux/blob").status_code,
            client.get("/v1/acme/app/0.9.0/linux").status_code,
            client.get("/v1/acme/app/versions").status_code,
            client.get("/v1/acme/packages").status_code,
        ]
        assert client.get("/v1/acme/app/latest").get_json()["version"] == "1.1.0"
        assert client.get("/v1/acme/app/1.0.0/linux").status_code == 404
        return answers

    try:
        assert run_bounded(others) == [201, 201, 200, 200, 200, 200]
        assert slow.is_alive() and not out, "the slow upload should still be blocked"
    finally:
        body.release.set()
        slow.join(TIMEOUT)
    assert not slow.is_alive()
    assert out["status"] == 201, out
    assert out["json"]["digest"] == sha(head + tail)
    reader = client_in_thread(repo)
    assert reader.get("/v1/acme/app/1.0.0/linux/blob").get_data() == head + tail
    assert reader.get("/v1/acme/app/latest").get_json()["version"] == "1.1.0"
    assert list((repo.data_dir / "blobs" / ".tmp").iterdir()) == []


def test_slow_upload_loses_to_a_faster_publish_of_the_same_coordinates(
    repo: Repository,
) -> None:
    body = BlockingBody(b"slow " * 1000, b"tail")
    slow, out = start_slow_publish(repo, COORDS, body, 5004)
    try:
        fast = run_bounded(lambda: put_blob(client_in_thread(repo), COORDS, b"fast"))
        assert fast.status_code == 201
    finally:
        body.release.set()
        slow.join(TIMEOUT)
    assert not slow.is_alive()
    assert out["status"] == 409
    assert out["json"]["error"]["details"] == {"blob_digest": sha(b"fast"), "identical": False}
    assert client_in_thread(repo).get(f"/v1/{COORDS}/blob").get_data() == b"fast"
    assert len(events_of(repo, "artifact.published")) == 1
    assert list((repo.data_dir / "blobs" / ".tmp").iterdir()) == []


class TricklingBody(io.RawIOBase):
    """A body that arrives a few bytes per read, as from a slow client (short reads)."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.step, len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def _send(repo: Repository, method: str, path: str, body: io.RawIOBase, length: int) -> Any:
    environ = EnvironBuilder(path=path, method=method).get_environ()
    environ["wsgi.input"] = body
    environ["CONTENT_LENGTH"] = str(length)
    environ[PRINCIPAL] = WRITER
    return run_bounded(lambda: Response.from_app(repo.wsgi_app(), environ))


def test_upload_arriving_in_small_pieces(repo: Repository) -> None:
    data = bytes(range(256)) * 40
    res = _send(repo, "PUT", f"/v1/{COORDS}/blob", TricklingBody(data, 1000), len(data))
    assert res.status_code == 201
    assert res.get_json()["digest"] == sha(data)


def test_json_body_arriving_in_small_pieces(repo: Repository) -> None:
    repo.publish("acme", "app", "1.0.0", "linux", b"x")
    body = json.dumps({"target_version": "1.0.0", "target_variant": "linux"}).encode()
    res = _send(repo, "PUT", "/v1/acme/app/tags/stable", TricklingBody(body), len(body))
    assert res.status_code == 200, res.get_data()
