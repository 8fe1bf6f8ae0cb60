"""Garbage collection: retention rules, mark and sweep, the grace period, one run at a time."""

from __future__ import annotations

import copy
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import webtest

from goodrepo import gc as gc_mod
from goodrepo import schema as schema_mod
from goodrepo.errors import Conflict
from goodrepo.pipeline.runtime import DOCUMENTS
from goodrepo.repository import SCHEMA_KEY, Repository

from .test_stack import bearer, login, make

HOUR = 3600


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def set_gc(repo: Repository, grace: int = 0, **retention: Any) -> None:
    schema = copy.deepcopy(repo.schema)
    schema["gc"] = {"grace_period_seconds": grace, "retention": retention}
    repo.replace_schema(schema)


def blob_path(repo: Repository, data: bytes) -> Path:
    return repo.runtime.blob_stores["primary"].path_for(sha(data))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def delete(repo: Repository, coords: str) -> None:
    namespace, name, version, variant = coords.split("/")
    repo.call(
        "delete_artifact",
        {"namespace": namespace, "name": name, "version": version, "variant": variant},
    )


def events(repo: Repository) -> list[dict[str, Any]]:
    return repo.events.read(0, 1000)[0]


def test_a_blob_nothing_names_is_swept_once_past_the_grace_period(repo: Repository) -> None:
    repo.publish("acme", "app", "1.0.0", "linux", b"kept")
    repo.publish("acme", "app", "2.0.0", "linux", b"orphan!")
    repo.publish("acme", "lib", "1.0.0", "linux", b"kept")  # the same bytes, named twice
    delete(repo, "acme/app/2.0.0/linux")
    delete(repo, "acme/lib/1.0.0/linux")
    set_gc(repo, grace=HOUR)

    report = repo.gc()
    assert (report["blobs_freed"], report["blobs_in_grace"]) == (0, 1)  # just deleted
    assert blob_path(repo, b"orphan!").exists()

    age(blob_path(repo, b"orphan!"), 2 * HOUR)
    age(blob_path(repo, b"kept"), 2 * HOUR)
    dry = repo.gc(dry_run=True)
    assert (dry["dry_run"], dry["blobs_freed"], dry["bytes_freed"]) == (True, 1, 7)
    assert blob_path(repo, b"orphan!").exists()

    report = repo.gc(by="root")
    assert (report["blobs_freed"], report["bytes_freed"], report["blobs_in_grace"]) == (1, 7, 0)
    assert not blob_path(repo, b"orphan!").exists()
    with repo.open_blob(sha(b"kept")) as kept:  # still named by acme/app 1.0.0
        assert kept.read() == b"kept"
    assert repo.gc()["blobs_freed"] == 0
    assert report["versions_removed"] == []  # no retention rule


