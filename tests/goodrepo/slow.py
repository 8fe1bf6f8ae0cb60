"""Requests that block mid-body, for tests of what runs while one is in flight."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from goodrepo.repository import Repository
from middleware.keys import PRINCIPAL

from .conftest import WRITER

TIMEOUT = 30.0


class BlockingBody(io.RawIOBase):
    """A request body that sends ``head``, then blocks until ``release`` is set."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail
        self.blocked = threading.Event()
        self.release = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.head:
            self.blocked.set()
            if not self.release.wait(TIMEOUT):
                raise OSError("the test never released the upload")
            self.head, self.tail = self.tail, b""
        n = min(len(buffer), len(self.head))
        buffer[:n] = self.head[:n]
        self.head = self.head[n:]
        return n


def start_slow_put(
    repo: Repository,
    path: str,
    body: BlockingBody,
    length: int,
    content_type: str = "application/octet-stream",
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a PUT whose body blocks, in its own thread; its answer lands in ``out``."""
    environ = EnvironBuilder(path=path, method="PUT", content_type=content_type).get_environ()
    environ["wsgi.input"] = body
    environ["CONTENT_LENGTH"] = str(length)
    environ[PRINCIPAL] = WRITER
    out: dict[str, Any] = {}

    def run() -> None:
        res = Response.from_app(repo.wsgi_app(), environ)
        out["status"], out["json"] = res.status_code, res.get_json()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert body.blocked.wait(TIMEOUT), "the slow request never started reading its body"
    return thread, out


def start_slow_publish(
    repo: Repository, coords: str, body: BlockingBody, length: int
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a publish of ``coords`` whose body blocks, in its own thread."""
    return start_slow_put(repo, f"/v1/{coords}/blob", body, length)


def run_bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in another thread and fail if it does not finish within TIMEOUT."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=TIMEOUT)
    finally:
        pool.shutdown(wait=False)
