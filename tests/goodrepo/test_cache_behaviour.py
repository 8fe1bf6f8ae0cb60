"""The response cache as the routes use it: hits, invalidation by writes, size bound, off.

To show that an answer really comes from the cache and not from the KV store, some tests
rewrite the stored metadata document behind the app's back (straight into the KV, with no
invalidation): a cached answer still shows the old document, an uncached one the new.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest

from goodrepo import schema as schema_mod
from goodrepo.repository import Repository

from .conftest import ADMIN, WRITER, client_for, publish
from .slow import BlockingBody, start_slow_publish

META = "/v1/acme/app/1.0.0/linux"
TIMEOUT = 30.0


def stats(repo: Repository) -> dict[str, int]:
    assert repo.runtime.cache is not None
    return repo.runtime.cache.stats()


def tamper(repo: Repository, coords: str, **changes: Any) -> None:
    """Rewrite a metadata document directly in the KV, without invalidating anything."""
    ns, name, version, variant = coords.split("/")
    doc = repo.runtime.documents["artifact"]
    key = (
        doc.prefix
        + doc.template.format(namespace=ns, name=name, version=version, variant=variant).encode()
    )
    value = repo.kv.get_json(key)
    assert value is not None
    repo.kv.put_json(key, {**value, **changes})


def repo_with(tmp_path: Path, **caching: Any) -> Repository:
    s = schema_mod.default_schema()
    s["caching"].update(caching)
    return Repository.open(tmp_path / "custom", schema=s)


@pytest.fixture
def both(repo: Repository) -> tuple[Repository, webtest.TestApp, webtest.TestApp]:
    return repo, client_for(repo, WRITER), client_for(repo, ADMIN)


def test_metadata_is_served_from_the_cache(repo: Repository, client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux", b"x")
    first = client.get(META).json
    after_miss = stats(repo)
    assert after_miss["entries"] == 1
    for _ in range(3):
        assert client.get(META).json == first
    assert stats(repo)["hits"] == after_miss["hits"] + 3
    assert stats(repo)["misses"] == after_miss["misses"]
    # The KV changes under the cache: the cached answer does not read it.
    tamper(repo, "acme/app/1.0.0/linux", labels={"changed": "in the kv"})
    assert client.get(META).json == first
    # The blob route shares the metadata entry.
    assert client.get(f"{META}/blob").body == b"x"
    assert stats(repo)["hits"] == after_miss["hits"] + 5


def test_latest_is_served_from_the_cache(repo: Repository, client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux", b"x")
    client.get("/v1/acme/app/latest")
    hits = stats(repo)["hits"]
    for _ in range(3):
        assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"
    assert stats(repo)["hits"] == hits + 3
    # Each question has its own entry: these are misses first, then hits.
    for url in ["/v1/acme/app/latest?prerelease=true", "/v1/acme/app/latest?variant=linux"]:
        misses = stats(repo)["misses"]
        client.get(url)
        assert stats(repo)["misses"] == misses + 1
        client.get(url)
        assert stats(repo)["misses"] == misses + 1
    assert stats(repo)["entries"] == 3


@pytest.mark.parametrize(
    ("write", "invalidates"),
    [
        pytest.param("publish acme/app/2.0.0/linux", True, id="publish-same-package"),
        pytest.param("delete acme/app/0.5.0/linux", True, id="delete-same-package"),
        pytest.param("publish acme/other/1.0.0/linux", False, id="publish-other-package"),
        pytest.param("publish acme/app-x/1.0.0/linux", False, id="publish-prefix-sibling"),
        pytest.param("publish acmex/app/1.0.0/linux", False, id="publish-other-namespace"),
        pytest.param("delete acme/other/0.1.0/linux", False, id="delete-other-package"),
    ],
)
def test_invalidation_by_writes(
    both: tuple[Repository, webtest.TestApp, webtest.TestApp], write: str, invalidates: bool
) -> None:
    repo, client, admin = both
    for coords in ["acme/app/0.5.0/linux", "acme/app/1.0.0/linux", "acme/other/0.1.0/linux"]:
        publish(client, coords, coords.encode())
    original = client.get(META).json
    client.get("/v1/acme/app/latest")
    tamper(repo, "acme/app/1.0.0/linux", labels={"seen": "from the kv"})
    entries = stats(repo)["entries"]

    action, target = write.split(" ")
    if action == "publish":
        publish(client, target, b"new")
    else:
        admin.delete(f"/v1/{target}", status=204)

    hits = stats(repo)["hits"]
    meta = client.get(META).json
    latest = client.get("/v1/acme/app/latest").json["version"]
    if invalidates:
        assert meta["labels"] == {"seen": "from the kv"}  # read again from the KV
        assert latest == ("2.0.0" if action == "publish" else "1.0.0")
        assert stats(repo)["hits"] == hits
    else:
        assert meta == original  # still the cached answer
        assert latest == "1.0.0"
        assert stats(repo)["hits"] == hits + 2
        assert stats(repo)["entries"] == entries


def test_delete_of_the_cached_artifact(
    repo: Repository, client: webtest.TestApp, admin: webtest.TestApp
) -> None:
    publish(client, "acme/app/1.0.0/linux", b"1")
    publish(client, "acme/app/2.0.0/linux", b"2")
    client.get("/v1/acme/app/2.0.0/linux")
    assert client.get("/v1/acme/app/latest").json["version"] == "2.0.0"
    admin.delete("/v1/acme/app/2.0.0/linux", status=204)
    client.get("/v1/acme/app/2.0.0/linux", status=404)
    client.get("/v1/acme/app/2.0.0/linux/blob", status=404)
    assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"
    admin.delete("/v1/acme/app/1.0.0/linux", status=204)
    client.get("/v1/acme/app/latest", status=404)
    # Answers that are not found are not cached: a publish is seen at once.
    publish(client, "acme/app/3.0.0/linux", b"3")
    assert client.get("/v1/acme/app/latest").json["version"] == "3.0.0"


def test_blob_bytes_are_never_cached(repo: Repository, client: webtest.TestApp) -> None:
    body = b"\xab" * (512 << 10)
    publish(client, "acme/app/1.0.0/linux", body)
    for _ in range(2):
        assert client.get(f"{META}/blob").body == body
    assert stats(repo)["entries"] == 1
    assert stats(repo)["bytes"] < 1024


def test_values_over_max_entry_bytes_are_not_cached(tmp_path: Path) -> None:
    limit = 300
    with repo_with(tmp_path, max_entry_bytes=limit) as repo:
        client = client_for(repo, WRITER)
        long_name = "n" * 120
        publish(client, "acme/app/1.0.0/linux", b"x")
        publish(client, f"acme/{long_name}/1.0.0/linux", b"x")
        small = client.get(META).json
        big = client.get(f"/v1/acme/{long_name}/1.0.0/linux").json

        def size(value: Any) -> int:
            return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())

        assert size(small) < limit < size(big)
        assert stats(repo)["entries"] == 1
        hits = stats(repo)["hits"]
        tamper(repo, f"acme/{long_name}/1.0.0/linux", labels={"fresh": "yes"})
        assert client.get(f"/v1/acme/{long_name}/1.0.0/linux").json["labels"] == {"fresh": "yes"}
        assert stats(repo)["hits"] == hits
        assert stats(repo)["entries"] == 1
        assert stats(repo)["bytes"] == size(small)


def test_caching_disabled(tmp_path: Path) -> None:
    with repo_with(tmp_path, enabled=False) as repo:
        assert repo.runtime.cache is None
        client, admin = client_for(repo, WRITER), client_for(repo, ADMIN)
        publish(client, "acme/app/1.0.0/linux", b"1")
        assert client.get(META).json["blob_size"] == 1
        tamper(repo, "acme/app/1.0.0/linux", labels={"fresh": "yes"})
        assert client.get(META).json["labels"] == {"fresh": "yes"}
        assert client.get(f"{META}/blob").body == b"1"
        assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"
        publish(client, "acme/app/2.0.0/linux", b"2")
        assert client.get("/v1/acme/app/latest").json["version"] == "2.0.0"
        admin.delete("/v1/acme/app/2.0.0/linux", status=204)
        assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"


@pytest.fixture
def slow_publish(repo: Repository) -> Iterator[tuple[BlockingBody, threading.Thread, dict]]:
    repo.publish("acme", "app", "1.0.0", "linux", b"one")
    body = BlockingBody(b"two " * 100, b"end")
    thread, out = start_slow_publish(repo, "acme/app/2.0.0/linux", body, 403)
    try:
        yield body, thread, out
    finally:
        body.release.set()
        thread.join(TIMEOUT)


def test_write_in_flight_across_a_schema_swap_invalidates_the_new_cache(
    repo: Repository, client: webtest.TestApp, slow_publish: Any
) -> None:
    body, thread, out = slow_publish
    repo.set_features({"allow_overwrite_artifacts": False})  # any replacement
    assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"  # cached, new runtime
    body.release.set()
    thread.join(TIMEOUT)
    assert out["status"] == 201
    assert client.get("/v1/acme/app/latest").json["version"] == "2.0.0"
