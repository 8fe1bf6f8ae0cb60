"""Content-addressed blob files: streaming, crash-safe puts (HTTP in :mod:`.blob_http`).

A blob lives at ``root`` + ``path_template`` rendered with its sha256 hex digest, and
nowhere else: paths come only from validated digests, never from client strings. A put
streams the body into a temporary file inside the store (``root/.tmp``) while hashing and
counting it, fsyncs it, and only a :meth:`StagedBlob.commit` renames it into place and
fsyncs the directory, so a blob path never holds partial content.

Template: ``/``-separated segments of literal ``[A-Za-z0-9._-]`` and placeholders
``{digest}`` (the 64 hex digits) or ``{digest:OFFSET:LENGTH}`` (``LENGTH`` digits from
``OFFSET``, as in the shell's ``${digest:0:2}``). The default
``sha256/{digest:0:2}/{digest:2:2}/{digest}`` gives ``sha256/ab/cd/abcd...``.

Usage::

    store = BlobStore(data_dir / "blobs", max_blob_bytes=1 << 30)
    with store.put_stream(environ["wsgi.input"], content_length=n) as staged:
        staged.verify(expected_sha256_hex)
        digest = staged.commit()
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from ..errors import (
    BlobTooLarge,
    DigestMismatch,
    InvalidRequest,
    NotFound,
    StoreError,
    ValidationError,
)

__all__ = [
    "DEFAULT_PATH_TEMPLATE",
    "BlobStore",
    "StagedBlob",
    "digest_hex",
]

log = logging.getLogger(__name__)

# Held while a commit looks for its blob and stores or touches it, and while a sweep
# removes one: a blob a commit has just found is never removed under it. One lock for the
# process, whatever BlobStore object (a schema swap makes new ones, and two stores may
# share a root) each side holds.
_SWEEP_LOCK = threading.Lock()

DEFAULT_PATH_TEMPLATE = "sha256/{digest:0:2}/{digest:2:2}/{digest}"
TEMP_DIR = ".tmp"
_DURABLE_DIRS_KEPT = 1 << 17
_TEMP_SUFFIX = ".part"
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_PLACEHOLDER = re.compile(r"\{digest(?::([0-9]+):([0-9]+))?\}")
_LITERAL = re.compile(r"[A-Za-z0-9._-]*")

Piece = str | tuple[int, int]  # a literal, or (offset, length) of the hex digest


def digest_hex(digest: str) -> str:
    """The hex of ``sha256:<hex>`` or bare ``<hex>``; ``ValidationError`` (field digest)."""
    if isinstance(digest, str):
        hex_ = digest[7:] if digest.startswith("sha256:") else digest
        if HEX_DIGEST.fullmatch(hex_):
            return hex_
    raise ValidationError("digest must be sha256:<64 lower-case hex>", details={"field": "digest"})


def _parse_template(template: str) -> tuple[tuple[Piece, ...], ...]:
    """Split ``template`` into segments of pieces; ``ValueError`` if it could escape."""
    segments: list[tuple[Piece, ...]] = []
    whole = False
    for seg in template.split("/"):
        pieces: list[Piece] = []
        pos = 0
        for m in [*_PLACEHOLDER.finditer(seg), None]:
            literal = seg[pos : m.start() if m else len(seg)]
            if not _LITERAL.fullmatch(literal):
                raise ValueError(f"path_template {template!r}: bad literal {literal!r}")
            if literal:
                pieces.append(literal)
            if m is None:
                break
            if m[1] is None:
                pieces.append((0, 64))
                whole = True
            else:
                offset, length = int(m[1]), int(m[2])
                if length < 1 or offset + length > 64:
                    raise ValueError(f"path_template {template!r}: bad slice {m[0]}")
                pieces.append((offset, length))
            pos = m.end()
        if not pieces or (isinstance(pieces[0], str) and pieces[0].startswith(".")):
            raise ValueError(
                f"path_template {template!r}: empty, absolute or dot-led segment {seg!r}"
            )
        segments.append(tuple(pieces))
    if not whole:
        raise ValueError(f"path_template {template!r} must contain {{digest}}")
    return tuple(segments)


def _template_regex(segments: tuple[tuple[Piece, ...], ...]) -> re.Pattern[str]:
    """A regex matching the relative paths the template renders; group ``hex``."""
    out, named = [], False
    for seg in segments:
        part = ""
        for p in seg:
            if isinstance(p, str):
                part += re.escape(p)
            elif p == (0, 64) and not named:
                part += "(?P<hex>[0-9a-f]{64})"
                named = True
            else:
                part += f"[0-9a-f]{{{p[1]}}}"
        out.append(part)
    return re.compile("/".join(out))


def _fsync_dir(path: str | Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - not on Windows
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        name = os.path.basename(path)
        log.warning("could not remove temporary blob file %s", name, exc_info=True)


class StagedBlob:
    """A fully written, fsynced temporary blob waiting to be committed or discarded.

    Attributes: ``hex``, ``digest`` (``sha256:<hex>``), ``size`` and ``path`` (the
    temporary file). As a context manager it discards itself unless committed.

    Usage::

        with store.put_stream(body) as staged:
            staged.verify(expected_hex)
            digest = staged.commit()
    """

    def __init__(self, store: BlobStore, path: str | Path, hex_: str, size: int) -> None:
        self.store = store
        self._path = os.fspath(path)
        self.hex = hex_
        self.size = size
        self.digest = f"sha256:{hex_}"
        self._state = "staged"

    @property
    def path(self) -> Path:
        """The temporary file."""
        return Path(self._path)

    def verify(self, expected_sha256_hex: str | None) -> None:
        """Raise ``DigestMismatch`` (after discarding) unless the digest is as expected."""
        if expected_sha256_hex is None:
            return
        try:
            expected = digest_hex(expected_sha256_hex.lower())
        except ValidationError:
            self.discard()
            raise
        if expected != self.hex:
            self.discard()
            raise DigestMismatch(details={"expected": f"sha256:{expected}", "actual": self.digest})

    def commit(self) -> str:
        """Rename into the blob's path (kept if already there) and return the digest."""
        if self._state == "committed":
            return self.digest
        if self._state == "discarded":
            raise StoreError("a discarded blob cannot be committed")
        store = self.store
        final = store._path_of(self.hex)
        directory = os.path.dirname(final)
        try:
            with _SWEEP_LOCK:
                try:
                    existing: int | None = os.stat(final).st_size
                    if existing == self.size:
                        # Kept: touched, so that a sweep spares it for the grace period
                        # while the document naming it is committed.
                        os.utime(final)
                except FileNotFoundError:
                    existing = None
                if existing == self.size:
                    _unlink_quiet(self._path)
                else:
                    if existing is not None:
                        log.warning("replacing blob %s of wrong size %d", self.digest, existing)
                    elif directory not in store._durable_dirs:
                        store._makedirs(directory)  # likely new: no rename that fails first
                    # Dated now, not when the upload ended: the grace period of garbage
                    # collection starts here.
                    os.utime(self._path)
                    try:
                        os.replace(self._path, final)
                    except FileNotFoundError:  # the blob's directory is new
                        store._makedirs(directory)
                        os.replace(self._path, final)
            # Also when the blob was there: another put may have renamed it in just now
            # and not yet made that durable.
            store._sync_dirs(directory)
        except OSError as err:
            self.discard()
            raise StoreError("failed to store the blob") from err
        self._state = "committed"
        return self.digest

    def discard(self) -> None:
        """Remove the temporary file; idempotent, and a no-op after ``commit``."""
        if self._state == "staged":
            self._state = "discarded"
            _unlink_quiet(self._path)

    def __enter__(self) -> StagedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def __repr__(self) -> str:
        return f"<StagedBlob {self.digest} {self.size} bytes {self._state}>"


