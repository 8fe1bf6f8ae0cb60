"""Garbage collection: retention, then mark and sweep of the blob stores.

A run has three steps, each safe while the repository serves:

1. **Retention** (only when the schema's ``gc.retention.keep_last_versions`` is set): in
   every package of every version index, the versions that are neither among the newest
   ``keep_last_versions`` nor among the newest ``keep_last_versions`` releases (by the
   index's version order; all variants of a kept version are kept) are deleted through
   the schema's ``delete_artifact`` route, so each deletion emits its events and
   cascades as any other. ``keep_tagged`` spares artifacts a tag
   points at; ``min_age_days`` spares those created more recently. Each artifact is read
   first (``get_artifact``) and deleted only if it is still that document (``If-Match``)
   and, with ``keep_tagged``, untagged (``?unless_tagged=true``): both are checked in the
   delete's transaction, so a tag or a new document that arrives meanwhile wins.
2. **Mark**: every blob digest that any document in the KV holds, in any field and at any
   depth (``sha256:<hex>`` or the bare hex), whether or not the active schema declares the
   document's kind: a custom schema may name blobs in fields of its own.
3. **Sweep**: every blob of every blob store that nothing marked and whose file is older
   than ``gc.grace_period_seconds`` is removed. A publish dates its blob when it stores it
   (or touches it, when the bytes are already there) just before committing the document
   that names it, so the grace period covers a publish that commits after the mark.

A dry run reports what a run would remove and changes nothing. One run at a time per
repository; another is ``Conflict``.

Usage::

    report = repo.gc(dry_run=True)
    report["blobs_freed"], report["bytes_freed"], report["versions_removed"]
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Conflict, GoodrepoError, NotFound, PreconditionFailed, ValidationError
from .pipeline.runtime import DOCUMENTS
from .schema.meta import MAX_AGE_DAYS
from .storage.kv import loads

if TYPE_CHECKING:
    from .pipeline import Runtime
    from .repository import Repository
    from .storage.index import VersionIndex

log = logging.getLogger(__name__)

READ_ROUTE = "get_artifact"
DELETE_ROUTE = "delete_artifact"
TAG_DOCUMENT = "tag"
LISTED = 1000  # versions named in a report; the count is always whole
_PAGE = 1000


class GarbageCollector:
    """Runs garbage collection on one repository (see the module docs)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._running = threading.Lock()

    def run(self, *, dry_run: bool = False, by: str = "system") -> dict[str, Any]:
        """Collect, or with ``dry_run`` only report; returns the report."""
        if not self._running.acquire(blocking=False):
            raise Conflict("a garbage collection is already running")
        try:
            return self._run(dry_run, by)
        finally:
            self._running.release()

    def _run(self, dry_run: bool, by: str) -> dict[str, Any]:
        runtime = self.repo.runtime
        gc = runtime.schema.get("gc", {})
        grace = gc.get("grace_period_seconds", 3600)
        started = time.time()
        removed, errors = self._retention(runtime, gc.get("retention", {}), dry_run, by)
        marked = _mark(runtime)
        if dry_run:  # as if retention had deleted its artifacts
            for _, digests in removed:
                marked.subtract(digests)
        blobs = freed = in_grace = 0
        layouts: set[tuple[Path, str]] = set()
        for store in runtime.blob_stores.values():
            layout = (store.root.resolve(), store.path_template)
            if layout in layouts:
                continue  # two stores with one root and one layout hold the same files
            layouts.add(layout)
            for digest in store.iter_digests():
                if marked[digest] > 0:
                    continue
                size = store.sweep(digest, started - grace, dry_run=dry_run)
                if size is None:
                    in_grace += 1
                else:
                    blobs += 1
                    freed += size
        log.info(
            "garbage collection%s by %s: %d version(s), %d blob(s), %d byte(s)",
            " (dry run)" if dry_run else "",
            by,
            len(removed),
            blobs,
            freed,
        )
        return {
            "ok": True,
            "dry_run": dry_run,
            "versions_removed_count": len(removed),
            "versions_removed": [key for key, _ in removed[:LISTED]],
            "retention_errors": errors,
            "blobs_freed": blobs,
            "bytes_freed": freed,
            "blobs_in_grace": in_grace,
            "grace_period_seconds": grace,
        }

    def _retention(
        self, runtime: Runtime, rules: dict[str, Any], dry_run: bool, by: str
    ) -> tuple[list[tuple[str, set[str]]], int]:
        """The artifacts retention removes (removed unless ``dry_run``), as ``(key, blob
        digests it names)``, and how many it could not remove for an error (each one logged)."""
        keep = rules.get("keep_last_versions")
        if keep is None:
            return [], 0
        if READ_ROUTE not in runtime.routes or DELETE_ROUTE not in runtime.routes:
            raise Conflict(f"retention works through the routes {READ_ROUTE} and {DELETE_ROUTE}")
        keep_tagged = rules.get("keep_tagged", True)
        tagged = _tag_targets(runtime) if keep_tagged else set()
        min_age = rules.get("min_age_days", 0)
        # Bounded by the checks, but a schema stored before they were may hold more.
        cutoff = datetime.now(timezone.utc) - timedelta(days=min(min_age, MAX_AGE_DAYS))
        oldest = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        principal: dict[str, Any] = {"sub": by, "scopes": ["admin"], "token_id": None}
        removed: list[tuple[str, set[str]]] = []
        errors = 0
        for index in runtime.indexes.values():
            for group in _groups(index):
                for row in _beyond(index, group, keep):
                    values = {field: row[field] for field in index.group_by}
                    values[index.version_field] = row[index.version_field]
                    values[index.variant_field] = row[index.variant_field]
                    key = "/".join(values.values())
                    if key in tagged:
                        continue
                    try:
                        current = self.repo.call(READ_ROUTE, values, principal=principal)
                        meta = current.get_json()
                        if not isinstance(meta, dict):
                            meta = {}
                        created = meta.get("created_at")
                        if min_age and not (isinstance(created, str) and created <= oldest):
                            continue
                        if not dry_run:
                            self.repo.call(
                                DELETE_ROUTE,
                                values,
                                query={"unless_tagged": "true" if keep_tagged else "false"},
                                headers={"If-Match": current.headers.get("ETag", "")},
                                principal=principal,
                            )
                    except NotFound as err:
                        if index.has_row(row):  # not deleted: unreadable under this schema
                            errors += 1
                            log.warning("retention could not remove %s: %s", key, err.message)
                        continue  # else deleted meanwhile
                    except (PreconditionFailed, Conflict):
                        continue  # replaced or tagged meanwhile
                    except GoodrepoError as err:
                        errors += 1
                        log.warning("retention could not remove %s: %s", key, err.message)
                        continue
                    removed.append((key, set(_digests(meta))))
        return removed, errors