def test_bytes_published_again_while_a_run_marks_are_kept(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run marks before the publish commits. The publish finds the old, unnamed file
    # and touches it, so the sweep spares it: the new artifact's blob survives.
    repo.publish("acme", "app", "1.0.0", "linux", b"again")
    delete(repo, "acme/app/1.0.0/linux")
    age(blob_path(repo, b"again"), 2 * HOUR)
    set_gc(repo, grace=HOUR)
    mark = gc_mod._mark

    def mark_then_publish(runtime: Any) -> Any:
        marked = mark(runtime)
        repo.publish("acme", "app", "1.0.1", "linux", b"again")
        return marked

    monkeypatch.setattr(gc_mod, "_mark", mark_then_publish)
    report = repo.gc()
    assert (report["blobs_freed"], report["blobs_in_grace"]) == (0, 1)
    with repo.open_blob(sha(b"again")) as blob:
        assert blob.read() == b"again"


def _versions(repo: Repository) -> None:
    for version, variants in [
        ("1.0.0", ["linux"]),
        ("1.1.0", ["linux"]),
        ("2.0.0", ["linux", "windows"]),
        ("3.0.0-rc.1", ["linux"]),
        ("3.0.0", ["linux"]),
    ]:
        for variant in variants:
            repo.publish("acme", "app", version, variant, f"{version}/{variant}".encode())
    repo.publish("acme", "other", "1.0.0", "linux", b"other")
    repo.tag("acme", "app", "stable", "1.0.0", "linux")


def test_retention_keeps_the_newest_versions_and_the_tagged_ones(repo: Repository) -> None:
    _versions(repo)
    set_gc(repo, grace=0, keep_last_versions=2, keep_tagged=True)
    before = len(events(repo))

    dry = repo.gc(dry_run=True)
    # Newest first: 3.0.0 and 3.0.0-rc.1 are the two newest versions, 3.0.0 and 2.0.0 the
    # two newest releases; 1.0.0 is tagged.
    expected = ["acme/app/1.1.0/linux"]
    assert (dry["versions_removed"], dry["versions_removed_count"]) == (expected, 1)
    assert dry["blobs_freed"] == 1
    assert len(events(repo)) == before
    assert repo.metadata("acme", "app", "2.0.0", "linux")

    report = repo.gc(by="root")
    assert report["versions_removed"] == expected and report["blobs_freed"] == 1
    deleted = [e for e in events(repo)[before:] if e["type"] == "artifact.deleted"]
    assert [(e["payload"]["version"], e["payload"]["deleted_by"]) for e in deleted] == [
        ("1.1.0", "root")
    ]
    rows = repo.call("versions", {"namespace": "acme", "name": "app"}).get_json()["versions"]
    assert [r["version"] for r in rows] == ["3.0.0", "3.0.0-rc.1", "2.0.0", "2.0.0", "1.0.0"]
    assert repo.metadata("acme", "other", "1.0.0", "linux")
    assert repo.gc()["versions_removed_count"] == 0


def test_newer_prereleases_never_cost_a_package_its_newest_releases(repo: Repository) -> None:
    for version in ["1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0-rc.2"]:
        repo.publish("acme", "app", version, "linux", version.encode())
    set_gc(repo, grace=0, keep_last_versions=1)
    assert repo.gc()["versions_removed"] == ["acme/app/2.0.0-rc.1/linux", "acme/app/1.0.0/linux"]
    assert repo.latest("acme", "app")["version"] == "1.1.0"  # type: ignore[index]


def test_a_document_the_active_schema_does_not_declare_keeps_its_blob(
    repo: Repository,
) -> None:
    # Such as one stored under an earlier schema (before the stored layout was fixed):
    # what the active schema does not name may still be wanted.
    repo.publish("acme", "app", "1.0.0", "linux", b"kept")
    age(blob_path(repo, b"kept"), 2 * HOUR)
    with repo.kv.transaction() as txn:
        txn.delete(DOCUMENTS + b"meta\x00artifact/acme/app/1.0.0/linux")
        txn.put_json(DOCUMENTS + b"old\x00pkg/acme/app", {"blob_digest": sha(b"kept")})
    set_gc(repo, grace=0)
    assert repo.gc()["blobs_freed"] == 0
    with repo.open_blob(sha(b"kept")) as blob:
        assert blob.read() == b"kept"


def test_a_blob_named_in_any_field_of_a_document_is_kept(repo: Repository) -> None:
    # A custom schema may name blobs in fields of its own, at any depth, with or without
    # the algorithm: a blob is collected only when no document holds its digest at all.
    bodies = [b"sbom", b"sig", b"bare", b"gone"]
    for i, body in enumerate(bodies):
        repo.publish("acme", "app", f"1.0.{i}", "linux", body)
        age(blob_path(repo, body), 2 * HOUR)
    with repo.kv.transaction() as txn:
        for i in range(len(bodies)):
            txn.delete(DOCUMENTS + f"meta\x00artifact/acme/app/1.0.{i}/linux".encode())
        txn.put_json(
            DOCUMENTS + b"meta\x00release/acme/app/1",
            {
                "sbom": sha(b"sbom"),
                "signatures": [{"blob": sha(b"sig")}],
                "checksum": sha(b"bare").removeprefix("sha256:"),
                "note": f"not a digest: {sha(b'gone')}",
            },
        )
    set_gc(repo, grace=0)
    assert repo.gc(dry_run=True)["blobs_freed"] == 1
    assert repo.gc()["blobs_freed"] == 1
    for body in bodies[:3]:
        with repo.open_blob(sha(body)) as blob:
            assert blob.read() == body
    assert not blob_path(repo, b"gone").exists()


def test_retention_without_keep_tagged_deletes_the_tag_too(repo: Repository) -> None:
    _versions(repo)
    set_gc(repo, grace=0, keep_last_versions=2, keep_tagged=False)
    report = repo.gc()
    assert report["versions_removed"] == ["acme/app/1.1.0/linux", "acme/app/1.0.0/linux"]
    assert [e["type"] for e in events(repo)[-3:]] == [
        "artifact.deleted",
        "tag.deleted",
        "artifact.deleted",
    ]


def test_retention_spares_what_is_younger_than_min_age_days(repo: Repository) -> None:
    _versions(repo)
    set_gc(repo, grace=0, keep_last_versions=1, min_age_days=1)
    assert repo.gc()["versions_removed_count"] == 0


def test_retention_spares_an_artifact_tagged_after_it_looked(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tags read up front are stale; the delete checks again in its transaction.
    _versions(repo)
    set_gc(repo, grace=0, keep_last_versions=2, keep_tagged=True)
    monkeypatch.setattr(gc_mod, "_tag_targets", lambda runtime: set())
    report = repo.gc()
    assert report["versions_removed"] == ["acme/app/1.1.0/linux"]
    assert repo.metadata("acme", "app", "1.0.0", "linux")
    tag = repo.call("get_tag", {"namespace": "acme", "name": "app", "tag": "stable"}).get_json()
    assert tag["target_version"] == "1.0.0"


def test_an_artifact_retention_cannot_delete_is_counted_and_the_run_goes_on(
    repo: Repository,
) -> None:
    repo.publish("acme", "app", "1.0.0+build.1", "linux", b"old")
    repo.publish("acme", "app", "1.1.0", "linux", b"older")
    repo.publish("acme", "app", "2.0.0", "linux", b"new")
    delete(repo, "acme/app/1.1.0/linux")
    schema = copy.deepcopy(repo.schema)
    schema["entities"]["artifact"]["fields"]["version"]["pattern"] = "^[0-9][0-9.]{0,127}$"
    schema["gc"] = {"grace_period_seconds": 0, "retention": {"keep_last_versions": 1}}
    repo.replace_schema(schema)  # 1.0.0+build.1 is no longer a valid version
    report = repo.gc()
    assert (report["versions_removed_count"], report["retention_errors"]) == (0, 1)
    assert report["blobs_freed"] == 1  # the sweep still ran


def test_an_artifact_a_changed_normaliser_hides_is_a_retention_error(repo: Repository) -> None:
    # "my.app" now reads as "my-app": not found, though its row is there. Not "deleted
    # meanwhile": counted and logged.
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        repo.publish("acme", "my.app", version, "linux", version.encode())
    schema = copy.deepcopy(repo.schema)
    schema["entities"]["artifact"]["fields"]["name"]["normalize"].append("dot_to_dash")
    schema["gc"] = {"grace_period_seconds": 0, "retention": {"keep_last_versions": 1}}
    repo.replace_schema(schema)
    report = repo.gc()
    assert (report["versions_removed_count"], report["retention_errors"]) == (0, 2)


def test_a_stored_min_age_beyond_the_bound_still_collects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored before min_age_days had a bound: it opens with a warning, and GC still runs.
    with Repository.open(tmp_path / "data") as repo:
        _versions(repo)
        orphan = b"nothing names me"
        repo.publish("acme", "gone", "1.0.0", "linux", orphan)
        delete(repo, "acme/gone/1.0.0/linux")
        age(blob_path(repo, orphan), 2 * HOUR)
        old = copy.deepcopy(repo.schema)
        old["gc"] = {"grace_period_seconds": 0, "retention": {"keep_last_versions": 1}}
        old["gc"]["retention"]["min_age_days"] = 1_000_000
        repo.kv.put_json(SCHEMA_KEY, old)
    with caplog.at_level("WARNING"), Repository.open(tmp_path / "data") as repo:
        assert "min_age_days" in caplog.text
        report = repo.gc()
        assert (report["versions_removed_count"], report["blobs_freed"]) == (0, 1)


def test_a_second_store_on_the_same_root_with_another_layout_is_swept(
    tmp_path: Path,
) -> None:
    schema = schema_mod.default_schema()
    stores = schema["storage"]["blob_stores"]
    stores["flat"] = {**stores["primary"], "path_template": "flat/{digest}"}
    for route in schema["routes"]:
        for step in route["pipeline"]:
            if step.get("store") == "primary":
                step["store"] = "flat"
    schema["gc"] = {"grace_period_seconds": 60}
    with Repository.open(tmp_path / "data", schema=schema) as repo:
        repo.publish("acme", "app", "1.0.0", "linux", b"orphan")
        delete(repo, "acme/app/1.0.0/linux")
        path = repo.runtime.blob_stores["flat"].path_for(sha(b"orphan"))
        age(path, 2 * HOUR)
        assert repo.gc(dry_run=True)["blobs_freed"] == 1
        assert repo.gc()["blobs_freed"] == 1
        assert not path.exists()


def test_one_run_at_a_time(repo: Repository) -> None:
    running = repo._gc._running
    running.acquire()
    try:
        with pytest.raises(Conflict, match="already running"):
            repo.gc()
    finally:
        running.release()
    assert repo.gc()["ok"] is True


def test_post_admin_gc(tmp_path: Path) -> None:
    app = make(tmp_path)
    try:
        web = webtest.TestApp(app)
        admin = bearer(login(web)["token"])
        report = web.post("/admin/gc?dry_run=true", headers=admin).json
        assert report == {
            "ok": True,
            "dry_run": True,
            "versions_removed_count": 0,
            "versions_removed": [],
            "retention_errors": 0,
            "blobs_freed": 0,
            "bytes_freed": 0,
            "blobs_in_grace": 0,
            "grace_period_seconds": 3600,
        }
        assert web.post("/admin/gc", headers=admin).json["dry_run"] is False
        for bad in ("maybe", ""):  # an empty switch is refused, never a real run
            url = f"/admin/gc?dry_run={bad}"
            err = web.post(url, headers=admin, status=400).json["error"]
            assert (err["code"], err["details"]["field"]) == ("VALIDATION_ERROR", "dry_run")
        web.post("/admin/gc", status=401)
        web.get("/admin/gc", headers=admin, status=405)
    finally:
        app.close()
