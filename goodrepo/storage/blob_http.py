"""HTTP around blobs: the digest headers clients announce and expect, and streaming
blob responses with ranges and conditional requests.

Usage::

    expected = expected_digest_from_environ(environ)   # from Content-Digest/X-Checksum-Sha256
    return blob_response(environ, store, digest, filename="app-1.0.tar.gz")
"""

from __future__ import annotations

import base64
import re
import unicodedata
from typing import Any, BinaryIO
from urllib.parse import quote

from werkzeug.datastructures import Headers
from werkzeug.http import parse_etags, parse_range_header, quote_etag
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from ..errors import InvalidRequest, NotFound, PreconditionFailed, RangeNotSatisfiable
from .blobs import HEX_DIGEST, BlobStore, digest_hex

__all__ = [
    "blob_response",
    "content_disposition",
    "digest_headers",
    "expected_digest_from_environ",
    "parse_checksum_header",
    "parse_content_digest",
]

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
    """The lower-case hex of ``X-Checksum-Sha256: <hex>``; ``InvalidRequest`` if malformed.

    An empty value is malformed too: a client that sends the header means a check, and an
    unset variable in its script must not pass for one.
    """
    if value is None:
        return None
    text = value.strip().lower()
    text = text[7:] if text.startswith("sha256:") else text
    if not HEX_DIGEST.fullmatch(text):
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


def not_modified(environ: dict[str, Any], etag: str) -> bool:
    """The preconditions of a GET or HEAD of a representation whose strong entity tag
    is ``etag`` (unquoted), in RFC 9110 order.

    Raises ``PreconditionFailed`` (with the ``ETag``) when ``If-Match`` lists neither the
    tag nor ``*``; returns True when ``If-None-Match`` matches it (weak comparison, ``*``
    included), so the answer is 304 without a body.
    """
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None and not parse_etags(if_match).contains(etag):
        raise PreconditionFailed(headers={"ETag": quote_etag(etag)})
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    return if_none_match is not None and parse_etags(if_none_match).contains_weak(etag)


def blob_response(
    environ: dict[str, Any], store: BlobStore, digest: str, *, filename: str | None = None
) -> Response:
    """A streaming GET/HEAD response for a blob, with ranges and conditional requests.

    Evaluated in RFC 9110 order: ``If-Match`` (412), ``If-None-Match`` (304, weak
    comparison, ``*`` and lists; see :func:`not_modified`), then a single ``Range`` for
    GET (206; 416 when it starts past the end; several ranges or an ``If-Range`` that is
    not our strong ETag: 200).
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
    if not_modified(environ, etag):
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
    elif method == "HEAD":
        # Content-Digest covers the content sent, and a HEAD answer has none (RFC 9530,
        # appendix B.2); Repr-Digest and the others name the blob, and stay.
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
