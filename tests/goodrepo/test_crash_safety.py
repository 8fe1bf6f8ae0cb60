"""Crash safety: a process killed with SIGKILL leaves either a whole artifact or none.

Each test runs a child Python process that opens a Repository on a data directory in
``tmp_path`` and publishes; the child tells the parent when it has reached the point of
interest (by creating a file), then waits; the parent SIGKILLs it and reopens the
repository in this process. Every wait is bounded and the child exits by itself if the
parent never kills it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from goodrepo.repository import Repository

from .conftest import WRITER, client_for, publish

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
MIB = 1 << 20

# Shared by every child: open the repository named on the command line, and a way to
# tell the parent "now".
PRELUDE = """
import hashlib, os, sys, threading, time
from pathlib import Path
from goodrepo.repository import Repository

data_dir, ready = Path(sys.argv[1]), Path(sys.argv[2])
repo = Repository.open(data_dir)

def signal_parent(text="ready"):
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, ready)

def wait_to_be_killed():
    time.sleep(60)  # the parent kills us long before; never hang forever
    sys.exit(3)
"""

MID_UPLOAD = """
import io
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response
from middleware.keys import PRINCIPAL

TOTAL, SENT_BEFORE_STALL = 16 * MIB, 4 * MIB

class StallingBody(io.RawIOBase):
    # Sends 4 MiB of the 16 MiB announced, then stalls for good.
    sent = 0
    def readable(self):
        return True
    def readinto(self, buffer):
        if self.sent >= SENT_BEFORE_STALL:
            signal_parent()
            wait_to_be_killed()
        n = min(len(buffer), SENT_BEFORE_STALL - self.sent)
        buffer[:n] = b"x" * n
        self.sent += n
        return n

environ = EnvironBuilder(path="/v1/acme/app/1.0.0/linux/blob", method="PUT",
                         content_type="application/octet-stream").get_environ()
