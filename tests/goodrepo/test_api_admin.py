"""Helpers of the admin endpoints: how ``/rocksdb/keys`` writes keys and reads prefixes."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from goodrepo.api.admin import MAX_KEY_PREFIX, _key_prefix, _printable_key
from goodrepo.errors import InvalidRequest


@given(st.binary(max_size=MAX_KEY_PREFIX // 4))
@example(b"d:meta\x00artifact/acme")
@example(b"\\x41\\")
@example(bytes(range(256))[:64])
def test_a_listed_key_reads_back_as_the_same_bytes(key: bytes) -> None:
    shown = _printable_key(key)
    assert _key_prefix(shown) == key
    assert _printable_key(_key_prefix(shown)) == shown


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("", b"", id="empty"),
        pytest.param("a:user:", b"a:user:", id="plain"),
        pytest.param("\\x5c\\x00\\xff", b"\\\x00\xff", id="escapes"),
        pytest.param("\\x41\\xAb", b"A\xab", id="any-byte-either-case"),
    ],
)
def test_prefixes(text: str, key: bytes) -> None:
    assert _key_prefix(text) == key


@pytest.mark.parametrize("text", ["\\", "\\x", "\\x0", "\\x0g", "\\\\", "\\u0041", "\\X41"])
def test_malformed_escapes(text: str) -> None:
    with pytest.raises(InvalidRequest, match="malformed escape") as info:
        _key_prefix(text)
    assert info.value.details == {"field": "prefix"}
