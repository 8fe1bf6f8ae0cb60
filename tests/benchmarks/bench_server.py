"""Benchmark of ``goodrepo serve`` over loopback HTTP; prints its figures, asserts nothing.

1. Small publishes per second: 1 KiB blobs PUT by 8 client threads, each on its own
   keep-alive connection (http.client), every publish to coordinates of its own, for a
   bounded time or number of publishes. The server syncs every publish (blob and
   metadata) before it answers 201, so each one counted is durable.
2. Beside it, requests per second of a do-nothing WSGI app (200 "ok") on waitress with the
   server's settings (8 threads, the same channel timeout, on 127.0.0.1), driven by the
   same client with the same 1 KiB PUTs, and the ratio of the two. Goal: at least 0.3.
3. The server's memory growth during a 1 GiB upload through the full stack: RSS of the
   server process sampled with psutil, the peak minus the idle RSS just before the
   upload. Goal: under 100 MiB.

The server runs on a fresh temporary data directory with the admin password taken from
``GOODREPO_ADMIN_PASSWORD`` (a random one when unset) and otherwise default settings; its
log goes to a file. Everything is bounded in time (well under 3 minutes by default).

Run: ``python tests/benchmarks/bench_server.py [--seconds 10] [--upload-mib 1024]``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CLIENT_THREADS = 8
SERVER_THREADS = 8
CHANNEL_TIMEOUT = 120  # goodrepo serve's default
BLOB = 1024
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
URL_RE = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")

BASELINE = textwrap.dedent(
    """
    import sys, waitress

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = waitress.create_server(
        app, host=sys.argv[1], port=0, threads=int(sys.argv[2]),
        channel_timeout=int(sys.argv[3]), clear_untrusted_proxy_headers=True,
    )
    print(f"baseline serving on http://{sys.argv[1]}:{server.effective_port}", flush=True)
    server.run()
    """
)


# -- processes --------------------------------------------------------------------------


class Process:
    """A server subprocess whose stdout goes to a file; waits for its URL line."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path, name: str):
        self.out = workdir / f"{name}.stdout"
        self.err = workdir / f"{name}.stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            match = URL_RE.search(self.out.read_text())
            if match:
                self.port = int(match[1])
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start:\n{self.err.read_text()[-3000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def server_env(data: Path, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOODREPO_")}
    env.pop("ALLOW_ANON_READ", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(GOODREPO_DATA=str(data), GOODREPO_ADMIN_PASSWORD=password)
    return env


def login(port: int, password: str) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        body = json.dumps({"username": "admin", "password": password})
        conn.request("POST", "/auth/login", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise SystemExit(f"login failed: {r.status} {answer[:300]!r}")
        return str(json.loads(answer)["token"])
    finally:
        conn.close()


# -- the load driver --------------------------------------------------------------------


def drive(
    port: int,
    seconds: float,
    limit: int,
    request: Callable[[int, int], tuple[str, bytes, dict[str, str]]],
    expected: int,
) -> dict[str, Any]:
    """Run ``CLIENT_THREADS`` threads, each on one keep-alive connection, sending
    ``request(thread, n)`` until ``seconds`` pass or ``limit`` requests were sent."""
    lock = threading.Lock()
    sent = [0]
    ok = [0] * CLIENT_THREADS
    errors = [0] * CLIENT_THREADS
    latencies: list[list[float]] = [[] for _ in range(CLIENT_THREADS)]
    barrier = threading.Barrier(CLIENT_THREADS + 1)
    end = [0.0]

    def worker(t: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        barrier.wait()
        n = 0
        try:
            while time.perf_counter() < end[0]:
                with lock:
                    if sent[0] >= limit:
                        return
                    sent[0] += 1
                path, body, headers = request(t, n)
                n += 1
                began = time.perf_counter()
                try:
                    conn.request("PUT", path, body, headers)
                    r = conn.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    errors[t] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                    continue
                latencies[t].append(time.perf_counter() - began)
                if r.status == expected:
                    ok[t] += 1
                else:
                    errors[t] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(CLIENT_THREADS)]
    for th in threads:
        th.start()
    end[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    barrier.wait()
    for th in threads:
        th.join(seconds + 120)
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    return {
        "ok": sum(ok),
        "errors": sum(errors),
        "elapsed": elapsed,
        "rate": sum(ok) / elapsed if elapsed else 0.0,
        "p50_ms": statistics.median(flat) * 1000 if flat else float("nan"),
        "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1000 if len(flat) >= 100 else float("nan"),
    }


def publisher(token: str, run: str) -> Callable[[int, int], tuple[str, bytes, dict[str, str]]]:
    """1 KiB publishes, each to coordinates (and with content) of its own."""
    seed = os.urandom(BLOB)

    def request(t: int, n: int) -> tuple[str, bytes, dict[str, str]]:
        tail = f"{run}/{t}/{n}".encode()
        body = seed[: BLOB - len(tail)] + tail
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(body)),
        }
        return f"/v1/bench/{run}-t{t}/1.0.{n}/any/blob", body, headers

    return request


def plain_put(t: int, n: int) -> tuple[str, bytes, dict[str, str]]:
    body = os.urandom(BLOB)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
    return f"/anything/{t}/{n}", body, headers


# -- the 1 GiB upload -----------------------------------------------------------------------


def upload_rss(port: int, token: str, pid: int, size: int) -> dict[str, Any]:
    """PUT ``size`` bytes while sampling the server's RSS; returns the figures."""
    proc = psutil.Process(pid)
    time.sleep(1.0)  # let the server settle after the throughput runs
    idle = proc.memory_info().rss
    chunk = bytearray(os.urandom(1 << 20))
    digest = hashlib.sha256()
    pieces = size // len(chunk)
    for i in range(pieces):
        chunk[:8] = i.to_bytes(8, "big")
        digest.update(chunk)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            stop.wait(0.02)

    def body() -> Iterator[bytes]:
        for i in range(pieces):
            chunk[:8] = i.to_bytes(8, "big")
            yield bytes(chunk)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    began = time.perf_counter()
    try:
        conn.request(
            "PUT",
            "/v1/bench/big/1.0.0/any/blob",
            body(),
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
                "Content-Length": str(pieces * len(chunk)),
            },
        )
        r = conn.getresponse()
        answer = r.read()
    finally:
        conn.close()
        elapsed = time.perf_counter() - began
        time.sleep(0.2)
        stop.set()
        sampler.join(10)
    stored = json.loads(answer).get("digest") if r.status == 201 else None
    return {
        "status": r.status,
        "intact": stored == "sha256:" + digest.hexdigest(),
        "idle": idle,
        "peak": peak[0],
        "growth": peak[0] - idle,
        "seconds": elapsed,
        "mb_s": pieces * len(chunk) / elapsed / 1e6,
    }


def figures(result: dict[str, Any], unit: str) -> str:
    return (
        f"    {result['rate']:8.0f} {unit}  ({result['ok']} in {result['elapsed']:.1f} s,"
        f" {result['errors']} errors, p50 {result['p50_ms']:.1f} ms,"
        f" p99 {result['p99_ms']:.1f} ms)"
    )


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per throughput run")
    parser.add_argument("--upload-mib", type=int, default=1024, help="size of the big upload")
    args = parser.parse_args(argv)

    password = os.environ.get("GOODREPO_ADMIN_PASSWORD") or secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, loopback {HOST}")
    print(f"client: {CLIENT_THREADS} threads, keep-alive http.client, PUT of {BLOB} bytes")
    try:
        server = Process(
            [sys.executable, "-m", "goodrepo.cli", "serve", "--port", "0"],
            server_env(workdir / "data", password),
            workdir,
            "goodrepo",
        )
        try:
            token = login(server.port, password)
            drive(server.port, 1.0, 500, publisher(token, "warmup"), 201)
            small = drive(
                server.port, args.seconds, args.max_requests, publisher(token, "run"), 201
            )
            print()
            print("(a) goodrepo serve, durable 1 KiB publishes (201 each):")
            print(figures(small, "publishes/s"))
            big = upload_rss(server.port, token, server.pid, args.upload_mib << 20)
        finally:
            server.stop()

        baseline = Process(
            [sys.executable, "-c", BASELINE, HOST, str(SERVER_THREADS), str(CHANNEL_TIMEOUT)],
            server_env(workdir / "unused", password),
            workdir,
            "baseline",
        )
        try:
            drive(baseline.port, 1.0, 500, plain_put, 200)
            bare = drive(baseline.port, args.seconds, args.max_requests, plain_put, 200)
        finally:
            baseline.stop()
        print(f"(b) do-nothing WSGI app, waitress threads={SERVER_THREADS}, same client:")
        print(figures(bare, "requests/s "))
        ratio = small["rate"] / bare["rate"] if bare["rate"] else float("nan")
        verdict = "meets" if ratio >= 0.3 else "misses"
        print(f"    ratio goodrepo / do-nothing: {ratio:.2f}  (goal >= 0.30: {verdict})")

        mib = 1 << 20
        verdict = "meets" if big["growth"] < 100 * mib else "misses"
        print(f"(c) {args.upload_mib} MiB upload through the full stack:")
        print(
            f"    status {big['status']}, digest {'intact' if big['intact'] else 'WRONG'},"
            f" {big['seconds']:.1f} s, {big['mb_s']:.0f} MB/s"
        )
        print(
            f"    server RSS idle {big['idle'] / mib:.1f} MiB, peak {big['peak'] / mib:.1f} MiB,"
            f" growth {big['growth'] / mib:.1f} MiB  (goal < 100 MiB: {verdict})"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
