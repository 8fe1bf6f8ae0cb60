"""Version schemes and an order-preserving byte encoding of versions for index keys.

A :class:`VersionScheme` parses and validates version strings, tells prereleases apart,
compares by the scheme's precedence and encodes a version as bytes whose bytewise order
is that precedence. Versions of equal precedence (SemVer build metadata, PEP 440
``1.0`` versus ``1.0.0``) still get distinct encodings, ordered by the raw text as a
tie-breaker, so ``encode`` is injective.

Properties of ``encode`` that the index relies on:

* ``encode(a) < encode(b)`` iff ``a`` precedes ``b``, or they have equal precedence and
  ``a < b`` as UTF-8 text;
* no encoding is a prefix of another, so ``encode(v) + b"\\x00" + suffix`` sorts exactly
  as ``encode(v)`` does;
* an encoding never contains the byte ``0x00``.

Usage::

    scheme = get_scheme("semver")
    scheme.encode("1.10.0") > scheme.encode("1.9.0")  # True
    scheme.is_prerelease("1.0.0-rc.1")                 # True
"""

from __future__ import annotations

import abc
import re
from typing import Any, NamedTuple

from packaging.version import InvalidVersion, Version

from .errors import ValidationError

__all__ = [
    "MAX_VERSION_LENGTH",
    "SCHEMES",
    "Pep440Scheme",
    "SemVer",
    "SemverScheme",
    "VersionScheme",
    "get_scheme",
]

#: Longer strings are rejected by every scheme (it also keeps ``int()`` within Python's
#: default limit on the number of digits it converts).
MAX_VERSION_LENGTH = 1024


# -- byte encoding primitives -------------------------------------------------------------
#
# Every primitive is order-preserving, prefix-free and free of 0x00, so a concatenation of
# primitives compares component by component.


def _enc_uint(n: int) -> bytes:
    """Encode a small non-negative integer: a length byte, then base-255 digits + 1."""
    digits = bytearray()
    while n:
        n, d = divmod(n, 255)
        digits.append(d + 1)
    digits.reverse()
    k = len(digits)
    if k <= 0xFD:
        return bytes([k + 1]) + bytes(digits)
    return b"\xff" + _enc_uint(k) + bytes(digits)


def _enc_decimal(digits: str) -> bytes:
    """Encode a decimal number written without leading zeros: its length, then the digits.

    For such strings numeric order is (length, text) order, so no ``int()`` is needed and
    numbers of any size work.
    """
    return _enc_uint(len(digits)) + digits.encode("ascii")


def _enc_int(n: int) -> bytes:
    return _enc_decimal(str(n))


_STR_ESCAPES = {0x00: b"\x01\x02", 0x01: b"\x01\x03"}
_STR_END = b"\x01\x01"


def _enc_str(text: str) -> bytes:
    """Encode text in UTF-8 (code point) order, with 0x00/0x01 escaped and a terminator."""
    raw = text.encode("utf-8")
    if b"\x00" in raw or b"\x01" in raw:
        raw = b"".join(_STR_ESCAPES.get(b, bytes([b])) for b in raw)
    return raw + _STR_END


def _invalid(what: str) -> ValidationError:
    return ValidationError(f"version is not a valid {what} version", details={"field": "version"})


class VersionScheme(abc.ABC):
    """A version scheme: validation, precedence and the order-preserving encoding.

    Subclasses set ``name`` and implement ``parse``, ``is_prerelease``, ``compare`` and
    ``encode_precedence``; ``encode`` appends the tie-breaker.

    Usage::

        scheme = SCHEMES["pep440"]
        key = scheme.encode("2.0rc1")
    """

    name: str = ""

    @abc.abstractmethod
    def parse(self, text: str) -> Any:
        """Parse ``text``; raise ``ValidationError`` (field ``version``) when invalid."""

    @abc.abstractmethod
    def is_prerelease(self, text: str) -> bool:
        """Whether ``text`` is a prerelease in this scheme (validated first)."""

    @abc.abstractmethod
    def compare(self, a: str, b: str) -> int:
        """-1, 0 or 1 as ``a`` precedes, equals (in precedence) or follows ``b``."""

    @abc.abstractmethod
    def encode_precedence(self, text: str) -> bytes:
        """The encoding of the precedence alone: equal for versions of equal precedence."""

    def encode(self, text: str) -> bytes:
        """The index key encoding: precedence, then the raw text as a tie-breaker."""
        return self.encode_precedence(text) + _enc_str(text)

    def _check_length(self, text: str) -> None:
        if not isinstance(text, str) or len(text) > MAX_VERSION_LENGTH:
            raise _invalid(self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- SemVer 2.0.0 -------------------------------------------------------------------------

_NUM = r"0|[1-9][0-9]*"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_SEMVER_RE = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+(?P<build>{_BUILD_ID}(?:\.{_BUILD_ID})*))?"
)


