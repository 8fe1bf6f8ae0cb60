"""A client written for the original goodpackagerepo backend works unchanged against
``goodrepo serve``.

The client below is written the way the original project's seed loader is: plain
``requests`` calls, login with ``{"username", "password"}`` and the ``token`` field of the
answer, blobs PUT as ``application/octet-stream`` with a bearer token, tags PUT as
``{"target_version", "target_variant"}``; it expects 201, then 409 for a repeat, and 200.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import requests

from .conftest import ADMIN_PASSWORD

# The only addition to the original client: a bound on every wait (same requests on the wire).
TIMEOUT = 30

SEED: dict[str, list[dict[str, str]]] = {
    "packages": [
        {
            "namespace": "acme",
            "name": "hello-world",
            "version": "1.0.0",
            "variant": "linux-amd64",
            "content": "#!/bin/sh\necho 'Hello, World!'\n",
        },
        {
            "namespace": "acme",
            "name": "hello-world",
            "version": "1.1.0",
            "variant": "linux-amd64",
            "content": "#!/bin/sh\necho 'Hello, World! v1.1'\n",
        },
        {
            "namespace": "acme",
            "name": "hello-world",
            "version": "1.1.0",
            "variant": "windows-amd64",
            "content": "@echo off\r\necho Hello, World! v1.1\r\n",
        },
        {
            "namespace": "tools",
            "name": "data-processor",
            "version": "2.3.1",
            "variant": "noarch",
            "content": "print('Grüße aus dem Datenprozessor')\n",
        },
    ],
    "tags": [
        {
            "namespace": "acme",
            "name": "hello-world",
            "tag": "latest",
            "target_version": "1.1.0",
            "target_variant": "linux-amd64",
        },
        {
            "namespace": "acme",
            "name": "hello-world",
            "tag": "stable",
            "target_version": "1.0.0",
            "target_variant": "linux-amd64",
        },
        {
            "namespace": "tools",
            "name": "data-processor",
            "tag": "stable",
            "target_version": "2.3.1",
            "target_variant": "noarch",
        },
    ],
}


# -- the client, as the original seed loader talks to the backend ---------------------------


def backend_is_reachable(backend_url: str) -> bool:
    response = requests.get(f"{backend_url}/health", timeout=5)
    return response.status_code == 200


def login(backend_url: str, username: str, password: str) -> str:
    """Login and get JWT token."""
    response = requests.post(
        f"{backend_url}/auth/login",
        json={"username": username, "password": password},
        timeout=TIMEOUT,
    )
    if response.status_code != 200:
        raise RuntimeError(f"Login failed: {response.status_code} {response.text}")
    data = response.json()
    return data["token"]


def publish_package(backend_url: str, token: str, package: dict[str, Any]) -> int:
    """Publish a package to the repository; returns the status code."""
    namespace = package["namespace"]
    name = package["name"]
    version = package["version"]
    variant = package["variant"]
    content = package["content"].encode("utf-8")

    url = f"{backend_url}/v1/{namespace}/{name}/{version}/{variant}/blob"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    response = requests.put(url, headers=headers, data=content, timeout=TIMEOUT)
    if response.status_code == 201:
        data = response.json()
        assert data["digest"].startswith("sha256:")
    return response.status_code


def set_tag(backend_url: str, token: str, tag_info: dict[str, Any]) -> int:
    """Set a tag for a package; returns the status code."""
    namespace = tag_info["namespace"]
    name = tag_info["name"]
    tag = tag_info["tag"]
    url = f"{backend_url}/v1/{namespace}/{name}/tags/{tag}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    response = requests.put(
        url,
        headers=headers,
        json={
            "target_version": tag_info["target_version"],
            "target_variant": tag_info["target_variant"],
        },
        timeout=TIMEOUT,
    )
    return response.status_code


# -- the test -------------------------------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client uses plain ``requests`` calls: keep them on loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_original_seed_loader_works_unchanged(server: Any, no_proxy: None) -> None:
    srv = server()
    backend = srv.url
    assert backend_is_reachable(backend)
    token = login(backend, "admin", ADMIN_PASSWORD)

    assert [publish_package(backend, token, p) for p in SEED["packages"]] == [201] * 4
    assert [publish_package(backend, token, p) for p in SEED["packages"]] == [409] * 4
    assert [set_tag(backend, token, t) for t in SEED["tags"]] == [200] * 3

    # A second run of the whole loader, with a fresh login, is harmless.
    token = login(backend, "admin", ADMIN_PASSWORD)
    assert [publish_package(backend, token, p) for p in SEED["packages"]] == [409] * 4
    assert [set_tag(backend, token, t) for t in SEED["tags"]] == [200] * 3

    # What the loader stored is served back intact.
    auth = {"Authorization": f"Bearer {token}"}
    for p in SEED["packages"]:
        coords = f"{p['namespace']}/{p['name']}/{p['version']}/{p['variant']}"
        r = requests.get(f"{backend}/v1/{coords}/blob", headers=auth, timeout=TIMEOUT)
        assert r.status_code == 200
        assert r.content == p["content"].encode("utf-8")
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        assert r.headers["ETag"] == f'"{digest}"'
    for t in SEED["tags"]:
        url = f"{backend}/v1/{t['namespace']}/{t['name']}/tags/{t['tag']}"
        record = requests.get(url, headers=auth, timeout=TIMEOUT).json()
        assert (record["target_version"], record["target_variant"]) == (
            t["target_version"],
            t["target_variant"],
        )
    latest = requests.get(f"{backend}/v1/acme/hello-world/latest", headers=auth, timeout=TIMEOUT)
    assert latest.json()["version"] == "1.1.0"
    # Without a token the original refused writes; so does goodrepo.
    bare = requests.put(
        f"{backend}/v1/acme/hello-world/9.0.0/noarch/blob",
        headers={"Content-Type": "application/octet-stream"},
        data=b"anonymous",
        timeout=TIMEOUT,
    )
    assert bare.status_code == 401
