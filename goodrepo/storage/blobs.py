"""Content-addressed blob files: streaming, crash-safe puts and streaming HTTP responses.

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
    with store.put_stream(environ["wsgi.input"], content_length=n,
                          expected_sha256_hex=expected_digest_from_environ(environ)) as staged:
        digest = staged.commit()
    return blob_response(environ, store, digest, filename="app-1.0.tar.gz")
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote

from werkzeug.datastructures import Headers
from werkzeug.http import parse_etags, parse_range_header, quote_etag
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from ..errors import (
    BlobTooLarge,
    DigestMismatch,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    StoreError,
    ValidationError,
)

__all__ = [
    "DEFAULT_PATH_TEMPLATE",
    "BlobStore",
    "StagedBlob",
    "blob_response",
    "digest_headers",
    "digest_hex",
    "expected_digest_from_environ",
    "parse_checksum_header",
    "parse_content_digest",
]

log = logging.getLogger(__name__)

DEFAULT_PATH_TEMPLATE = "sha256/{digest:0:2}/{digest:2:2}/{digest}"
TEMP_DIR = ".tmp"
_TEMP_SUFFIX = ".part"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PLACEHOLDER = re.compile(r"\{digest(?::([0-9]+):([0-9]+))?\}")
_LITERAL = re.compile(r"[A-Za-z0-9._-]*")

Piece = str | tuple[int, int]  # a literal, or (offset, length) of the hex digest


def digest_hex(digest: str) -> str:
    """The hex of ``sha256:<hex>`` or bare ``<hex>``; ``ValidationError`` (field digest)."""
    if isinstance(digest, str):
        hex_ = digest[7:] if digest.startswith("sha256:") else digest
        if _HEX64.fullmatch(hex_):
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


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - not on Windows
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove temporary blob file %s", path.name, exc_info=True)


class StagedBlob:
    """A fully written, fsynced temporary blob waiting to be committed or discarded.

    Attributes: ``hex``, ``digest`` (``sha256:<hex>``), ``size`` and ``path`` (the
    temporary file). As a context manager it discards itself unless committed.

    Usage::

        with store.put_stream(body) as staged:
            staged.verify(expected_hex)
            digest = staged.commit()
    """

    def __init__(self, store: BlobStore, path: Path, hex_: str, size: int) -> None:
        self.store = store
        self.path = path
        self.hex = hex_
        self.size = size
        self.digest = f"sha256:{hex_}"
        self._state = "staged"

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
        final = self.store.path_for(self.hex)
        try:
            try:
                existing: int | None = final.stat().st_size
            except FileNotFoundError:
                existing = None
            if existing == self.size:
                _unlink_quiet(self.path)
            else:
                if existing is not None:
                    log.warning("replacing blob %s of wrong size %d", self.digest, existing)
                self.store._makedirs(final.parent)
                os.replace(self.path, final)
                _fsync_dir(final.parent)
        except OSError as err:
            self.discard()
            raise StoreError("failed to store the blob") from err
        self._state = "committed"
        return self.digest

    def discard(self) -> None:
        """Remove the temporary file; idempotent, and a no-op after ``commit``."""
        if self._state == "staged":
            self._state = "discarded"
            _unlink_quiet(self.path)

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
        hex_ = digest_hex(digest)
        parts = (
            "".join(p if isinstance(p, str) else hex_[p[0] : p[0] + p[1]] for p in seg)
            for seg in self._segments
        )
        return self.root.joinpath(*parts)

    def _makedirs(self, directory: Path) -> None:
        """Create ``directory`` and fsync the parent of every directory created."""
        missing = []
        while not directory.is_dir() and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    # -- writing --------------------------------------------------------------------------

    def _create_temp(self) -> tuple[int, Path]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for _ in range(8):
            path = self.tmp_dir / f"{secrets.token_hex(16)}{_TEMP_SUFFIX}"
            try:
                return os.open(path, flags, 0o644), path
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
            with open(fd, "wb") as out:
                hex_, size = self._copy(stream, out, content_length)
                out.flush()
                os.fsync(out.fileno())
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

    def _copy(self, stream: Any, out: IO[bytes], content_length: int | None) -> tuple[str, int]:
        """Copy the body into ``out``, hashing and enforcing the size limit as it goes."""
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
            out.write(data)
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

    @staticmethod
    def digest_headers(hex_: str) -> dict[str, str]:
        """The digest headers of a blob (see the module function)."""
        return digest_headers(hex_)

    def __repr__(self) -> str:
        return f"<BlobStore template={self.path_template!r}>"


# -- HTTP ---------------------------------------------------------------------------------

# RFC 8941 dictionary members: key [= bare item | inner list] *(; key [= bare item]).
_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*", re.IGNORECASE)
_SF_ITEM = re.compile(
    r":(?P<bytes>[A-Za-z0-9+/=]*):|\"(?:[^\"\\]|\\.)*\"|\?[01]|-?[0-9]+(?:\.[0-9]+)?"
    r"|[A-Za-z*][A-Za-z0-9:/!#$%&'*+.^_`|~-]*"
)


def _sf_dictionary(value: str) -> list[tuple[str, str | None]]:
    """Parse a structured-field dictionary into (lower-case key, byte sequence or None)."""
    members: list[tuple[str, str | None]] = []
    pos, end = 0, len(value)

    def skip(p: int) -> int:
        while p < end and value[p] in " \t":
            p += 1
        return p

    def item(p: int) -> tuple[int, str | None]:
        m = _SF_ITEM.match(value, p)
        if m is None:
            raise ValueError(p)
        return m.end(), m["bytes"]

    def params(p: int) -> int:
        while p < end and value[p] == ";":
            k = _SF_KEY.match(value, skip(p + 1))
            if k is None:
                raise ValueError(p)
            p = k.end()
            if p < end and value[p] == "=":
                p, _ = item(p + 1)
        return p

    pos = skip(pos)
    while pos < end:
        key = _SF_KEY.match(value, pos)
        if key is None:
            raise ValueError(pos)
        pos, got = key.end(), None
        if pos < end and value[pos] == "=":
            if value[pos + 1 : pos + 2] == "(":
                pos = skip(pos + 2)
                while value[pos : pos + 1] != ")":
                    pos, _ = item(pos)
                    pos = skip(params(pos))
                pos += 1
            else:
                pos, got = item(pos + 1)
        members.append((key[0].lower(), got))
        pos = skip(params(pos))
        if pos < end:
            if value[pos] != "," or skip(pos + 1) == end:
                raise ValueError(pos)
            pos = skip(pos + 1)
    return members


def parse_content_digest(value: str | None) -> str | None:
    """The hex of the ``sha-256`` member of an RFC 9530 ``Content-Digest`` header.

    Other algorithms are ignored; a malformed header or sha-256 value (not a byte
    sequence of 32 bytes, or several that disagree) is ``InvalidRequest``.
    """
    if value is None or not value.strip():
        return None
    try:
        members = _sf_dictionary(value)
    except ValueError as err:
        raise InvalidRequest("malformed Content-Digest header") from err
    found: set[str] = set()
    for key, b64 in members:
        if key != "sha-256":
            continue
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True) if b64 else b""
        except ValueError as err:
            raise InvalidRequest("malformed sha-256 value in Content-Digest") from err
        if len(raw) != 32:
            raise InvalidRequest("malformed sha-256 value in Content-Digest")
        found.add(raw.hex())
    if len(found) > 1:
        raise InvalidRequest("Content-Digest carries several different sha-256 values")
    return found.pop() if found else None


def content_disposition(filename: str) -> str:
    """``attachment`` with a safe ASCII ``filename`` and an RFC 5987 ``filename*``."""
    name = "".join(
        "_" if c in "/\\" or unicodedata.category(c)[0] in "CZ" and c != " " else c
        for c in filename
    )[:200]
    name = name.lstrip(". ") or "download"  # no hidden or dot-dot names
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def parse_checksum_header(value: str | None) -> str | None:
    """The lower-case hex of ``X-Checksum-Sha256: <hex>``; ``InvalidRequest`` if malformed."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    text = text[7:] if text.startswith("sha256:") else text
    if not _HEX64.fullmatch(text):
        raise InvalidRequest("malformed X-Checksum-Sha256 header (want 64 hex digits)")
    return text


