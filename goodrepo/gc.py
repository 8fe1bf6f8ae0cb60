"""Garbage collection: retention, then mark and sweep of the blob stores.

A run has three steps, each safe while the repository serves:

1. **Retention** (only when the schema's ``gc.retention.keep_last_versions`` is set): in
   every package of every version index, the versions beyond the newest
   ``keep_last_versions`` (by the index's version order; all variants of a kept version are
   kept) are deleted through the schema's ``delete_artifact`` route, so each deletion
   emits its events and cascades as any other. ``keep_tagged`` spares artifacts a tag
   points at; ``min_age_days`` spares those created more recently.
2. **Mark**: every ``blob_digest`` of every document of the schema's KV stores.
3. **Sweep**: every blob of every blob store that nothing marked and whose file is older
   than ``gc.grace_period_seconds`` is removed. A publish stores (or, when the bytes are
   already there, touches) its blob just before committing the document that names it,
   so the grace period covers a publish that commits after the mark.

A dry run reports what a run would remove and changes nothing. One run at a time per
repository; another is ``Conflict``.

Usage::

    report = repo.gc(dry_run=True)
    report["blobs_freed"], report["bytes_freed"], report["versions_removed"]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .errors import Conflict, NotFound
from .storage.kv import loads

if TYPE_CHECKING:
    from .pipeline import Runtime
    from .repository import Repository
    from .storage.index import VersionIndex

log = logging.getLogger(__name__)

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
        removed = self._retention(runtime, gc.get("retention", {}), dry_run, by)
        marked = self._mark(runtime, skip={key for key, _ in removed} if dry_run else set())
        blobs = freed = in_grace = 0
        for store in runtime.blob_stores.values():
            for digest in store.iter_digests():
                if digest in marked:
                    continue
                size = store.sweep(digest, started - grace, dry_run=dry_run)
                if size is None:
                    in_grace += 1
                else:
                    blobs += 1
                    freed += size
        report = {
            "ok": True,
            "dry_run": dry_run,
            "versions_removed_count": len(removed),
            "versions_removed": [key for key, _ in removed[:LISTED]],
            "blobs_freed": blobs,
            "bytes_freed": freed,
            "blobs_in_grace": in_grace,
            "grace_period_seconds": grace,
        }
        log.info(
            "garbage collection%s by %s: %d version(s), %d blob(s), %d byte(s)",
            " (dry run)" if dry_run else "",
            by,
            len(removed),
            blobs,
            freed,
        )
        return report

    # -- retention ---------------------------------------------------------------------

    def _retention(
        self, runtime: Runtime, rules: dict[str, Any], dry_run: bool, by: str
    ) -> list[tuple[str, dict[str, str]]]:
        """The artifacts retention removes (removed unless ``dry_run``): ``(key, values)``."""
        keep = rules.get("keep_last_versions")
        if keep is None:
            return []
        if DELETE_ROUTE not in runtime.routes:
            raise Conflict(
                f"retention deletes through a {DELETE_ROUTE} route; the schema has none"
            )
        tagged = self._tag_targets(runtime) if rules.get("keep_tagged", True) else set()
        min_age = timedelta(days=rules.get("min_age_days", 0))
        cutoff = (datetime.now(timezone.utc) - min_age).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        principal: dict[str, Any] = {
            "sub": by,
            "scopes": ["admin"],
            "token_id": None,
            "claims": {},
        }
        removed = []
        for index in runtime.indexes.values():
            for group in _groups(index):
                for row in _beyond(index, group, keep):
                    values = {field: row[field] for field in index.group_by}
                    values[index.version_field] = row[index.version_field]
                    values[index.variant_field] = row[index.variant_field]
                    key = "/".join(values.values())
                    if key in tagged or str(row.get("created_at", "")) > cutoff:
                        continue
                    if not dry_run:
                        try:
                            self.repo.call(DELETE_ROUTE, values, principal=principal)
                        except NotFound:
                            continue  # deleted meanwhile
                    removed.append((key, values))
        return removed

    def _tag_targets(self, runtime: Runtime) -> set[str]:
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

    # -- mark --------------------------------------------------------------------------

    def _mark(self, runtime: Runtime, skip: set[str]) -> set[str]:
        """Every blob digest a document names (documents in ``skip``, by artifact key,
        left out: what a dry run's retention would have deleted)."""
        marked: set[str] = set()
        for prefix in {doc.prefix for doc in runtime.documents.values()}:
            for _, raw in runtime.kv.scan(prefix):
                value = loads(raw)
                if not isinstance(value, dict):
                    continue
                digest = value.get("blob_digest")
                if isinstance(digest, str) and _artifact_key(value) not in skip:
                    marked.add(digest)
        return marked


def _artifact_key(value: dict[str, Any]) -> str:
    parts = (value.get(f) for f in ("namespace", "name", "version", "variant"))
    return "/".join(p if isinstance(p, str) else "" for p in parts)


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
    """The rows of ``group`` whose version is not among its ``keep`` newest."""
    versions: set[str] = set()
    cursor = None
    while True:
        rows, cursor = index.versions(list(group), limit=_PAGE, cursor=cursor)
        for row in rows:
            versions.add(row[index.version_field])
            if len(versions) > keep:
                yield row
        if cursor is None:
            return
