"""GET /v1/namespaces and GET /v1/{ns}/packages: shapes, latest, ?q=, pagination, cursors."""

from __future__ import annotations

import re
from typing import Any

import pytest
import webtest

from .conftest import publish


def follow(client: webtest.TestApp, url: str, key: str) -> tuple[list[Any], list[int]]:
    """Walk a listing through its Link headers; the items and the size of each page."""
    items: list[Any] = []
    sizes = []
    while True:
        res = client.get(url)
        page = res.json
        items += page[key]
        sizes.append(len(page[key]))
        if page["next_cursor"] is None:
            assert "Link" not in res.headers
            return items, sizes
        m = re.fullmatch(r'<([^>]+)>; rel="next"', res.headers["Link"])
        assert m, res.headers["Link"]
        assert f"cursor={page['next_cursor']}" in m.group(1)
        url = m.group(1)


def test_shapes(client: webtest.TestApp) -> None:
    publish(client, "acme/app/1.0.0/linux", b"a")
    publish(client, "beta/lib/0.1.0/any", b"b")
    ns = client.get("/v1/namespaces")
    assert ns.content_type == "application/json"
    assert ns.json == {"namespaces": ["acme", "beta"], "next_cursor": None}
    assert client.get("/v1/acme/packages").json == {
        "packages": [{"name": "app", "latest": "1.0.0", "versions_count": 1}],
        "next_cursor": None,
    }
    # Unknown namespace: an empty list, not an error. Namespaces are normalised.
    assert client.get("/v1/nobody/packages").json == {"packages": [], "next_cursor": None}
    assert client.get("/v1/ACME/packages").json["packages"][0]["name"] == "app"


@pytest.mark.parametrize(
    ("published", "latest", "count"),
    [
        pytest.param(["1.0.0/linux"], "1.0.0", 1, id="one"),
        pytest.param(
            ["1.9.0/linux", "1.10.0/linux", "1.2.0/linux"], "1.10.0", 3, id="numeric-not-lexical"
        ),
        pytest.param(
            ["1.0.0/linux", "2.0.0-rc.1/linux"], "1.0.0", 2, id="release-beats-newer-prerelease"
        ),
        pytest.param(
            ["1.0.0-alpha/linux", "1.0.0-rc.1/linux", "1.0.0-beta.2/linux"],
            "1.0.0-rc.1",
            3,
            id="only-prereleases",
        ),
        pytest.param(
            ["1.0.0/linux", "1.0.0/windows", "0.9.0/mac"], "1.0.0", 3, id="variants-are-counted"
        ),
    ],
)
def test_latest_and_versions_count(
    client: webtest.TestApp, published: list[str], latest: str, count: int
) -> None:
    for i, coords in enumerate(published):
        publish(client, f"acme/app/{coords}", str(i).encode())
    assert client.get("/v1/acme/packages").json["packages"] == [
        {"name": "app", "latest": latest, "versions_count": count}
    ]


def test_latest_follows_deletes(client: webtest.TestApp, admin: webtest.TestApp) -> None:
    for v in ["1.0.0", "2.0.0", "3.0.0-rc.1"]:
        publish(client, f"acme/app/{v}/linux", v.encode())
    admin.delete("/v1/acme/app/2.0.0/linux", status=204)
    assert client.get("/v1/acme/packages").json["packages"] == [
        {"name": "app", "latest": "1.0.0", "versions_count": 2}
    ]
    admin.delete("/v1/acme/app/1.0.0/linux", status=204)
    assert client.get("/v1/acme/packages").json["packages"] == [
        {"name": "app", "latest": "3.0.0-rc.1", "versions_count": 1}
    ]


@pytest.mark.parametrize(
    ("q", "names"),
    [
        pytest.param("", ["my-app", "my-lib", "myapp", "other"], id="empty-is-all"),
        pytest.param("my-", ["my-app", "my-lib"], id="dash"),
        pytest.param("My_", ["my-app", "my-lib"], id="normalised-underscore-and-case"),
        pytest.param("%20MY_A%20", ["my-app"], id="trimmed"),
        pytest.param("my", ["my-app", "my-lib", "myapp"], id="short"),
        pytest.param("my-app", ["my-app"], id="whole-name"),
        pytest.param("my-app-", [], id="longer-than-any"),
        pytest.param("x", [], id="none"),
    ],
)
def test_q_filters_by_normalised_prefix(client: webtest.TestApp, q: str, names: list[str]) -> None:
    for name in ["other", "my_lib", "MY-APP", "myapp"]:
        publish(client, f"acme/{name}/1.0.0/linux", name.encode())
    got = client.get(f"/v1/acme/packages?q={q}").json
    assert [p["name"] for p in got["packages"]] == names
    assert got["next_cursor"] is None