def _tag_targets(runtime: Runtime) -> set[str]:
    """What the tags point at, read up front so that tagged artifacts cost no request and
    a dry run's figures are right; the delete checks again in its transaction."""
    doc = runtime.documents.get(TAG_DOCUMENT)
    if doc is None:
        return set()
    prefix = doc.prefix + doc.template.split("{", 1)[0].encode("ascii")
    targets = set()
    for _, raw in runtime.kv.scan(prefix):
        value = loads(raw)
        if isinstance(value, dict) and isinstance(value.get("target_key"), str):
            targets.add(value["target_key"])
    return targets


def _mark(runtime: Runtime) -> Counter[str]:
    """How many documents name each blob digest: every document in the KV, whether or not
    the active schema declares its kind (a schema swapped back brings them back)."""
    marked: Counter[str] = Counter()
    for _, raw in runtime.kv.scan(DOCUMENTS):
        marked.update(set(_digests(loads(raw))))
    return marked


_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def _digests(document: Any) -> Iterator[str]:
    """Every blob digest ``document`` holds, as ``sha256:<hex>``: any string of it, at any
    depth, that is one (a bare hex too, which the blob stores also take)."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            match = _DIGEST.fullmatch(value) if len(value) in (64, 71) else None
            if match:
                yield f"sha256:{match[1]}"
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _groups(index: VersionIndex, parent: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every full group (package) of ``index``, depth first."""
    if len(parent) == len(index.group_by):
        yield parent
        return
    cursor = None
    while True:
        page, cursor = index.groups(list(parent), limit=_PAGE, cursor=cursor)
        for name, _ in page:
            yield from _groups(index, (*parent, name))
        if cursor is None:
            return


def _beyond(index: VersionIndex, group: tuple[str, ...], keep: int) -> Iterator[dict[str, Any]]:
    """The rows of ``group`` whose version is neither among its ``keep`` newest nor among
    its ``keep`` newest releases (newer prereleases never cost a package its releases)."""
    kept: set[str] = set()
    gone: set[str] = set()
    versions = releases = 0
    cursor = None
    while True:
        rows, cursor = index.versions(list(group), limit=_PAGE, cursor=cursor)
        for row in rows:
            version = row[index.version_field]
            if version not in kept and version not in gone:
                try:
                    release = not index.scheme.is_prerelease(version)
                except ValidationError:  # no longer valid under a changed scheme
                    release = False
                versions += 1
                releases += release
                fresh = versions <= keep or (release and releases <= keep)
                (kept if fresh else gone).add(version)
            if version in gone:
                yield row
        if cursor is None:
            return
