"""Fixtures for the repository core: a fresh repository per test and webtest clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import webtest

from goodrepo.repository import Repository
from goodrepo.storage.kv import KV
from middleware.keys import PRINCIPAL


def principal(sub: str = "alice", *scopes: str) -> dict[str, Any]:
    """A principal as the auth middleware would put it in the environ."""
    return {
        "sub": sub,
        "scopes": list(scopes or ("read", "write")),
        "token_id": None,
        "claims": {},
        "anonymous": False,
    }


ADMIN = principal("root", "admin")
WRITER = principal("alice", "read", "write")
READER = principal("bob", "read")


@pytest.fixture
def kv(tmp_path: Any) -> Iterator[KV]:
    """A bare KV store on a fresh directory."""
    store = KV(tmp_path / "kv")
    yield store
    store.close()


@pytest.fixture
def repo(tmp_path: Any) -> Iterator[Repository]:
    r = Repository.open(tmp_path / "data")
    yield r
    r.close()


def client_for(repo: Repository, who: dict[str, Any] | None) -> webtest.TestApp:
    extra = {PRINCIPAL: who} if who is not None else {}
    return webtest.TestApp(repo.wsgi_app(), extra_environ=extra)


@pytest.fixture
def client(repo: Repository) -> webtest.TestApp:
    """A client authenticated with read and write scopes."""
    return client_for(repo, WRITER)


@pytest.fixture
def admin(repo: Repository) -> webtest.TestApp:
    return client_for(repo, ADMIN)


@pytest.fixture
def reader(repo: Repository) -> webtest.TestApp:
    return client_for(repo, READER)


@pytest.fixture
def anonymous(repo: Repository) -> webtest.TestApp:
    return client_for(repo, None)


def publish(
    client: webtest.TestApp,
    coords: str,
    body: bytes = b"hello",
    status: int | str = 201,
    **headers: str,
) -> webtest.TestResponse:
    """PUT ``body`` at /v1/<coords>/blob."""
    hdrs = {"Content-Type": "application/octet-stream", **headers}
    return client.put(f"/v1/{coords}/blob", body, headers=hdrs, status=status)
