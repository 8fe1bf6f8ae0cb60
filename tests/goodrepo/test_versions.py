"""Version schemes: validation, precedence and the order-preserving byte encoding."""

from __future__ import annotations

import functools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from goodrepo.errors import ValidationError
from goodrepo.versions import (
    MAX_VERSION_LENGTH,
    SCHEMES,
    Pep440Scheme,
    SemVer,
    SemverScheme,
    get_scheme,
)

SEMVER = SemverScheme()
PEP440 = Pep440Scheme()


def byte_cmp(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


# -- SemVer: an independent reference of the semver.org rules -----------------------------


def semver_reference_key(text: str) -> tuple:
    core, _, _build = text.partition("+")
    core, dash, pre = core.partition("-")
    nums = tuple(int(x) for x in core.split("."))
    if not dash:
        return (nums, 1, ())
    ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split("."))
    return (nums, 0, ids)


def semver_reference_cmp(a: str, b: str) -> int:
    ka, kb = semver_reference_key(a), semver_reference_key(b)
    return (ka > kb) - (ka < kb)


numbers = st.one_of(st.integers(0, 12), st.integers(0, 10**40)).map(str)
alnum_ids = st.one_of(
    st.sampled_from(["alpha", "beta", "rc", "a", "A", "Z", "-", "--", "0a", "1-", "x-y", "aa"]),
    st.builds(
        lambda digits, c, rest: digits + c + rest,
        st.text("0123456789", max_size=3),
        st.sampled_from("abAB-z"),
        st.text("0123456789abcABC-", max_size=4),
    ),
)
pre_ids = st.lists(st.one_of(numbers, alnum_ids), min_size=1, max_size=4)
build_ids = st.lists(st.text("0123456789abAB-", min_size=1, max_size=4), min_size=1, max_size=3)


@st.composite
def semvers(draw: st.DrawFn) -> str:
    text = ".".join(draw(st.tuples(*[st.sampled_from(["0", "1", "2", "10"]) | numbers] * 3)))
    if draw(st.booleans()):
        text += "-" + ".".join(draw(pre_ids))
    if draw(st.integers(0, 3)) == 0:
        text += "+" + ".".join(draw(build_ids))
    return text


@given(semvers(), semvers())
@settings(max_examples=1000)
@example("1.0.0+a", "1.0.0+b")
@example("1.0.0-1", "1.0.0-1a")
@example("1.0.0-a", "1.0.0-a.1")
def test_semver_encoding_order_matches_precedence(a: str, b: str) -> None:
    expected = semver_reference_cmp(a, b)
    assert SEMVER.compare(a, b) == expected
    ea, eb = SEMVER.encode(a), SEMVER.encode(b)
    if expected:
        assert byte_cmp(ea, eb) == expected
    else:
        assert SEMVER.encode_precedence(a) == SEMVER.encode_precedence(b)
        assert (ea == eb) == (a == b)
        assert byte_cmp(ea, eb) == byte_cmp(a.encode(), b.encode())  # the tie-breaker
    assert b"\x00" not in ea and b"\x00" not in eb


@given(st.lists(semvers(), min_size=2, max_size=12))
def test_semver_sorting_by_encoding_is_sorting_by_precedence(versions: list[str]) -> None:
    by_key = sorted(versions, key=SEMVER.encode)
    by_ref = sorted(versions, key=functools.cmp_to_key(semver_reference_cmp))
    assert [semver_reference_key(v) for v in by_key] == [semver_reference_key(v) for v in by_ref]


SEMVER_ORG_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.9.0",
    "1.10.0",
    "1.11.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
    "10.0.0",
]


def test_semver_org_precedence_examples() -> None:
    keys = [SEMVER.encode(v) for v in SEMVER_ORG_ORDER]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    for lower, higher in zip(SEMVER_ORG_ORDER, SEMVER_ORG_ORDER[1:], strict=False):
        assert SEMVER.compare(lower, higher) == -1
        assert SEMVER.compare(higher, lower) == 1


