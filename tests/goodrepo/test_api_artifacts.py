"""The artifact endpoints: publish, fetch, metadata, delete, latest and versions."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import pytest
import webtest
from werkzeug.test import EnvironBuilder

from goodrepo.repository import Repository

from .conftest import client_for, principal, publish

COORDS = "acme/app/1.0.0/linux"


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_publish_then_fetch(client: webtest.TestApp) -> None:
    res = publish(client, COORDS, b"payload")
    assert res.json == {"ok": True, "digest": f"sha256:{sha(b'payload')}", "size": 7}
    assert res.headers["Location"].endswith(f"/v1/{COORDS}/blob")
    got = client.get(f"/v1/{COORDS}/blob")
    assert got.body == b"payload"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["ETag"] == f'"sha256:{sha(b"payload")}"'
    assert got.headers["X-Checksum-Sha256"] == sha(b"payload")
    assert got.headers["Docker-Content-Digest"] == f"sha256:{sha(b'payload')}"
    assert "attachment" in got.headers["Content-Disposition"]
    assert got.headers["X-Content-Type-Options"] == "nosniff"


def test_head_has_headers_and_no_body(client: webtest.TestApp) -> None:
    publish(client, COORDS, b"payload")
    res = client.head(f"/v1/{COORDS}/blob")
    assert res.body == b""
    assert res.headers["Content-Length"] == "7"


def test_identifiers_are_normalised(client: webtest.TestApp) -> None:
    publish(client, "ACME/My_App/1.0.0/Linux", b"x")
    meta = client.get("/v1/acme/my-app/1.0.0/linux").json
    assert (meta["namespace"], meta["name"], meta["variant"]) == ("acme", "my-app", "linux")


def test_metadata_fields(client: webtest.TestApp) -> None:
    publish(client, COORDS, b"abc")
    meta = client.get(f"/v1/{COORDS}").json
    assert meta["blob_digest"] == f"sha256:{sha(b'abc')}"
    assert meta["blob_size"] == 3
    assert meta["created_by"] == "alice"
    assert meta["labels"] == {}
    assert meta["created_at"].endswith("Z")


def test_republish_is_409_with_details(client: webtest.TestApp) -> None:
    publish(client, COORDS, b"one")
    same = publish(client, COORDS, b"one", status=409).json["error"]
    assert same["code"] == "ALREADY_EXISTS"
    assert same["details"] == {"blob_digest": f"sha256:{sha(b'one')}", "identical": True}
    other = publish(client, COORDS, b"two", status=409).json["error"]
    assert other["details"]["identical"] is False
    assert client.get(f"/v1/{COORDS}/blob").body == b"one"


def test_a_refused_publish_stores_no_blob(repo: Repository, client: webtest.TestApp) -> None:
    publish(client, COORDS, b"one")
    publish(client, COORDS, b"two", status=409)
    client.get(f"/v1/blobs/sha256:{sha(b'two')}", status=404)
    blobs = repo.data_dir / "blobs"
    files = sorted(p.name for p in blobs.rglob("*") if p.is_file())
    assert files == [sha(b"one")]  # and nothing left in .tmp


def test_overwrite_when_the_feature_allows_it(repo: Repository, client: webtest.TestApp) -> None:
    publish(client, COORDS, b"one")
    repo.set_features({"allow_overwrite_artifacts": True})
    publish(client, COORDS, b"two")
    assert client.get(f"/v1/{COORDS}/blob").body == b"two"
    assert client.get("/v1/acme/app/versions").json["versions"][0]["blob_size"] == 3


def test_publish_honours_if_match_and_if_none_match(
    repo: Repository, client: webtest.TestApp
) -> None:
    # The entity tag is the blob's, as GET .../blob answers it.
    publish(client, COORDS, b"one", status=412, **{"If-Match": "*"})  # nothing there yet
    publish(client, COORDS, b"one", **{"If-None-Match": "*"})
    etag = client.get(f"/v1/{COORDS}/blob").headers["ETag"]
    assert etag == f'"sha256:{sha(b"one")}"'
    publish(client, COORDS, b"two", status=412, **{"If-None-Match": "*"})  # before the 409
    repo.set_features({"allow_overwrite_artifacts": True})
    for stale in ('"sha256:00"', f"W/{etag}"):  # If-Match compares strongly
        err = publish(client, COORDS, b"two", status=412, **{"If-Match": stale}).json["error"]
        assert err["code"] == "PRECONDITION_FAILED"
    publish(client, COORDS, b"two", status=412, **{"If-None-Match": etag})
    assert client.get(f"/v1/{COORDS}/blob").body == b"one"  # nothing overwritten
    published = [e for e in repo.events.read(0, 100)[0] if e["type"] == "artifact.published"]
    assert len(published) == 1
    publish(client, COORDS, b"two", **{"If-Match": etag})  # the one the client saw
    assert client.get(f"/v1/{COORDS}/blob").body == b"two"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda d: {"X-Checksum-Sha256": d.hex()}, id="x-checksum"),
        pytest.param(
            lambda d: {"Content-Digest": f"sha-256=:{base64.b64encode(d).decode()}:"},
            id="content-digest",
        ),
    ],
)
def test_announced_digest(client: webtest.TestApp, header: Any, repo: Repository) -> None:
    body = b"checked"
    publish(client, COORDS, body, **header(hashlib.sha256(body).digest()))
    other = b"tampered"
    bad = publish(
        client, "acme/app/2.0.0/linux", other, status=400, **header(hashlib.sha256(body).digest())
    )
    assert bad.json["error"]["code"] == "DIGEST_MISMATCH"
    client.get("/v1/acme/app/2.0.0/linux", status=404)
    files = sorted(p.name for p in (repo.data_dir / "blobs").rglob("*") if p.is_file())
    assert files == [sha(body)]  # no blob, no temporary file for the refused upload


def test_an_empty_checksum_header_is_refused(client: webtest.TestApp, repo: Repository) -> None:
    # An unset variable in a client's script sends the header empty: that is no check.
    res = publish(client, COORDS, b"unchecked", status=400, **{"X-Checksum-Sha256": ""})
    assert res.json["error"]["code"] == "INVALID_REQUEST"
    assert "X-Checksum-Sha256" in res.json["error"]["message"]
    client.get(f"/v1/{COORDS}", status=404)
    assert not [p for p in (repo.data_dir / "blobs").rglob("*") if p.is_file()]


def test_blob_too_large(tmp_path: Any) -> None:
    from goodrepo import schema as schema_mod

    s = schema_mod.default_schema()
    s["storage"]["blob_stores"]["primary"]["max_blob_bytes"] = 10
    with Repository.open(tmp_path / "d", schema=s) as repo:
        client = client_for(repo, principal("alice", "write", "read"))
        res = publish(client, COORDS, b"x" * 11, status=413)
        assert res.json["error"]["code"] == "BLOB_TOO_LARGE"
        client.get(f"/v1/{COORDS}", status=404)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 411, id="neither-length-nor-chunked"),
        pytest.param({"HTTP_TRANSFER_ENCODING": "chunked"}, 201, id="chunked"),
        pytest.param({"CONTENT_LENGTH": "5"}, 201, id="content-length"),
    ],
)
def test_upload_needs_a_length(
    client: webtest.TestApp, repo: Repository, headers: dict[str, str], status: int
) -> None:
    # As waitress passes it: wsgi.input ends where the body ends, for every request.
    environ = EnvironBuilder(f"/v1/{COORDS}/blob", method="PUT").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update(client.extra_environ, **headers)
    environ.update({"wsgi.input": io.BytesIO(b"bytes"), "wsgi.input_terminated": True})
    res = webtest.TestRequest(environ).get_response(client.app)
    assert res.status_int == status
    if status == 411:
        assert res.json["error"]["code"] == "LENGTH_REQUIRED"
        client.get(f"/v1/{COORDS}", status=404)
    else:
        assert client.get(f"/v1/{COORDS}/blob").body == b"bytes"


def test_fetch_missing_is_404(client: webtest.TestApp) -> None:
    err = client.get(f"/v1/{COORDS}/blob", status=404).json["error"]
    assert err["code"] == "NOT_FOUND"
    assert err["request_id"]


def test_range_and_conditional_requests(client: webtest.TestApp) -> None:
    body = bytes(range(256)) * 4
    publish(client, COORDS, body)
    url = f"/v1/{COORDS}/blob"
    part = client.get(url, headers={"Range": "bytes=10-19"}, status=206)
    assert part.body == body[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    assert client.get(url, headers={"Range": "bytes=-5"}, status=206).body == body[-5:]
    client.get(url, headers={"Range": f"bytes={len(body)}-"}, status=416)
    etag = client.get(url).headers["ETag"]
    client.get(url, headers={"If-None-Match": etag}, status=304)
    ok = client.get(url, headers={"Range": "bytes=0-1", "If-Range": etag}, status=206)
    assert ok.body == body[:2]
    whole = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"other"'}, status=200)
    assert whole.body == body


@pytest.mark.parametrize("path", [f"/v1/{COORDS}", f"/v1/{COORDS}/blob"], ids=["meta", "blob"])
def test_if_match_on_reads(client: webtest.TestApp, path: str) -> None:
    publish(client, COORDS, b"some bytes")
    etag = client.get(path).headers["ETag"]
    for method in (client.get, client.head):
        assert method(path, headers={"If-Match": "*"}, status=200).headers["ETag"] == etag
        assert method(path, headers={"If-Match": f'"x", {etag}'}, status=200)
        res = method(path, headers={"If-None-Match": f"W/{etag}"}, status=304)
        assert (res.body, res.headers["ETag"]) == (b"", etag)
    res = client.get(path, headers={"If-Match": '"stale"'}, status=412)
    assert res.json["error"]["code"] == "PRECONDITION_FAILED"
    assert res.headers["ETag"] == etag


def test_delete_needs_admin(repo: Repository, client: webtest.TestApp, admin: Any) -> None:
    publish(client, COORDS, b"x")
    assert client.delete(f"/v1/{COORDS}", status=403).json["error"]["code"] == "FORBIDDEN"
    admin.delete(f"/v1/{COORDS}", status=204)
    client.get(f"/v1/{COORDS}", status=404)
    client.get("/v1/acme/app/latest", status=404)
    admin.delete(f"/v1/{COORDS}", status=404)
    events, _ = repo.events.read(0, 10)
    assert [e["type"] for e in events] == ["artifact.published", "artifact.deleted"]


def test_scopes(anonymous: webtest.TestApp, reader: webtest.TestApp, client: Any) -> None:
    res = anonymous.get(f"/v1/{COORDS}", status=401)
    assert res.json["error"]["code"] == "UNAUTHORIZED"
    assert res.headers["WWW-Authenticate"].startswith("Bearer")
    assert publish(reader, COORDS, status=403).json["error"]["code"] == "FORBIDDEN"
    publish(client, COORDS)
    reader.get(f"/v1/{COORDS}/blob")


VERSIONS = ["1.0.0", "1.9.0", "1.10.0", "1.10.0-rc.1", "2.0.0-alpha", "0.9.0"]


def test_latest_uses_version_precedence(client: webtest.TestApp) -> None:
    for v in VERSIONS:
        publish(client, f"acme/app/{v}/linux", v.encode())
    latest = client.get("/v1/acme/app/latest").json
    assert latest["version"] == "1.10.0"
    assert set(latest) == {"namespace", "name", "version", "variant", "blob_digest"}
    pre = client.get("/v1/acme/app/latest?prerelease=true").json
    assert pre["version"] == "2.0.0-alpha"


def test_latest_variant_filter(client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux", b"a")
    publish(client, "acme/app/2.0.0/windows", b"b")
    assert client.get("/v1/acme/app/latest?variant=linux").json["version"] == "1.0.0"
    assert client.get("/v1/acme/app/latest?variant=Windows").json["version"] == "2.0.0"
    client.get("/v1/acme/app/latest?variant=mac", status=404)
    client.get("/v1/acme/app/latest?variant=../x", status=400)
    client.get("/v1/acme/app/latest?prerelease=maybe", status=400)


def test_latest_cache_sees_new_publishes(client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux")
    assert client.get("/v1/acme/app/latest").json["version"] == "1.0.0"
    publish(client, "acme/app/1.1.0/linux")
    assert client.get("/v1/acme/app/latest").json["version"] == "1.1.0"


def test_invalid_semver_is_refused(client: webtest.TestApp) -> None:
    err = publish(client, "acme/app/1.0/linux", status=400).json["error"]
    assert err["code"] == "VALIDATION_ERROR"
    assert err["details"]["field"] == "version"


def test_versions_newest_first_and_paginated(client: webtest.TestApp) -> None:
    for v in VERSIONS:
        publish(client, f"acme/app/{v}/linux", v.encode())
    res = client.get("/v1/acme/app/versions?limit=4")
    page = res.json
    assert [r["version"] for r in page["versions"]] == [
        "2.0.0-alpha",
        "1.10.0",
        "1.10.0-rc.1",
        "1.9.0",
    ]
    assert set(page["versions"][0]) == {
        "version",
        "variant",
        "blob_digest",
        "blob_size",
        "created_at",
    }
    assert page["next_cursor"]
    assert 'rel="next"' in res.headers["Link"]
    rest = client.get(f"/v1/acme/app/versions?limit=4&cursor={page['next_cursor']}").json
    assert [r["version"] for r in rest["versions"]] == ["1.0.0", "0.9.0"]
    assert rest["next_cursor"] is None
    client.get("/v1/acme/app/versions?limit=0", status=400)
    client.get("/v1/acme/app/versions?limit=1001", status=400)
    client.get("/v1/acme/app/versions?cursor=!!!", status=400)


def test_unknown_path_and_method(client: webtest.TestApp) -> None:
    assert client.get("/nope", status=404).json["error"]["code"] == "NOT_FOUND"
    res = client.post(f"/v1/{COORDS}/blob", b"x", status=405)
    assert res.json["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_schema_endpoint(client: webtest.TestApp, repo: Repository) -> None:
    assert client.get("/schema").json == repo.schema