def test_namespaces_paginate_through_link_headers(client: webtest.TestApp) -> None:
    names = [f"ns{i:02d}" for i in range(8)]
    for ns in reversed(names):
        publish(client, f"{ns}/app/1.0.0/linux", ns.encode())
    items, sizes = follow(client, "/v1/namespaces?limit=3", "namespaces")
    assert items == names
    assert sizes == [3, 3, 2]
    # A limit that divides the list exactly still ends with a null cursor.
    items, sizes = follow(client, "/v1/namespaces?limit=4", "namespaces")
    assert (items, sizes) == (names, [4, 4])


def test_packages_paginate_with_q(client: webtest.TestApp) -> None:
    for i in range(7):
        publish(client, f"acme/lib-{i}/1.{i}.0/linux", b"x")
        publish(client, f"acme/app-{i}/1.0.0/linux", b"y")
    first = client.get("/v1/acme/packages?q=LIB_&limit=2")
    link = first.headers["Link"]
    assert "q=LIB_" in link and "limit=2" in link  # the request's query, cursor replaced
    items, sizes = follow(client, "/v1/acme/packages?q=LIB_&limit=2", "packages")
    assert [p["name"] for p in items] == [f"lib-{i}" for i in range(7)]
    assert [p["latest"] for p in items] == [f"1.{i}.0" for i in range(7)]
    assert sizes == [2, 2, 2, 1]
    all_items, _ = follow(client, "/v1/acme/packages?limit=5", "packages")
    assert len(all_items) == 14


def test_the_next_link_is_a_uri_when_the_path_held_escapes(client: webtest.TestApp) -> None:
    for version in ("1.0.0", "2.0.0"):
        publish(client, f"acme/spaced/{version}/linux", b"x")
    # "spaced%20" is trimmed to "spaced"; the link keeps the path as sent, escaped again.
    link = client.get("/v1/acme/spaced%20/versions?limit=1").headers["Link"]
    assert link.startswith("</v1/acme/spaced%20/versions?limit=1&cursor="), link
    url = re.fullmatch(r'<([^>]+)>; rel="next"', link)[1]  # type: ignore[index]
    assert client.get(url).json["versions"][0]["version"] == "1.0.0"


def test_cursor_stays_valid_across_writes(client: webtest.TestApp) -> None:
    for ns in ["a1", "a3", "a5"]:
        publish(client, f"{ns}/app/1.0.0/linux", b"x")
    page = client.get("/v1/namespaces?limit=2").json
    assert page["namespaces"] == ["a1", "a3"]
    publish(client, "a2/app/1.0.0/linux", b"x")  # before the cursor: not seen
    publish(client, "a4/app/1.0.0/linux", b"x")  # after it: seen
    rest = client.get(f"/v1/namespaces?limit=2&cursor={page['next_cursor']}").json
    assert rest["namespaces"] == ["a4", "a5"]


def test_deleting_the_last_version_removes_package_then_namespace(
    client: webtest.TestApp, admin: webtest.TestApp
) -> None:
    publish(client, "acme/app/1.0.0/linux", b"1")
    publish(client, "acme/app/1.0.0/windows", b"2")
    publish(client, "acme/lib/1.0.0/linux", b"3")
    publish(client, "zeta/solo/1.0.0/linux", b"4")
    admin.delete("/v1/acme/app/1.0.0/linux", status=204)
    assert client.get("/v1/acme/packages").json["packages"] == [
        {"name": "app", "latest": "1.0.0", "versions_count": 1},
        {"name": "lib", "latest": "1.0.0", "versions_count": 1},
    ]
    admin.delete("/v1/acme/app/1.0.0/windows", status=204)
    assert [p["name"] for p in client.get("/v1/acme/packages").json["packages"]] == ["lib"]
    assert client.get("/v1/namespaces").json["namespaces"] == ["acme", "zeta"]
    admin.delete("/v1/acme/lib/1.0.0/linux", status=204)
    assert client.get("/v1/namespaces").json["namespaces"] == ["zeta"]
    assert client.get("/v1/acme/packages").json["packages"] == []
    # Publishing again brings both back, counted from zero.
    publish(client, "acme/app/2.0.0/linux", b"5")
    assert client.get("/v1/namespaces").json["namespaces"] == ["acme", "zeta"]
    assert client.get("/v1/acme/packages").json["packages"] == [
        {"name": "app", "latest": "2.0.0", "versions_count": 1}
    ]


LISTINGS = ["/v1/namespaces", "/v1/acme/packages"]