environ["wsgi.input"] = StallingBody()
environ["CONTENT_LENGTH"] = str(TOTAL)
environ[PRINCIPAL] = {"sub": "child", "scopes": ["write"], "token_id": None, "claims": {}}
Response.from_app(repo.wsgi_app(), environ)
sys.exit(4)  # not reached: the upload never completes
"""

# Hold the KV store's commit lock, so that the publish stores its blob (rename into place)
# at txn.commit and then blocks before its batch is written.
BLOB_COMMITTED = """
BODY = hashlib.sha256(b"seed").digest() * (MIB // 16)
HEX = hashlib.sha256(BODY).hexdigest()
repo.kv._commit_lock.acquire()
publisher = threading.Thread(
    target=lambda: repo.publish("acme", "app", "1.0.0", "linux", BODY), daemon=True)
publisher.start()
final = repo.runtime.blob_stores["primary"].path_for(HEX)
deadline = time.monotonic() + 20
while not final.exists():
    if time.monotonic() > deadline:
        sys.exit(5)
    time.sleep(0.005)
time.sleep(0.05)  # let the publisher reach the lock
signal_parent()
wait_to_be_killed()
"""

# Publish one artifact after another; the parent kills us at some point.
PUBLISH_LOOP = """
for i in range(100000):
    body = hashlib.sha256(str(i).encode()).digest() * (i % 7 * 4096 + 1)
    repo.publish("acme", "app", f"1.{i}.0", "linux", body)
    if i == 4:
        signal_parent()
wait_to_be_killed()
"""


def run_child_until_ready(tmp_path: Path, script: str) -> subprocess.Popen[bytes]:
    """Start a child running ``script``; return once it signalled, still running."""
    ready = tmp_path / "ready"
    log = (tmp_path / "child.log").open("wb")
    code = textwrap.dedent(PRELUDE) + f"MIB = {MIB}\n" + textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "data"), str(ready)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready.exists():
            if child.poll() is not None:
                pytest.fail(f"child exited early ({child.returncode}): {child_log(tmp_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"child never signalled: {child_log(tmp_path)}")
            time.sleep(0.01)
    except BaseException:
        kill(child)
        raise
    return child


def child_log(tmp_path: Path) -> str:
    return (tmp_path / "child.log").read_text(errors="replace")[-2000:]


def kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=TIMEOUT) in (-signal.SIGKILL, 3, 4, 5)


def blob_files(data_dir: Path) -> dict[str, Path]:
    """Every file under blobs/sha256, checked to be whole and where its digest says."""
    found = {}
    for path in (data_dir / "blobs" / "sha256").rglob("*"):
        if path.is_file():
            rel = path.relative_to(data_dir / "blobs" / "sha256").parts
            assert rel == (path.name[:2], path.name[2:4], path.name), path
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, (
                f"partial content at a blob path: {path.name}"
            )
            found[path.name] = path
    return found


def temp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "blobs" / ".tmp").iterdir())


def all_versions(client: Any) -> list[dict[str, Any]]:
    rows, url = [], "/v1/acme/app/versions?limit=3"
    while True:
        page = client.get(url).json
        rows += page["versions"]
        if page["next_cursor"] is None:
            return rows
        url = f"/v1/acme/app/versions?limit=3&cursor={page['next_cursor']}"


def test_kill_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    child = run_child_until_ready(tmp_path, MID_UPLOAD)
    data = tmp_path / "data"
    try:
        staged = temp_files(data)
        assert len(staged) == 1 and staged[0].stat().st_size == 4 * MIB
        assert blob_files(data) == {}
    finally:
        kill(child)
    assert len(temp_files(data)) == 1  # the dead child's partial upload

    with Repository.open(data) as repo:
        assert temp_files(data) == []  # removed by the reopen (clean_stale_temp)
        client = client_for(repo, WRITER)
        assert client.get("/v1/acme/app/1.0.0/linux", status=404).json["error"]["code"] == (
            "NOT_FOUND"
        )
        client.get("/v1/acme/app/1.0.0/linux/blob", status=404)
        client.get("/v1/acme/app/latest", status=404)
        assert client.get("/v1/acme/app/versions").json["versions"] == []
        assert client.get("/v1/namespaces").json["namespaces"] == []
        assert blob_files(data) == {}
        assert repo.events.last_seq() == 0
        # The coordinates are free: a complete publish now succeeds.
        publish(client, "acme/app/1.0.0/linux", b"complete")
        assert client.get("/v1/acme/app/1.0.0/linux/blob").body == b"complete"


def test_kill_after_the_blob_commit_before_the_metadata_commit(tmp_path: Path) -> None:
    body = hashlib.sha256(b"seed").digest() * (MIB // 16)
    hex_ = hashlib.sha256(body).hexdigest()
    child = run_child_until_ready(tmp_path, BLOB_COMMITTED)
    data = tmp_path / "data"
    try:
        assert list(blob_files(data)) == [hex_]
    finally:
        kill(child)

    with Repository.open(data) as repo:
        assert temp_files(data) == []
        assert list(blob_files(data)) == [hex_]  # whole, unreferenced: left to GC
        client = client_for(repo, WRITER)
        client.get("/v1/acme/app/1.0.0/linux", status=404)
        client.get("/v1/acme/app/latest", status=404)
        assert client.get("/v1/acme/packages").json["packages"] == []
        assert repo.events.last_seq() == 0
        res = publish(client, "acme/app/1.0.0/linux", body)
        assert res.json["digest"] == f"sha256:{hex_}"
        assert client.get("/v1/acme/app/1.0.0/linux/blob").body == body
        assert list(blob_files(data)) == [hex_]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2], ids=["at-once", "50ms", "200ms"])
def test_kill_during_a_stream_of_publishes(tmp_path: Path, delay: float) -> None:
    child = run_child_until_ready(tmp_path, PUBLISH_LOOP)
    time.sleep(delay)
    kill(child)
    data = tmp_path / "data"
    blobs = blob_files(data)  # whatever is visible is whole, even before the reopen

    with Repository.open(data) as repo:
        assert temp_files(data) == []
        client = client_for(repo, WRITER)
        rows = all_versions(client)
        assert len(rows) >= 5
        published, _ = repo.events.read(0, 100_000)
        assert [e["type"] for e in published] == ["artifact.published"] * len(rows)
        assert {e["payload"]["version"] for e in published} == {r["version"] for r in rows}
        # Every visible artifact is whole: metadata, index row, event and blob agree.
        for row in rows:
            meta = client.get(f"/v1/acme/app/{row['version']}/linux").json
            assert meta["blob_digest"] == row["blob_digest"]
            assert meta["blob_size"] == row["blob_size"]
            hex_ = row["blob_digest"].removeprefix("sha256:")
            assert hex_ in blobs
            assert blobs[hex_].stat().st_size == row["blob_size"]
        versions = sorted(int(r["version"].split(".")[1]) for r in rows)
        assert versions == list(range(len(rows)))  # published in order, none lost between
        latest = client.get("/v1/acme/app/latest").json["version"]
        assert latest == f"1.{len(rows) - 1}.0"
        assert client.get("/v1/acme/packages").json["packages"] == [
            {"name": "app", "latest": latest, "versions_count": len(rows)}
        ]
        # The next publish after the crash gets the next sequence number.
        publish(client, "acme/app/9.0.0/linux", b"after the crash")
        assert repo.events.last_seq() == len(rows) + 1
