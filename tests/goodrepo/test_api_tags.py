"""Tags: create, move, read, list, delete, immutability and race-free moves."""

from __future__ import annotations

import webtest

from goodrepo.repository import Repository

from .conftest import publish

TAG = "/v1/acme/app/tags/stable"


def _setup(client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux", b"a")
    publish(client, "acme/app/2.0.0/linux", b"b")


def test_put_get_move(client: webtest.TestApp, repo: Repository) -> None:
    _setup(client)
    res = client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "linux"})
    assert res.json == {"ok": True}
    tag = client.get(TAG).json
    assert tag["target_key"] == "acme/app/1.0.0/linux"
    assert tag["updated_by"] == "alice"
    assert set(tag) == {
        "tag",
        "target_version",
        "target_variant",
        "target_key",
        "updated_at",
        "updated_by",
    }
    client.put_json(TAG, {"target_version": "2.0.0", "target_variant": "LINUX"})
    assert client.get(TAG).json["target_version"] == "2.0.0"
    moves = [e for e in repo.events.read(0, 100)[0] if e["type"] == "tag.moved"]
    assert [(m["payload"]["from"], m["payload"]["to"]) for m in moves] == [
        (None, "acme/app/1.0.0/linux"),
        ("acme/app/1.0.0/linux", "acme/app/2.0.0/linux"),
    ]


def test_target_must_exist(client: webtest.TestApp) -> None:
    res = client.put_json(TAG, {"target_version": "9.9.9", "target_variant": "linux"}, status=404)
    assert res.json["error"]["code"] == "TARGET_NOT_FOUND"


def test_bad_bodies(client: webtest.TestApp) -> None:
    _setup(client)
    assert client.put(TAG, b"{", status=400).json["error"]["code"] == "INVALID_REQUEST"
    # Valid JSON nested deeper than the decoder recurses, and JSON's missing constants.
    deep = b'{"target_version": "1.0.0", "target_variant": "linux", "x": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert client.put(TAG, deep, status=400).json["error"]["code"] == "INVALID_REQUEST"
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"target_version": "1.0.0", "target_variant": "linux", "x": ' + constant + b"}"
        assert client.put(TAG, body, status=400).json["error"]["code"] == "INVALID_REQUEST"
    res = client.put_json(TAG, {"target_version": "1.0.0"}, status=400)
    assert res.json["error"]["code"] == "VALIDATION_ERROR"
    res = client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "../x"}, status=400)
    assert res.json["error"]["details"]["field"] == "target_variant"
    client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "l", "x": 1}, status=400)


def test_immutable_tags(client: webtest.TestApp, repo: Repository) -> None:
    _setup(client)
    repo.set_features({"mutable_tags": False})
    client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "linux"})
    # The same target again is not a move.
    client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "linux"})
    res = client.put_json(TAG, {"target_version": "2.0.0", "target_variant": "linux"}, status=409)
    assert res.json["error"]["code"] == "TAG_IMMUTABLE"
    assert client.delete(TAG, status=409).json["error"]["code"] == "TAG_IMMUTABLE"


def test_conditional_moves(client: webtest.TestApp) -> None:
    _setup(client)
    body = {"target_version": "1.0.0", "target_variant": "linux"}
    client.put_json(TAG, body, headers={"If-None-Match": "*"})
    client.put_json(TAG, body, headers={"If-None-Match": "*"}, status=412)
    etag = client.get(TAG).headers["ETag"]
    move = {"target_version": "2.0.0", "target_variant": "linux"}
    client.put_json(TAG, move, headers={"If-Match": '"stale"'}, status=412)
    res = client.put_json(TAG, move, headers={"If-Match": etag})
    assert res.headers["ETag"] != etag
    client.put_json(TAG, body, headers={"If-Match": etag}, status=412)
    client.get(TAG, headers={"If-None-Match": res.headers["ETag"]}, status=304)