def test_semver_build_metadata_ties_are_distinct_and_deterministic() -> None:
    assert SEMVER.compare("1.0.0+a", "1.0.0+b") == 0
    assert SEMVER.encode("1.0.0+a") < SEMVER.encode("1.0.0+b")
    assert SEMVER.encode("1.0.0") < SEMVER.encode("1.0.0+a")
    assert SEMVER.encode("1.0.0+b") < SEMVER.encode("1.0.1-alpha")
    assert SEMVER.encode("1.0.0+a") == SEMVER.encode("1.0.0+a")


def test_semver_huge_numbers() -> None:
    big = "9" * 200
    assert SEMVER.encode(f"{big}.0.0") > SEMVER.encode(f"{big[:-1]}8.0.0")
    assert SEMVER.encode("1.0.0-" + big) < SEMVER.encode("1.0.0-a")
    assert SEMVER.parse(f"1.0.{big}").patch == int(big)


def test_semver_parse_and_prerelease() -> None:
    assert SEMVER.parse("1.2.3-rc.1.x-y+b.001") == SemVer(1, 2, 3, ("rc", 1, "x-y"), ("b", "001"))
    assert SEMVER.is_prerelease("1.0.0-0")
    assert not SEMVER.is_prerelease("1.0.0+build")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("1.0", id="two-parts"),
        pytest.param("1.0.0.0", id="four-parts"),
        pytest.param("v1.0.0", id="v-prefix"),
        pytest.param("01.0.0", id="leading-zero-major"),
        pytest.param("1.00.0", id="leading-zero-minor"),
        pytest.param("1.0.0-01", id="leading-zero-prerelease"),
        pytest.param("1.0.0-", id="empty-prerelease"),
        pytest.param("1.0.0-a..b", id="empty-identifier"),
        pytest.param("1.0.0+", id="empty-build"),
        pytest.param("1.0.0-a_b", id="underscore"),
        pytest.param(" 1.0.0", id="leading-space"),
        pytest.param("1.0.0\n", id="trailing-newline"),
        pytest.param("1.0.0\x00", id="nul"),
        pytest.param("1.0.\u0661", id="arabic-digit"),
        pytest.param("1.0.0-\u0430", id="cyrillic-letter"),
        pytest.param("1." * 600 + "0", id="too-long"),
    ],
)
def test_semver_rejects_invalid(text: str) -> None:
    for call in (SEMVER.parse, SEMVER.encode, SEMVER.is_prerelease):
        with pytest.raises(ValidationError) as info:
            call(text)
        assert info.value.details == {"field": "version"}


# -- PEP 440: against packaging's ordering -------------------------------------------------


@st.composite
def pep440s(draw: st.DrawFn) -> str:
    small = st.integers(0, 3)
    n = st.one_of(small, st.integers(0, 10**25))
    text = ""
    if draw(st.integers(0, 4)) == 0:
        text += f"{draw(small)}!"
    text += ".".join(str(x) for x in draw(st.lists(small | n, min_size=1, max_size=4)))
    if draw(st.booleans()):
        tag = draw(st.sampled_from(["a", "b", "rc", "alpha", "beta", "c", "pre", "preview"]))
        sep = draw(st.sampled_from(["", ".", "-", "_"]))
        text += f"{sep}{tag}{draw(n)}"
    if draw(st.booleans()):
        if draw(st.booleans()):
            text += f".post{draw(n)}"
        else:
            text += f"-{draw(n)}"
    if draw(st.booleans()):
        text += f".dev{draw(n)}"
    if draw(st.integers(0, 2)) == 0:
        seg = st.one_of(small.map(str), st.sampled_from(["a", "b", "ubuntu", "Z9", "01"]))
        segs = draw(st.lists(seg, min_size=1, max_size=3))
        text += "+" + draw(st.sampled_from([".", "-", "_"])).join(segs)
    return text


