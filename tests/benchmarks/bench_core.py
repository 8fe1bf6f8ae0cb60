"""Benchmarks of the repository core; prints its figures, asserts nothing.

1. Upload and download MB/s of a 1 GiB blob through the core app, called in-process with
   a streaming ``wsgi.input``, beside this machine's sha256-plus-write ceiling measured in
   the same run. Goal: at least 70% of the ceiling.
2. Peak RSS during that upload, above the idle RSS. Goal: under 100 MiB.
   The same upload and download over HTTP to waitress on 127.0.0.1 are printed too: waitress
   spools a request body to a temporary file before the app reads it, so over HTTP every
   byte is written twice.
3. "latest" latency for a package with 10 versions and one with 100 000 versions.
   Goal: ratio at most 2.

Run: ``python tests/benchmarks/bench_core.py [--size-mib 1024]``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil

CHUNK = os.urandom(1 << 20)

SERVER = textwrap.dedent(
    """
    import sys, waitress
    from goodrepo.repository import Repository
    from middleware.keys import PRINCIPAL
    repo = Repository.open(sys.argv[1])
    core = repo.wsgi_app()
    who = {"sub": "bench", "scopes": ["admin"], "token_id": None, "claims": {}}
    def app(environ, start_response):
        environ[PRINCIPAL] = who
        return core(environ, start_response)
    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[2]), threads=4,
                   max_request_body_size=1 << 40, _quiet=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ceiling(size: int, directory: Path) -> float:
    """MB/s of hashing and writing ``size`` bytes to a file, then fsync: the upper bound."""
    start = time.perf_counter()
    h = hashlib.sha256()
    with open(directory / "ceiling", "wb") as fh:
        for _ in range(size // len(CHUNK)):
            h.update(CHUNK)
            fh.write(CHUNK)
        fh.flush()
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    os.unlink(directory / "ceiling")
    return size / elapsed / 1e6


def upload(port: int, size: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.putrequest("PUT", "/v1/bench/big/1.0.0/any/blob")
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    for _ in range(size // len(CHUNK)):
        conn.send(CHUNK)
    res = conn.getresponse()
    body = res.read()
    elapsed = time.perf_counter() - start
    if res.status != 201:
        raise SystemExit(f"upload failed: {res.status} {body[:200]!r}")
    conn.close()
    return size / elapsed / 1e6


def download(port: int, size: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("GET", "/v1/bench/big/1.0.0/any/blob")
    res = conn.getresponse()
    got = 0
    while True:
        block = res.read(1 << 20)
        if not block:
            break
        got += len(block)
    elapsed = time.perf_counter() - start
    if res.status != 200 or got != size:
        raise SystemExit(f"download failed: {res.status}, {got} bytes")
    conn.close()
    return size / elapsed / 1e6


class Body:
    """A ``wsgi.input`` producing ``size`` bytes without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = len(CHUNK) if n < 0 else min(n, len(CHUNK))
        n = min(n, self.left)
        self.left -= n
        return CHUNK[:n]


def sampler(proc: psutil.Process) -> tuple[threading.Event, list[int], threading.Thread]:
    done = threading.Event()
    peak = [proc.memory_info().rss]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    return done, peak, thread


def bench_in_process(size: int) -> None:
    from werkzeug.test import EnvironBuilder

    from goodrepo.repository import Repository
    from middleware.keys import PRINCIPAL

    who = {"sub": "bench", "scopes": ["admin"], "token_id": None, "claims": {}}
    with tempfile.TemporaryDirectory() as tmp, Repository.open(f"{tmp}/data") as repo:
        app = repo.wsgi_app()
        me = psutil.Process()
        idle = me.memory_info().rss
        done, peak, thread = sampler(me)
        env = EnvironBuilder(
            path="/v1/bench/big/1.0.0/any/blob",
            method="PUT",
            content_type="application/octet-stream",
        ).get_environ()
        env.update({"wsgi.input": Body(size), "CONTENT_LENGTH": str(size), PRINCIPAL: who})
        status: list[str] = []
        try:
            start = time.perf_counter()
            for _ in app(env, lambda s, h, e=None: status.append(s)):
                pass
            up = size / (time.perf_counter() - start) / 1e6
        finally:
            done.set()
            thread.join()
        assert status[0].startswith("201"), status
        env = EnvironBuilder(path="/v1/bench/big/1.0.0/any/blob").get_environ()
        env[PRINCIPAL] = who
        start = time.perf_counter()
        result = app(env, lambda s, h, e=None: None)
        got = sum(len(block) for block in result)
        result.close()
        down = size / (time.perf_counter() - start) / 1e6
        assert got == size
        top = ceiling(size, Path(tmp))
    print(f"blob size                   {size / (1 << 20):.0f} MiB")
    print(f"sha256+write ceiling        {top:8.1f} MB/s")
    print(f"upload, in-process          {up:8.1f} MB/s  ({up / top:.0%} of ceiling, goal 70%)")
    print(f"download, in-process        {down:8.1f} MB/s  ({down / top:.0%} of ceiling)")
    print(
        f"RSS during upload           +{(peak[0] - idle) / (1 << 20):.1f} MiB above idle "
        f"{idle / (1 << 20):.1f} MiB (goal < 100 MiB)"
    )


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def bench_http(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", SERVER, f"{tmp}/data", str(port)])
        try:
            wait_ready(port)
            server = psutil.Process(proc.pid)
            time.sleep(0.5)
            idle = server.memory_info().rss
            done, peak, thread = sampler(server)
            try:
                up = upload(port, size)
            finally:
                done.set()
                thread.join()
            down = download(port, size)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"upload, HTTP via waitress   {up:8.1f} MB/s")
    print(f"download, HTTP via waitress {down:8.1f} MB/s")
    print(f"server RSS during upload    +{(peak[0] - idle) / (1 << 20):.1f} MiB above idle")


def bench_latest(big: int) -> None:
    from werkzeug.test import Client

    from goodrepo import schema as schema_mod
    from goodrepo.repository import Repository
    from middleware.keys import PRINCIPAL

    s = schema_mod.default_schema()
    s["caching"]["enabled"] = False  # measure the index, not the cache
    with tempfile.TemporaryDirectory() as tmp, Repository.open(f"{tmp}/d", schema=s) as repo:
        index = repo.runtime.indexes["versions"]
        for pkg, count in (("small", 10), ("large", big)):
            for start in range(0, count, 5000):
                with repo.kv.transaction() as txn:
                    for i in range(start, min(count, start + 5000)):
                        version = f"{i // 10000}.{(i // 100) % 100}.{i % 100}"
                        index.put(
                            txn,
                            {
                                "namespace": "bench",
                                "name": pkg,
                                "version": version,
                                "variant": "any",
                                "blob_digest": "sha256:" + "0" * 64,
                            },
                        )
        who = {"sub": "bench", "scopes": ["read"], "token_id": None, "claims": {}}
        core = repo.wsgi_app()

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            environ[PRINCIPAL] = who
            return core(environ, start_response)

        client = Client(app)
        results = {}
        for pkg in ("small", "large"):
            for _ in range(200):  # warm up
                client.get(f"/v1/bench/{pkg}/latest")
            samples = []
            for _ in range(2000):
                t = time.perf_counter()
                res = client.get(f"/v1/bench/{pkg}/latest")
                samples.append(time.perf_counter() - t)
                assert res.status_code == 200
            results[pkg] = statistics.median(samples) * 1e6
    ratio = results["large"] / results["small"]
    print(f"latest, 10 versions         {results['small']:8.1f} us (median of 2000)")
    print(f"latest, {big} versions  {results['large']:8.1f} us (median of 2000)")
    print(f"ratio                       {ratio:8.2f}  (goal <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--versions", type=int, default=100_000)
    args = parser.parse_args()
    bench_in_process(args.size_mib << 20)
    bench_http(args.size_mib << 20)
    bench_latest(args.versions)


if __name__ == "__main__":
    main()