def expected_digest_from_environ(environ: dict[str, Any]) -> str | None:
    """The expected hex digest from ``Content-Digest`` and/or ``X-Checksum-Sha256``."""
    from_cd = parse_content_digest(environ.get("HTTP_CONTENT_DIGEST"))
    from_xc = parse_checksum_header(environ.get("HTTP_X_CHECKSUM_SHA256"))
    if from_cd and from_xc and from_cd != from_xc:
        raise InvalidRequest("Content-Digest and X-Checksum-Sha256 disagree")
    return from_cd or from_xc


def digest_headers(hex_: str) -> dict[str, str]:
    """The digest of a blob in every header dialect clients read."""
    sf = f"sha-256=:{base64.b64encode(bytes.fromhex(digest_hex(hex_))).decode('ascii')}:"
    return {
        "Repr-Digest": sf,
        "Content-Digest": sf,
        "Docker-Content-Digest": f"sha256:{hex_}",
        "X-Checksum-Sha256": hex_,
    }


class _FileRange:
    """Iterate ``length`` bytes of an open file from its current position, then close it."""

    def __init__(self, file: BinaryIO, length: int, chunk_size: int) -> None:
        self.file, self.remaining, self.chunk_size = file, length, chunk_size

    def __iter__(self) -> _FileRange:
        return self

    def __next__(self) -> bytes:
        data = self.file.read(min(self.chunk_size, self.remaining)) if self.remaining else b""
        if not data:
            self.close()
            raise StopIteration
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.file.close()