@given(pep440s(), pep440s())
@settings(max_examples=1000)
@example("1.0", "1.0.0")
@example("1.0.dev1", "1.0a1")
@example("1.0.dev1", "1.0a0.dev0")
@example("1.0.post1.dev1", "1.0.post1")
@example("1.0+abc", "1.0+1")
@example("1.0+1", "1.0+1.a")
def test_pep440_encoding_order_matches_packaging(a: str, b: str) -> None:
    va, vb = Version(a), Version(b)
    expected = (va > vb) - (va < vb)
    assert PEP440.compare(a, b) == expected
    ea, eb = PEP440.encode(a), PEP440.encode(b)
    if expected:
        assert byte_cmp(ea, eb) == expected
    else:
        assert PEP440.encode_precedence(a) == PEP440.encode_precedence(b)
        assert (ea == eb) == (a == b)
        assert byte_cmp(ea, eb) == byte_cmp(a.encode(), b.encode())
    assert b"\x00" not in ea and b"\x00" not in eb
    assert PEP440.is_prerelease(a) == va.is_prerelease


PEP440_ORDER = [
    "1.0.dev0",
    "1.0.dev5",
    "1.0a0.dev0",
    "1.0a1.dev1",
    "1.0a1",
    "1.0a2",
    "1.0b1.post1",
    "1.0rc1",
    "1.0",
    "1.0+abc.5",
    "1.0+5",
    "1.0+5.abc",
    "1.0.post1.dev1",
    "1.0.post1",
    "1.0.1",
    "1.1.dev1",
    "1.10",
    "1!0.1",
]


def test_pep440_known_order() -> None:
    keys = [PEP440.encode(v) for v in PEP440_ORDER]
    assert keys == sorted(keys)
    assert [Version(v) for v in PEP440_ORDER] == sorted(Version(v) for v in PEP440_ORDER)


def test_pep440_equal_precedence_distinct_keys() -> None:
    assert PEP440.compare("1.0", "1.0.0") == 0
    assert PEP440.encode_precedence("1.0") == PEP440.encode_precedence("1.0.0")
    assert PEP440.encode("1.0") < PEP440.encode("1.0.0")
    assert PEP440.encode("1.0a1") != PEP440.encode("1.0alpha1")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("one", id="word"),
        pytest.param("1..0", id="empty-release-part"),
        pytest.param("1.0+", id="empty-local"),
        pytest.param("1.0\x00", id="nul"),
        pytest.param("1" * (MAX_VERSION_LENGTH + 1), id="too-long"),
    ],
)
def test_pep440_rejects_invalid(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        PEP440.encode(text)
    assert info.value.details == {"field": "version"}


def test_pep440_prerelease_is_packagings() -> None:
    assert PEP440.is_prerelease("1.0.dev1")
    assert PEP440.is_prerelease("1.0rc1")
    assert not PEP440.is_prerelease("1.0.post1")


@given(
    st.one_of(
        st.tuples(st.just(SEMVER), semvers(), semvers()),
        st.tuples(st.just(PEP440), pep440s(), pep440s()),
    ),
    st.binary(max_size=4),
    st.binary(max_size=4),
)
def test_encoding_is_prefix_free_under_a_zero_separator(case: tuple, x: bytes, y: bytes) -> None:
    scheme, a, b = case
    ea, eb = scheme.encode(a), scheme.encode(b)
    if a != b:
        assert byte_cmp(ea + b"\x00" + x, eb + b"\x00" + y) == byte_cmp(ea, eb)


# -- registry ------------------------------------------------------------------------------


def test_registry() -> None:
    assert get_scheme("semver") is SCHEMES["semver"]
    assert get_scheme("pep440").name == "pep440"
    with pytest.raises(ValueError, match="pep440, semver"):
        get_scheme("calver")