class SemVer(NamedTuple):
    """A parsed SemVer 2.0.0 version; prerelease identifiers are ``int`` or ``str``."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...]
    build: tuple[str, ...]


def _is_numeric(identifier: str) -> bool:
    return identifier.isascii() and identifier.isdigit()


class SemverScheme(VersionScheme):
    """SemVer 2.0.0 exactly as semver.org specifies it (no ``v`` prefix, no leading zeros).

    Precedence: MAJOR, MINOR, PATCH numerically; a release follows its prereleases;
    prerelease identifiers compare numerically when numeric, in ASCII order otherwise,
    numeric before alphanumeric, and a shorter list first when it is a prefix of the
    other. Build metadata is ignored for precedence (it only breaks ties in ``encode``).

    Usage::

        SemverScheme().compare("1.0.0-beta.11", "1.0.0-beta.2")  # 1
    """

    name = "semver"

    def _match(self, text: str) -> re.Match[str]:
        self._check_length(text)
        match = _SEMVER_RE.fullmatch(text)
        if match is None:
            raise _invalid("SemVer 2.0.0 (MAJOR.MINOR.PATCH[-prerelease][+build])")
        return match

    def parse(self, text: str) -> SemVer:
        """Parse ``text`` into a :class:`SemVer`."""
        m = self._match(text)
        pre = m["pre"].split(".") if m["pre"] else []
        return SemVer(
            int(m["major"]),
            int(m["minor"]),
            int(m["patch"]),
            tuple(int(i) if _is_numeric(i) else i for i in pre),
            tuple(m["build"].split(".")) if m["build"] else (),
        )

    def is_prerelease(self, text: str) -> bool:
        """Whether ``text`` has a prerelease part (``1.0.0-rc.1``)."""
        return self._match(text)["pre"] is not None

    def compare(self, a: str, b: str) -> int:
        """Compare by SemVer precedence (build metadata ignored)."""
        ka, kb = self._key(self.parse(a)), self._key(self.parse(b))
        return (ka > kb) - (ka < kb)

    @staticmethod
    def _key(v: SemVer) -> tuple[Any, ...]:
        if not v.prerelease:
            return (v.major, v.minor, v.patch, (1,))
        ids = tuple((0, i, "") if isinstance(i, int) else (1, 0, i) for i in v.prerelease)
        return (v.major, v.minor, v.patch, (0, ids))

    def encode_precedence(self, text: str) -> bytes:
        """MAJOR, MINOR, PATCH, then 0x02 + prerelease identifiers + 0x01, or 0x03."""
        m = self._match(text)
        out = bytearray()
        for part in ("major", "minor", "patch"):
            out += _enc_decimal(m[part])
        if m["pre"] is None:
            out += b"\x03"  # a release sorts after all of its prereleases
            return bytes(out)
        out += b"\x02"
        for identifier in m["pre"].split("."):
            if _is_numeric(identifier):
                out += b"\x02" + _enc_decimal(identifier)  # numeric: lower, by value
            else:
                out += b"\x03" + _enc_str(identifier)  # alphanumeric: ASCII order
        out += b"\x01"  # end of list: a shorter list sorts first
        return bytes(out)


# -- PEP 440 ------------------------------------------------------------------------------

# Ranks following packaging's ``_cmpkey``: dev-only < a < b < rc < no prerelease.
_PRE_RANK = {"a": 2, "b": 3, "rc": 4}
_PRE_DEV_ONLY = 1
_PRE_NONE = 5


class Pep440Scheme(VersionScheme):
    """PEP 440 through ``packaging.version.Version``, ordered exactly as ``packaging``.

    Epoch, release (trailing zeros insignificant), pre (a/b/rc), post, dev and local
    segments; a dev-only release sorts before the prereleases of its release.

    Usage::

        Pep440Scheme().encode("1.0.dev1") < Pep440Scheme().encode("1.0a1")  # True
    """

    name = "pep440"

    def parse(self, text: str) -> Version:
        """Parse ``text`` into a ``packaging.version.Version``."""
        self._check_length(text)
        try:
            return Version(text)
        except (InvalidVersion, ValueError) as err:
            raise _invalid("PEP 440") from err

    def is_prerelease(self, text: str) -> bool:
        """``packaging``'s ``is_prerelease``: pre and dev releases."""
        return self.parse(text).is_prerelease

    def compare(self, a: str, b: str) -> int:
        """Compare by PEP 440 precedence (``packaging``'s ordering)."""
        va, vb = self.parse(a), self.parse(b)
        return (va > vb) - (va < vb)

    def encode_precedence(self, text: str) -> bytes:
        """Epoch, release, pre, post, dev and local, mirroring ``packaging._cmpkey``."""
        v = self.parse(text)
        out = bytearray(_enc_int(v.epoch))
        release = list(v.release)
        while release and release[-1] == 0:
            release.pop()
        for n in release:
            out += b"\x02" + _enc_int(n)
        out += b"\x01"

        pre, post, dev = v.pre, v.post, v.dev
        if pre is None and post is None and dev is not None:
            out += bytes([_PRE_DEV_ONLY]) + _enc_int(0)
        elif pre is None:
            out += bytes([_PRE_NONE]) + _enc_int(0)
        else:
            out += bytes([_PRE_RANK[pre[0]]]) + _enc_int(pre[1])
        out += (b"\x01" + _enc_int(0)) if post is None else (b"\x02" + _enc_int(post))
        out += (b"\x02" + _enc_int(0)) if dev is None else (b"\x01" + _enc_int(dev))

        if v.local is None:
            out += b"\x01"  # no local segment sorts first
        else:
            out += b"\x02"
            for seg in v.local.split("."):
                if _is_numeric(seg):
                    out += b"\x03" + _enc_int(int(seg))  # numbers after strings
                else:
                    out += b"\x02" + _enc_str(seg)
            out += b"\x01"
        return bytes(out)


SCHEMES: dict[str, VersionScheme] = {"semver": SemverScheme(), "pep440": Pep440Scheme()}


def get_scheme(name: str) -> VersionScheme:
    """The scheme registered as ``name``; ``ValueError`` lists the known names."""
    try:
        return SCHEMES[name]
    except KeyError:
        known = ", ".join(sorted(SCHEMES))
        raise ValueError(f"unknown version scheme {name!r}; known schemes: {known}") from None