def _single_range(environ: dict[str, Any], etag: str, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` to serve, ``None`` for the whole blob; 416 when unsatisfiable."""
    if_range = environ.get("HTTP_IF_RANGE")
    if if_range is not None and if_range.strip() != quote_etag(etag):
        return None  # strong comparison; dates never match (no Last-Modified)
    rng = parse_range_header(environ.get("HTTP_RANGE"))
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None  # invalid or multiple ranges: ignore them, serve the whole blob
    start, stop = rng.ranges[0]
    if start < 0:
        return max(size + start, 0), size
    if start >= size:
        raise RangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}
        )
    return start, size if stop is None else min(stop, size)


def blob_response(
    environ: dict[str, Any], store: BlobStore, digest: str, *, filename: str | None = None
) -> Response:
    """A streaming GET/HEAD response for a blob, with ranges and conditional requests.

    Evaluated in RFC 9110 order: ``If-Match`` (412), ``If-None-Match`` (304, weak
    comparison, ``*`` and lists), then a single ``Range`` for GET (206; 416 when it starts
    past the end; several ranges or an ``If-Range`` that is not our strong ETag: 200).
    The body is the open file through ``wsgi.file_wrapper``; the file is closed by the
    response iterable's ``close()``. A 206 carries no ``Content-Digest`` (that would
    describe the partial content); ``Repr-Digest`` and the others still apply.
    ``NotFound`` if the blob is missing.
    """
    hex_ = digest_hex(digest)
    size = store.size(hex_)
    if size is None:
        raise NotFound("blob not found")
    etag = f"sha256:{hex_}"
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None and not parse_etags(if_match).contains(etag):
        raise PreconditionFailed(headers={"ETag": quote_etag(etag)})
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None and parse_etags(if_none_match).contains_weak(etag):
        return Response(
            status=304, headers={"ETag": quote_etag(etag), "X-Content-Type-Options": "nosniff"}
        )

    headers = Headers(digest_headers(hex_))
    headers["ETag"] = quote_etag(etag)
    headers["Accept-Ranges"] = "bytes"
    headers["Content-Disposition"] = content_disposition(filename or f"sha256-{hex_}")
    headers["X-Content-Type-Options"] = "nosniff"
    method = environ.get("REQUEST_METHOD", "GET").upper()
    bounds = None
    if method == "GET" and size > 0 and environ.get("HTTP_RANGE"):
        bounds = _single_range(environ, etag, size)
    status, length = 200, size
    if bounds is not None:
        status, length = 206, bounds[1] - bounds[0]
        headers["Content-Range"] = f"bytes {bounds[0]}-{bounds[1] - 1}/{size}"
        del headers["Content-Digest"]

    body: Any = []
    if method != "HEAD":
        file = store.open(hex_)
        if bounds is None:
            body = wrap_file(environ, file, buffer_size=store.chunk_size)
        else:
            file.seek(bounds[0])
            body = _FileRange(file, length, store.chunk_size)
    response = Response(
        body,
        status=status,
        headers=headers,
        mimetype="application/octet-stream",
        direct_passthrough=True,
    )
    response.content_length = length
    return response