@pytest.mark.parametrize("url", LISTINGS, ids=["namespaces", "packages"])
@pytest.mark.parametrize(
    ("limit", "status"),
    [
        pytest.param("0", 400, id="zero"),
        pytest.param("1001", 400, id="1001"),
        pytest.param("-1", 400, id="negative"),
        pytest.param("1.5", 400, id="fraction"),
        pytest.param("ten", 400, id="word"),
        pytest.param("99999999999999999999", 400, id="huge"),
        pytest.param("9" * 5000, 400, id="more-digits-than-int-reads"),
        pytest.param("%C2%B2", 400, id="superscript-two"),
        pytest.param("%D9%A1", 400, id="arabic-indic-one"),
        pytest.param("%EF%BC%95", 400, id="fullwidth-five"),
        pytest.param("1", 200, id="one"),
        pytest.param("1000", 200, id="1000"),
        pytest.param("", 200, id="empty-means-default"),
    ],
)
def test_limit_bounds(client: webtest.TestApp, url: str, limit: str, status: int) -> None:
    publish(client, "acme/app/1.0.0/linux", b"x")
    res = client.get(f"{url}?limit={limit}", status=status)
    if status == 400:
        err = res.json["error"]
        assert (err["code"], err["details"]["field"]) == ("VALIDATION_ERROR", "limit")


@pytest.mark.parametrize("url", LISTINGS, ids=["namespaces", "packages"])
@pytest.mark.parametrize(
    ("cursor", "code", "field"),
    [
        pytest.param("!!!", "INVALID_REQUEST", None, id="not-base64"),
        pytest.param("%C3%A9t%C3%A9", "VALIDATION_ERROR", "cursor", id="not-ascii"),
        pytest.param("A" * 2049, "VALIDATION_ERROR", "cursor", id="too-long"),
        # A route may put the cursor in a header (a Link, a redirect): no line breaks.
        pytest.param("a%0Ab", "VALIDATION_ERROR", "cursor", id="control-character"),
    ],
)
def test_garbage_cursors(
    client: webtest.TestApp, url: str, cursor: str, code: str, field: str | None
) -> None:
    publish(client, "acme/app/1.0.0/linux", b"x")
    err = client.get(f"{url}?cursor={cursor}", status=400).json["error"]
    assert err["code"] == code
    if field:
        assert err["details"]["field"] == field


def test_cursor_made_for_another_q_is_refused(client: webtest.TestApp) -> None:
    for name in ["app-a", "app-b", "lib-a", "lib-b"]:
        publish(client, f"acme/{name}/1.0.0/linux", b"x")
    cursor = client.get("/v1/acme/packages?q=app&limit=1").json["next_cursor"]
    err = client.get(f"/v1/acme/packages?q=lib&cursor={cursor}", status=400).json["error"]
    assert err["code"] == "INVALID_REQUEST"


def test_a_cursor_with_characters_added_is_refused(client: webtest.TestApp) -> None:
    for name in ["app-a", "app-b"]:
        publish(client, f"acme/{name}/1.0.0/linux", b"x")
    cursor = client.get("/v1/acme/packages?limit=1").json["next_cursor"]
    client.get(f"/v1/acme/packages?cursor={cursor}")
    # Base64 decoders skip characters outside the alphabet unless told not to.
    for spoiled in (cursor[:2] + "." + cursor[2:], cursor + "=", cursor.replace(cursor[-1], "+")):
        err = client.get(f"/v1/acme/packages?cursor={spoiled}", status=400).json["error"]
        assert err["code"] == "INVALID_REQUEST", spoiled


def _cursor_of(client: webtest.TestApp, url: str) -> str:
    cursor = client.get(url).json["next_cursor"]
    assert cursor
    return str(cursor)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param("/v1/namespaces?limit=1", "/v1/acme/packages", id="namespaces-to-packages"),
        pytest.param("/v1/acme/packages?limit=1", "/v1/namespaces", id="packages-to-namespaces"),
        pytest.param(
            "/v1/acme/app/versions?limit=1", "/v1/acme/packages", id="versions-to-packages"
        ),
        pytest.param("/v1/acme/app/tags?limit=1", "/v1/namespaces", id="tags-to-namespaces"),
        pytest.param(None, "/v1/acme/packages", id="decodable-garbage"),
    ],
)
def test_cursor_from_another_listing_is_refused(
    client: webtest.TestApp, source: str | None, target: str
) -> None:
    for coords in [
        "acme/app/1.0.0/linux",
        "acme/app/2.0.0/linux",
        "acme/lib/1.0.0/linux",
        "beta/app/1.0.0/linux",
    ]:
        publish(client, coords, b"x")
    for tag in ["a", "b"]:
        client.put_json(
            f"/v1/acme/app/tags/{tag}", {"target_version": "1.0.0", "target_variant": "linux"}
        )
    cursor = _cursor_of(client, source) if source else "zzzz"
    err = client.get(f"{target}?cursor={cursor}", status=400).json["error"]
    assert err["code"] == "INVALID_REQUEST"
