"""Hostile identifiers on every artifact route: refused with the right error, nothing written.

What the app receives. A WSGI server percent-decodes the request path before it becomes
``PATH_INFO`` (PEP 3333; waitress and gunicorn do, and so does webtest, which builds the
environ with webob's ``Request.blank``). So the app never sees ``%2F``: ``a%2Fb`` arrives
as ``a/b`` and splits the segment *before* routing (usually no route matches: 404; some
paths then match another route and fail its validation: 400). ``%00`` arrives as a NUL,
``%0A`` as a newline, ``%D0%B0`` as the two UTF-8 bytes (latin-1 decoded, as PEP 3333
wants; werkzeug turns them back into ``"а"``). A double-encoded ``%252F`` arrives as the
literal text ``%2F`` and must not be decoded a second time. The query string, on the
other hand, arrives encoded and is decoded by the app, so ``?variant=a%2Fb`` is the
single value ``a/b``. ``test_what_the_app_receives`` pins this down.

Every case below runs against one seeded repository. A value that could be normalised
into the seeded coordinates (``acme%0A`` trimmed to ``acme``) would answer 200 if control
characters were trimmed instead of refused. After each request the repository must be
exactly as seeded: same KV content (documents, index rows, counters, events), same blob
files, each at ``blobs/sha256/xx/yy/<hex>`` with matching content, and ``blobs/.tmp``
empty.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import webtest

from goodrepo.entities import Entity
from goodrepo.errors import ValidationError
from goodrepo.repository import Repository

from .conftest import ADMIN, WRITER, client_for, publish

SEED_BODY = b"seeded artifact"
SEED_HEX = hashlib.sha256(SEED_BODY).hexdigest()
BASE = {
    "namespace": "acme",
    "name": "app",
    "version": "1.0.0",
    "variant": "linux",
    "tag": "stable",
    "hex": SEED_HEX,
}
TAG_BODY = {"target_version": "1.0.0", "target_variant": "linux"}


# -- the seeded repository and the "nothing written" check ---------------------------------


class Seeded:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = Repository.open(root / "data")
        self.writer = client_for(self.repo, WRITER)
        self.admin = client_for(self.repo, ADMIN)
        publish(self.writer, "acme/app/1.0.0/linux", SEED_BODY)
        self.writer.put_json("/v1/acme/app/tags/stable", TAG_BODY)
        self.kv = self.kv_snapshot()
        self.last_seq = self.repo.events.last_seq()
        assert self.last_seq == 2

    def kv_snapshot(self) -> dict[bytes, bytes]:
        return dict(self.repo.kv.scan(b""))

    def assert_untouched(self) -> None:
        assert self.kv_snapshot() == self.kv, "a refused request changed the KV store"
        assert self.repo.events.last_seq() == self.last_seq
        assert sorted(p.name for p in self.root.iterdir()) == ["data"]
        blobs = self.repo.data_dir / "blobs"
        assert list((blobs / ".tmp").iterdir()) == []
        files = []
        for dirpath, _, filenames in os.walk(self.repo.data_dir):
            here = Path(dirpath)
            for name in filenames:
                rel = (here / name).relative_to(self.repo.data_dir).as_posix()
                if rel.startswith("kv/"):
                    continue
                parts = rel.split("/")
                assert parts[:2] == ["blobs", "sha256"] and len(parts) == 5, f"stray {rel}"
                assert parts[2:4] == [name[:2], name[2:4]], f"misplaced blob {rel}"
                assert hashlib.sha256((here / name).read_bytes()).hexdigest() == name
                files.append(name)
        assert files == [SEED_HEX]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    s = Seeded(tmp_path_factory.mktemp("identifiers"))
    yield s
    s.repo.close()


def assert_error(res: webtest.TestResponse, status: int, code: str, field: str | None) -> None:
    """``res`` is the JSON error shape with this status, code and ``details.field``."""
    assert res.status_int == status, res.body[:300]
    assert res.content_type == "application/json"
    if res.request.method == "HEAD":
        assert res.body == b""
        return
    body = res.json
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) <= {"code", "message", "details", "request_id"}
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["request_id"], str) and err["request_id"]
    if field is not None:
        assert err["details"]["field"] == field


# -- the table: hostile values x every identifier slot of every route ----------------------

_CYRILLIC = {"a": "%D0%B0", "c": "%D1%81", "e": "%D0%B5", "o": "%D0%BE", "p": "%D1%80"}


def _lookalike(base: str) -> str:
    """Replace the first letter that has a Cyrillic twin (``acme`` -> ``аcme``)."""
    for i, ch in enumerate(base):
        if ch in _CYRILLIC:
            return base[:i] + _CYRILLIC[ch] + base[i + 1 :]
    return base + _CYRILLIC["a"]


def _fullwidth(base: str) -> str:
    """Every character as its fullwidth form (NFKC would fold it back to ASCII)."""
    return "".join("".join(f"%{b:02X}" for b in chr(ord(c) + 0xFEE0).encode()) for c in base)


def _overlong(base: str) -> str:
    """129 characters, one more than the patterns allow (a version gets a prerelease)."""
    head = base + "-" if base == "1.0.0" else base
    return head + "x" * (129 - len(head))


# Each transforms the (valid) base value of a field into a hostile, percent-encoded one.
HOSTILE: list[Any] = [
    pytest.param(lambda b: "..", id="dotdot"),
    pytest.param(lambda b: ".", id="dot"),
    pytest.param(lambda b: "%2E%2E", id="encoded-dotdot"),
    pytest.param(lambda b: "..\\" + b, id="backslash"),
    pytest.param(lambda b: "..%5C" + b, id="encoded-backslash"),
    pytest.param(lambda b: "..%5c..%5c" + b, id="encoded-backslash-lower"),
    pytest.param(lambda b: "..%252F" + b, id="double-encoded-slash"),
    pytest.param(lambda b: b + "%00", id="nul-suffix"),
    pytest.param(lambda b: b[:2] + "%00" + b[2:], id="nul-inside"),
    pytest.param(lambda b: b + "%0A", id="trailing-newline"),
    pytest.param(lambda b: "%0D%0A" + b, id="leading-crlf"),
    pytest.param(lambda b: "%09" + b, id="leading-tab"),
    pytest.param(lambda b: b + "%7F", id="del"),
    pytest.param(lambda b: b + "%1B", id="escape"),
    pytest.param(_lookalike, id="cyrillic-lookalike"),
    pytest.param(_fullwidth, id="fullwidth"),
    pytest.param(lambda b: "%EF%AC%81" + b, id="fi-ligature"),
    pytest.param(lambda b: b + "%C2%A0", id="nbsp"),
    pytest.param(_overlong, id="129-chars"),
    pytest.param(lambda b: b * (2000 // len(b)), id="2000-chars"),
    pytest.param(lambda b: "-" + b, id="leading-dash"),
    pytest.param(lambda b: "." + b, id="leading-dot"),
]

PATH4 = "/v1/{namespace}/{name}/{version}/{variant}"
TAGP = "/v1/{namespace}/{name}/tags/{tag}"

F4 = ("namespace", "name", "version", "variant")
F3 = ("namespace", "name", "tag")
F2 = ("namespace", "name")
BLOB = {"body": b"evil", "headers": {"Content-Type": "application/octet-stream"}}
JSON = {"body": json.dumps(TAG_BODY).encode(), "headers": {"Content-Type": "application/json"}}

# (route id, method, path template, fields of the path, client, extra request kwargs)
ROUTES: list[tuple[str, str, str, tuple[str, ...], str, dict[str, Any]]] = [
    ("publish", "PUT", PATH4 + "/blob", F4, "writer", BLOB),
    ("fetch", "GET", PATH4 + "/blob", F4, "writer", {}),
    ("fetch-head", "HEAD", PATH4 + "/blob", F4, "writer", {}),
    ("metadata", "GET", PATH4, F4, "writer", {}),
    ("delete", "DELETE", PATH4, F4, "admin", {}),
    ("latest", "GET", "/v1/{namespace}/{name}/latest", F2, "writer", {}),
    ("versions", "GET", "/v1/{namespace}/{name}/versions", F2, "writer", {}),
    ("tag-put", "PUT", TAGP, F3, "writer", JSON),
    ("tag-get", "GET", TAGP, F3, "writer", {}),
    ("tag-delete", "DELETE", TAGP, F3, "writer", {}),
    ("tags", "GET", "/v1/{namespace}/{name}/tags", F2, "writer", {}),
    ("packages", "GET", "/v1/{namespace}/packages", ("namespace",), "writer", {}),
    ("blob-by-digest", "GET", "/v1/blobs/sha256:{hex}", ("hex",), "writer", {}),
    ("blob-by-digest-head", "HEAD", "/v1/blobs/sha256:{hex}", ("hex",), "writer", {}),
]

SLOTS = [
    pytest.param(method, template, field, who, extra, id=f"{route}-{field}")
    for route, method, template, fields, who, extra in ROUTES
    for field in fields
]


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize(("method", "template", "field", "who", "extra"), SLOTS)
def test_hostile_path_segment(
    seeded: Seeded,
    hostile: Callable[[str], str],
    method: str,
    template: str,
    field: str,
    who: str,
    extra: dict[str, Any],
) -> None:
    values = {**BASE, field: hostile(BASE[field])}
    client = getattr(seeded, who)
    res = client.request(template.format(**values), method=method, expect_errors=True, **extra)
    assert_error(res, 400, "VALIDATION_ERROR", field)
    seeded.assert_untouched()


QUERY_AND_BODY = [
    pytest.param(
        "GET",
        "/v1/acme/app/latest?variant={v}",
        "variant",
        "linux",
        None,
        id="latest-query-variant",
    ),
    pytest.param(
        "GET",
        "/v1/acme/app/latest?prerelease=true&variant={v}",
        "variant",
        "linux",
        None,
        id="latest-prerelease-query-variant",
    ),
    pytest.param(
        "PUT",
        "/v1/acme/app/tags/stable",
        "target_version",
        "1.0.0",
        "target_version",
        id="tag-body-target-version",
    ),
    pytest.param(
        "PUT",
        "/v1/acme/app/tags/stable",
        "target_variant",
        "linux",
        "target_variant",
        id="tag-body-target-variant",
    ),
]


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize(("method", "url", "field", "base", "body_key"), QUERY_AND_BODY)
def test_hostile_query_and_body_values(
    seeded: Seeded,
    hostile: Callable[[str], str],
    method: str,
    url: str,
    field: str,
    base: str,
    body_key: str | None,
) -> None:
    value = hostile(base)
    if body_key is None:
        # In a query string the value stays encoded up to the app, which decodes it.
        res = seeded.writer.get(url.format(v=value), expect_errors=True)
    else:
        # A JSON body carries the decoded text (a real NUL, a real Cyrillic letter ...).
        text = unquote(value)
        res = seeded.writer.put_json(url, {**TAG_BODY, body_key: text}, expect_errors=True)
        if len(text) > 128:
            # Refused by the body's JSON Schema (maxLength 128): details.problems.
            assert_error(res, 400, "VALIDATION_ERROR", None)
            problems = res.json["error"]["details"]["problems"]
            assert [p["path"] for p in problems] == [f"/{body_key}"]
            seeded.assert_untouched()
            return
    assert_error(res, 400, "VALIDATION_ERROR", field)
    seeded.assert_untouched()


# -- paths that no longer route the same once decoded ---------------------------------------

# Exactly what each answers. A decoded %2F splits the segment, so the request either
# matches no route at all (404 NOT_FOUND "no such endpoint"), matches a route only for
# other methods (405), or matches another route whose validation refuses it (400).
ROUTING: list[Any] = [
    # publish: one segment too many, or an empty one: no route has that shape.
    pytest.param(
        "PUT", "/v1/a%2Fb/app/1.0.0/linux/blob", 404, "NOT_FOUND", None, id="publish-ns-slash"
    ),
    pytest.param(
        "PUT",
        "/v1/acme/a%2fb/1.0.0/linux/blob",
        404,
        "NOT_FOUND",
        None,
        id="publish-name-slash-lower",
    ),
    pytest.param(
        "PUT",
        "/v1/acme/app/1.0.0%2F..%2F..%2Fx/linux/blob",
        404,
        "NOT_FOUND",
        None,
        id="publish-version-traversal",
    ),
    pytest.param(
        "PUT",
        "/v1/acme/app/1.0.0/..%2F..%2Flinux/blob",
        404,
        "NOT_FOUND",
        None,
        id="publish-variant-traversal",
    ),
    pytest.param(
        "PUT", "/v1//app/1.0.0/linux/blob", 404, "NOT_FOUND", None, id="publish-empty-ns"
    ),
    pytest.param(
        "PUT", "/v1/acme/app//linux/blob", 404, "NOT_FOUND", None, id="publish-empty-version"
    ),
    pytest.param(
        "PUT", "/v1/acme/app/1.0.0//blob", 404, "NOT_FOUND", None, id="publish-empty-variant"
    ),
    # The trailing slash is accepted on every route, so this is GET-only blob path +
    # a method that is not allowed there.
    pytest.param(
        "POST",
        "/v1/acme/app/1.0.0/linux/blob/",
        405,
        "METHOD_NOT_ALLOWED",
        None,
        id="publish-wrong-method",
    ),
    pytest.param(
        "GET", "/v1/a%2Fb/app/1.0.0/linux/blob", 404, "NOT_FOUND", None, id="fetch-ns-slash"
    ),
    pytest.param(
        "GET",
        "/v1/acme/app/1.0.0/%2E%2E%2Flinux/blob",
        404,
        "NOT_FOUND",
        None,
        id="fetch-variant-traversal",
    ),
    pytest.param(
        "GET", "/v1/a%2Fb/app/1.0.0/linux", 404, "NOT_FOUND", None, id="metadata-ns-slash"
    ),
    pytest.param(
        "GET", "/v1/acme/app/1.0.0/", 404, "NOT_FOUND", None, id="metadata-empty-variant"
    ),
    pytest.param(
        "DELETE", "/v1/acme/app/1.0.0/a%2Fb", 404, "NOT_FOUND", None, id="delete-variant-slash"
    ),
    pytest.param("DELETE", "/v1//app/1.0.0/linux", 404, "NOT_FOUND", None, id="delete-empty-ns"),
    # /v1/a/b/app/latest has the shape of the metadata route: version "app" is refused.
    pytest.param(
        "GET", "/v1/a%2Fb/app/latest", 400, "VALIDATION_ERROR", "version", id="latest-ns-slash"
    ),
    pytest.param(
        "GET", "/v1/acme/a%2Fb/latest", 400, "VALIDATION_ERROR", "version", id="latest-name-slash"
    ),
    pytest.param("GET", "/v1/acme//latest", 404, "NOT_FOUND", None, id="latest-empty-name"),
    pytest.param(
        "GET", "/v1/a%2Fb/app/versions", 400, "VALIDATION_ERROR", "version", id="versions-ns-slash"
    ),
    pytest.param(
        "GET", "/v1/acme/a%2Fb/tags", 400, "VALIDATION_ERROR", "version", id="tags-name-slash"
    ),
    pytest.param(
        "PUT", "/v1/a%2Fb/app/tags/stable", 404, "NOT_FOUND", None, id="tag-put-ns-slash"
    ),
    pytest.param("PUT", "/v1/acme/app/tags/a%2Fb", 404, "NOT_FOUND", None, id="tag-put-tag-slash"),
    pytest.param(
        "PUT", "/v1/acme/app/tags/..%2F..%2Fx", 404, "NOT_FOUND", None, id="tag-put-tag-traversal"
    ),
    # An empty tag + the accepted trailing slash is the tag list, which is GET only.
    pytest.param(
        "PUT", "/v1/acme/app/tags/", 405, "METHOD_NOT_ALLOWED", None, id="tag-put-empty-tag"
    ),
    pytest.param(
        "DELETE", "/v1/acme/app/tags/", 405, "METHOD_NOT_ALLOWED", None, id="tag-delete-empty-tag"
    ),
    pytest.param("GET", "/v1/acme/app/tags/a%2Fb", 404, "NOT_FOUND", None, id="tag-get-tag-slash"),
    pytest.param(
        "DELETE", "/v1/acme/app/tags/a%2Fb", 404, "NOT_FOUND", None, id="tag-delete-tag-slash"
    ),
    pytest.param("GET", "/v1/a%2Fb/packages", 404, "NOT_FOUND", None, id="packages-ns-slash"),
    pytest.param("GET", "/v1//packages", 404, "NOT_FOUND", None, id="packages-empty-ns"),
    pytest.param(
        "GET", "/v1/blobs/sha256:a%2Fb", 404, "NOT_FOUND", None, id="blob-by-digest-slash"
    ),
    pytest.param("GET", "/v1/blobs/sha256:", 404, "NOT_FOUND", None, id="blob-by-digest-empty"),
    pytest.param(
        "GET",
        "/v1/blobs/sha256:..%2F..%2F..%2Fkv%2FCURRENT",
        404,
        "NOT_FOUND",
        None,
        id="blob-by-digest-traversal",
    ),
]


@pytest.mark.parametrize(("method", "url", "status", "code", "field"), ROUTING)
def test_paths_that_do_not_route(
    seeded: Seeded, method: str, url: str, status: int, code: str, field: str | None
) -> None:
    client = seeded.admin if method == "DELETE" else seeded.writer
    kwargs = BLOB if method in ("PUT", "POST") else {}
    res = client.request(url, method=method, expect_errors=True, **kwargs)
    assert_error(res, status, code, field)
    if status == 404:
        assert res.json["error"]["message"] == "no such endpoint"
    if status == 405:
        allowed = res.headers["Allow"].split(", ")
        assert "GET" in allowed and method not in allowed
    seeded.assert_untouched()


# -- ?q= on the package listing: a prefix, normalised but not pattern-checked ---------------


@pytest.mark.parametrize(
    "q",
    [
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param("a%2Fb", id="encoded-slash"),
        pytest.param("..%2F..%2F", id="encoded-traversal"),
        pytest.param("..%5C", id="encoded-backslash"),
        pytest.param("-a", id="leading-dash"),
        pytest.param(".a", id="leading-dot"),
        pytest.param("app" + "x" * 126, id="129-chars"),
        pytest.param("%2A", id="star"),
        pytest.param("%25", id="percent"),
    ],
)
def test_packages_q_printable_prefixes_match_nothing(seeded: Seeded, q: str) -> None:
    res = seeded.writer.get(f"/v1/acme/packages?q={q}")
    assert res.json == {"packages": [], "next_cursor": None}
    seeded.assert_untouched()


@pytest.mark.parametrize(
    "q",
    [
        pytest.param("app%00", id="nul"),
        pytest.param("app%0A", id="trailing-newline"),
        pytest.param("%09app", id="leading-tab"),
        pytest.param("%D0%B0pp", id="cyrillic-lookalike"),
        pytest.param("%EF%BD%81pp", id="fullwidth"),
        pytest.param("%EF%AC%81", id="fi-ligature"),
        pytest.param("a" * 2000, id="2000-chars"),
    ],
)
def test_packages_q_refuses_control_and_non_ascii(seeded: Seeded, q: str) -> None:
    res = seeded.writer.get(f"/v1/acme/packages?q={q}", expect_errors=True)
    assert_error(res, 400, "VALIDATION_ERROR", "q")
    seeded.assert_untouched()


# -- what the app receives, and normalisation that is allowed -------------------------------


def test_what_the_app_receives(repo: Repository) -> None:
    """webtest (like a WSGI server) hands the app a percent-decoded PATH_INFO."""
    seen: list[str] = []
    core = repo.wsgi_app()

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["PATH_INFO"])
        return core(environ, start_response)

    client = webtest.TestApp(recording, extra_environ={"goodrepo.principal": WRITER})
    client.get("/v1/a%2Fb/app/latest", expect_errors=True)
    client.get("/v1/a%00b/app/latest", expect_errors=True)
    client.get("/v1/%D0%B0cme/app/latest", expect_errors=True)
    client.get("/v1/a%252Fb/app/latest", expect_errors=True)
    assert seen == [
        "/v1/a/b/app/latest",
        "/v1/a\x00b/app/latest",
        "/v1/\xd0\xb0cme/app/latest",  # UTF-8 bytes as latin-1 (PEP 3333)
        "/v1/a%2Fb/app/latest",  # decoded once only
    ]


def test_normalisation_addresses_one_resource(repo: Repository, client: Any) -> None:
    res = publish(client, "ACME/My_App/1.0.0/Linux", b"one")
    assert res.headers["Location"].endswith("/v1/acme/my-app/1.0.0/linux/blob")
    for spelling in [
        "acme/my-app/1.0.0/linux",
        "Acme/MY_APP/1.0.0/LINUX",
        "%20acme%20/my_app/%201.0.0/linux%20",  # spaces are trimmed (printable ASCII)
    ]:
        meta = client.get(f"/v1/{spelling}").json
        assert (meta["namespace"], meta["name"], meta["version"], meta["variant"]) == (
            "acme",
            "my-app",
            "1.0.0",
            "linux",
        )
    err = publish(client, "acme/MY-APP/1.0.0/LINUX", b"two", status=409).json["error"]
    assert err["code"] == "ALREADY_EXISTS"
    # The namespace keeps its underscore (only the name maps _ to -).
    publish(client, "My_Org/app/1.0.0/linux", b"three")
    assert client.get("/v1/namespaces").json["namespaces"] == ["acme", "my_org"]
    # Versions are case-sensitive: these are two artifacts.
    publish(client, "acme/my-app/1.0.0-RC.1/linux", b"rc-upper")
    publish(client, "acme/my-app/1.0.0-rc.1/linux", b"rc-lower")
    versions = client.get("/v1/acme/my-app/versions").json["versions"]
    assert sorted(v["version"] for v in versions) == ["1.0.0", "1.0.0-RC.1", "1.0.0-rc.1"]


def test_length_bounds(client: Any) -> None:
    longest = "a" * 128
    publish(client, f"{longest}/{longest}/1.0.0-{'r' * 122}/{longest}", b"x")
    assert client.get(f"/v1/{longest}/packages").json["packages"][0]["name"] == longest
    err = publish(client, f"{longest}b/app/1.0.0/linux", status=400).json["error"]
    assert err["details"]["field"] == "namespace"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        pytest.param("/v1/{long}/app/1.0.0/linux", "namespace", id="namespace"),
        pytest.param("/v1/acme/{long}/1.0.0/linux", "name", id="name"),
        pytest.param("/v1/acme/app/{long}/linux", "version", id="version"),
        pytest.param("/v1/acme/app/1.0.0/{long}", "variant", id="variant"),
        pytest.param("/v1/acme/app/tags/{long}", "tag", id="tag"),
        pytest.param("/v1/acme/app/latest?variant={long}", "variant", id="query-variant"),
        pytest.param("/v1/acme/packages?q={long}", "q", id="query-q"),
    ],
)
def test_an_overlong_identifier_is_called_too_long(client: Any, path: str, field: str) -> None:
    res = client.get(path.format(long="a" * 1021), expect_errors=True)
    assert_error(res, 400, "VALIDATION_ERROR", field)
    assert res.json["error"]["message"] == f"{field} is too long: at most 1020 characters"
    # At the bound the value is screened through: whatever follows says something else.
    assert "too long" not in client.get(path.format(long="a" * 1020), expect_errors=True).text


def test_max_length_of_a_schema_field_bounds_the_raw_value() -> None:
    entity = Entity.from_schema(
        "thing",
        {"fields": {"name": {"pattern": "^[a-z ]+$", "max_length": 5, "normalize": ["trim"]}}},
    )
    assert entity.clean("name", " abc ") == "abc"  # 5 characters before trimming
    with pytest.raises(ValidationError, match="name is too long: at most 5 characters"):
        entity.clean("name", " abc  ")