class BlobStore:
    """A content-addressed blob store on the local filesystem.

    Options: ``path_template`` (see the module docs; ``ValueError`` when unsafe),
    ``min_blob_bytes``/``max_blob_bytes`` (enforced while streaming) and ``chunk_size``
    (read, write and response block size).

    Usage::

        store = BlobStore(Path("data/blobs"))
        store.clean_stale_temp()
        digest = store.put_stream(io.BytesIO(b"hello")).commit()
    """

    def __init__(
        self,
        root: Path | str,
        path_template: str = DEFAULT_PATH_TEMPLATE,
        *,
        min_blob_bytes: int = 0,
        max_blob_bytes: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> None:
        if min_blob_bytes < 0 or (max_blob_bytes is not None and max_blob_bytes < min_blob_bytes):
            raise ValueError("need 0 <= min_blob_bytes <= max_blob_bytes")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.root = Path(root)
        self.path_template = path_template
        self._segments = _parse_template(path_template)
        self._path_re = _template_regex(self._segments)
        self.min_blob_bytes = min_blob_bytes
        self.max_blob_bytes = max_blob_bytes
        self.chunk_size = chunk_size
        self.tmp_dir = self.root / TEMP_DIR
        self._root = os.fspath(self.root)
        self._tmp = os.fspath(self.tmp_dir)
        # Blob directories whose entry in their parent is known to be durable (they are
        # never removed); bounded, and forgetting one only costs a cheap fsync.
        self._durable_dirs: set[str] = set()
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError("cannot create the blob store directory") from err

    # -- paths ----------------------------------------------------------------------------

    @staticmethod
    def parse_template(template: str) -> tuple[tuple[Piece, ...], ...]:
        """Check a path template as ``__init__`` does; ``ValueError`` names the problem."""
        return _parse_template(template)

    def path_for(self, digest: str) -> Path:
        """The file of ``digest`` (``sha256:<hex>`` or hex; ``ValidationError`` if bad)."""
        return Path(self._path_of(digest_hex(digest)))

    def _path_of(self, hex_: str) -> str:
        """The file of a validated hex digest, as a string."""
        parts = [
            "".join(p if isinstance(p, str) else hex_[p[0] : p[0] + p[1]] for p in seg)
            for seg in self._segments
        ]
        return os.path.join(self._root, *parts)

    def _makedirs(self, directory: str) -> None:
        """Create ``directory`` and its missing parents; :meth:`_sync_dirs` makes them
        durable."""
        try:
            os.mkdir(directory)
        except FileNotFoundError:
            parent = os.path.dirname(directory)
            if parent == directory:
                raise
            self._makedirs(parent)
            try:
                os.mkdir(directory)
            except FileExistsError:
                pass
        except FileExistsError:
            return
        self._durable_dirs.discard(directory)

    def _sync_dirs(self, directory: str) -> None:
        """Make the names in ``directory``, and ``directory`` itself, durable.

        fsyncs ``directory``, then the parent of each directory on the way up to the root
        that is not yet known to be durable there, whoever created it: a directory that
        another put has just made may not be durable yet. The directories are created and
        the blob renamed in before any of these fsyncs, so on a journalling file system
        the first one commits them all and the others find nothing left to write.
        """
        _fsync_dir(directory)
        root = self._root
        while directory != root:
            if directory in self._durable_dirs:
                return
            parent = os.path.dirname(directory)
            if parent == directory:
                return
            _fsync_dir(parent)
            if len(self._durable_dirs) >= _DURABLE_DIRS_KEPT:
                self._durable_dirs.clear()
            self._durable_dirs.add(directory)
            directory = parent

    # -- writing --------------------------------------------------------------------------

    def _create_temp(self) -> tuple[int, str]:
        # Names from ``random`` (reseeded after fork), not ``secrets``: its ``os.urandom``
        # call releases the GIL, which costs a threaded server far more than it is worth
        # here. O_EXCL settles the unlikely clash; nobody else writes in this directory.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for _ in range(8):
            path = os.path.join(self._tmp, f"{random.getrandbits(128):032x}{_TEMP_SUFFIX}")
            try:
                return os.open(path, flags, 0o600), path
            except FileExistsError:
                continue
            except FileNotFoundError:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError("cannot create a temporary blob file") from err
        raise StoreError("cannot create a temporary blob file")

    def _too_large(self) -> BlobTooLarge:
        return BlobTooLarge(details={"max_blob_bytes": self.max_blob_bytes})

    def _too_small(self) -> ValidationError:
        return ValidationError(
            f"blob is smaller than min_blob_bytes ({self.min_blob_bytes})",
            details={"field": "blob", "min_blob_bytes": self.min_blob_bytes},
        )

    def put_stream(
        self,
        stream: IO[bytes] | Any,
        *,
        content_length: int | None = None,
        expected_sha256_hex: str | None = None,
    ) -> StagedBlob:
        """Stream ``stream.read()`` into a fsynced temporary file, hashing and counting.

        Reads exactly ``content_length`` bytes when given (``InvalidRequest`` if the body
        is shorter), else until EOF. Raises ``BlobTooLarge`` as soon as the size limit is
        passed (before reading when ``content_length`` already does), ``ValidationError``
        below ``min_blob_bytes`` and ``DigestMismatch`` against ``expected_sha256_hex``.
        On any error the temporary file is gone before the exception leaves.
        """
        limit = self.max_blob_bytes
        if content_length is not None:
            if content_length < 0:
                raise InvalidRequest("negative Content-Length")
            if limit is not None and content_length > limit:
                raise self._too_large()
            if content_length < self.min_blob_bytes:
                raise self._too_small()
        fd, path = self._create_temp()
        done = False
        try:
            try:
                hex_, size = self._copy(stream, fd, content_length)
                os.fsync(fd)
            finally:
                os.close(fd)
            if size < self.min_blob_bytes:
                raise self._too_small()
            staged = StagedBlob(self, path, hex_, size)
            done = True
        except OSError as err:
            raise StoreError("failed to write the blob") from err
        finally:
            if not done:
                _unlink_quiet(path)
        staged.verify(expected_sha256_hex)
        return staged

    def _copy(self, stream: Any, fd: int, content_length: int | None) -> tuple[str, int]:
        """Copy the body into the file ``fd``, hashing and enforcing the size limit as it
        goes; each chunk is written as it comes, with no buffer in between."""
        sha, size, limit, remaining = hashlib.sha256(), 0, self.max_blob_bytes, content_length
        while remaining != 0:
            want = self.chunk_size if remaining is None else min(self.chunk_size, remaining)
            try:
                data = stream.read(want)
            except OSError as err:
                raise InvalidRequest("failed to read the request body") from err
            if not data:
                if remaining is not None:
                    raise InvalidRequest("body shorter than Content-Length")
                break
            if len(data) > want:
                raise StoreError("the input stream returned more than requested")
            size += len(data)
            if limit is not None and size > limit:
                raise self._too_large()
            sha.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if remaining is not None:
                remaining -= len(data)
        return sha.hexdigest(), size

    # -- reading and maintenance ----------------------------------------------------------

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading; ``NotFound`` if absent."""
        try:
            return self.path_for(digest).open("rb")
        except FileNotFoundError as err:
            raise NotFound("blob not found") from err
        except OSError as err:
            raise StoreError("cannot read the blob") from err

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or ``None`` if absent."""
        try:
            return self.path_for(digest).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError("cannot stat the blob") from err

    def delete(self, digest: str) -> bool:
        """Remove the blob; ``True`` if it existed. Directories stay (cheap, race-free)."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StoreError("cannot delete the blob") from err
        return True

    def iter_digests(self) -> Iterator[str]:
        """Yield ``sha256:<hex>`` of every stored blob (files the template can produce)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != TEMP_DIR]
            for name in filenames:
                path = here / name
                match = self._path_re.fullmatch(path.relative_to(self.root).as_posix())
                if match and self.path_for(match["hex"]) == path:
                    yield f"sha256:{match['hex']}"

    def sweep(self, digest: str, older_than: float, *, dry_run: bool = False) -> int | None:
        """Remove the blob if its file was last modified before ``older_than`` (a
        ``time.time()``); return its size if it was (or, with ``dry_run``, would be)
        removed, else ``None``. A commit that finds the blob touches it first."""
        path = self.path_for(digest)
        with _SWEEP_LOCK:
            try:
                stat = path.stat()
                if stat.st_mtime >= older_than:
                    return None
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                return None
            except OSError as err:
                raise StoreError("cannot remove the blob") from err
        return stat.st_size

    def clean_stale_temp(self, min_age_seconds: float = 0.0) -> int:
        """Remove temporary files at least ``min_age_seconds`` old; return how many."""
        removed, now = 0, time.time()
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        except OSError as err:
            raise StoreError("cannot list the blob store's temporary directory") from err
        for entry in entries:
            try:
                if entry.is_file() and now - entry.stat().st_mtime >= min_age_seconds:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError("cannot remove a stale temporary blob file") from err
        if removed:
            log.info("removed %d stale temporary blob file(s)", removed)
        return removed

    def check(self) -> None:
        """Health probe: write, fsync and remove a file in the store; ``StoreError`` if not."""
        path = self.tmp_dir / f"probe-{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        try:
            with path.open("xb") as probe:
                probe.write(b"ok")
                probe.flush()
                os.fsync(probe.fileno())
            path.unlink()
        except OSError as err:
            _unlink_quiet(path)
            raise StoreError("the blob store is not writable") from err

    def free_bytes(self) -> int:
        """Free space on the store's filesystem, for readiness checks."""
        try:
            return shutil.disk_usage(self.root).free
        except OSError as err:
            raise StoreError("cannot read the blob store's disk usage") from err

    def __repr__(self) -> str:
        return f"<BlobStore template={self.path_template!r}>"