def test_list_and_delete(client: webtest.TestApp) -> None:
    _setup(client)
    for t in ["a", "b", "c"]:
        client.put_json(
            f"/v1/acme/app/tags/{t}", {"target_version": "1.0.0", "target_variant": "linux"}
        )
    page = client.get("/v1/acme/app/tags?limit=2").json
    assert [t["tag"] for t in page["tags"]] == ["a", "b"]
    rest = client.get(f"/v1/acme/app/tags?limit=2&cursor={page['next_cursor']}").json
    assert [t["tag"] for t in rest["tags"]] == ["c"] and rest["next_cursor"] is None
    client.delete("/v1/acme/app/tags/b", status=204)
    client.delete("/v1/acme/app/tags/b", status=404)
    assert [t["tag"] for t in client.get("/v1/acme/app/tags").json["tags"]] == ["a", "c"]
    # Tags of another package are not listed.
    assert client.get("/v1/acme/other/tags").json["tags"] == []


def test_repository_tag_api(repo: Repository, client: webtest.TestApp) -> None:
    _setup(client)
    repo.tag("acme", "app", "prod", "2.0.0", "linux")
    assert client.get("/v1/acme/app/tags/prod").json["target_version"] == "2.0.0"


def test_deleting_an_artifact_deletes_the_tags_that_point_at_it(
    client: webtest.TestApp, admin: webtest.TestApp, repo: Repository
) -> None:
    _setup(client)
    publish(client, "acme/other/1.0.0/linux", b"c")
    for tag, version in [("stable", "1.0.0"), ("lts", "1.0.0"), ("next", "2.0.0")]:
        client.put_json(
            f"/v1/acme/app/tags/{tag}", {"target_version": version, "target_variant": "linux"}
        )
    client.put_json(
        TAG.replace("app", "other"), {"target_version": "1.0.0", "target_variant": "linux"}
    )
    # Even immutable tags: a tag never outlives its target.
    repo.set_features({"mutable_tags": False})
    admin.delete("/v1/acme/app/1.0.0/linux", status=204)
    assert client.get(TAG, status=404).json["error"]["code"] == "NOT_FOUND"
    assert [t["tag"] for t in client.get("/v1/acme/app/tags").json["tags"]] == ["next"]
    assert client.get(TAG.replace("app", "other")).json["target_key"] == "acme/other/1.0.0/linux"
    events = repo.events.read(0, 100)[0]
    assert [e["type"] for e in events[-3:]] == ["tag.deleted", "tag.deleted", "artifact.deleted"]
    assert [e["payload"] for e in events[-3:-1]] == [
        {
            "namespace": "acme",
            "name": "app",
            "tag": tag,
            "from": "acme/app/1.0.0/linux",
            "at": events[-1]["payload"]["deleted_at"],
            "by": "root",
        }
        for tag in ("lts", "stable")
    ]
    # Other bytes published again at the same coordinates do not bring the tag back.
    publish(client, "acme/app/1.0.0/linux", b"other bytes")
    client.get(TAG, status=404)
    # Nothing to untag: the delete emits its own event only.
    admin.delete("/v1/acme/app/1.0.0/linux", status=204)
    assert [e["type"] for e in repo.events.read(0, 100)[0][-2:]] == [
        "artifact.published",
        "artifact.deleted",
    ]


def test_a_delete_unless_tagged_refuses_a_tagged_artifact_and_changes_nothing(
    client: webtest.TestApp, admin: webtest.TestApp, repo: Repository
) -> None:
    _setup(client)
    client.put_json(TAG, {"target_version": "1.0.0", "target_variant": "linux"})
    before = len(repo.events.read(0, 100)[0])
    res = admin.delete("/v1/acme/app/1.0.0/linux?unless_tagged=true", status=409)
    assert res.json["error"]["code"] == "CONFLICT"
    assert client.get(TAG).json["target_version"] == "1.0.0"
    assert len(repo.events.read(0, 100)[0]) == before
    admin.delete("/v1/acme/app/2.0.0/linux?unless_tagged=true", status=204)
    admin.delete("/v1/acme/app/1.0.0/linux?unless_tagged=maybe", status=400)


def test_a_delete_with_if_match_deletes_only_that_document(
    client: webtest.TestApp, admin: webtest.TestApp
) -> None:
    _setup(client)
    etag = client.get("/v1/acme/app/1.0.0/linux").headers["ETag"]
    other = client.get("/v1/acme/app/2.0.0/linux").headers["ETag"]
    res = admin.delete("/v1/acme/app/1.0.0/linux", headers={"If-Match": other}, status=412)
    assert res.json["error"]["code"] == "PRECONDITION_FAILED"
    client.get("/v1/acme/app/1.0.0/linux")
    admin.delete("/v1/acme/app/1.0.0/linux", headers={"If-Match": etag}, status=204)
