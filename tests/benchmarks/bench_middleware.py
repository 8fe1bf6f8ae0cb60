"""Throughput of a trivial app on waitress, bare and inside all seven middlewares.

The server runs in a child process (waitress, 4 threads, 127.0.0.1 only); this process
drives it with keep-alive connections (a minimal socket client) from several threads for a
fixed time, after a short warm-up, and prints requests per second for:

1. the bare app;
2. the full standard stack (request ID, metrics, security headers, CORS, health, rate
   limit, auth) with a valid HS256 token on every request, access log off;
3. the same stack writing its JSON access-log line for every request (to /dev/null).

Goal: the full stack keeps at least 75% of the bare throughput. The three kinds are run
in turn, ``--rounds`` times, so that a noisy neighbour on the machine hits all of them
alike; each kind's figure is the median of its rounds, and every round's figure is
printed too. Prints figures and the ratio; asserts nothing. Bounded: about
``3 * rounds * (warmup + duration)`` seconds in all.

Run: ``python tests/benchmarks/bench_middleware.py [--rounds 3] [--duration 3] [--clients 8]
[--threads 4]``

With psutil installed it also prints the server's CPU time per request. Waitress's worker
threads contend for the GIL, and every microsecond of Python the stack adds per request
costs several in throughput under that contention: compare ``--threads 1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

GOAL = 0.75
SECRET = "bench-secret-" + "0123456789abcdef" * 4
ORIGIN = "https://ui.example.com"
KINDS = ("bare", "full", "full+log")
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def trivial_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["goodrepo.route"] = "/bench"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def build(kind: str) -> Any:
    """The app the server child serves for ``kind``; imports stay inside for the child."""
    if kind == "bare":
        return trivial_app
    from prometheus_client import CollectorRegistry

    from middleware.auth import JWTAuthMiddleware
    from middleware.cors import CORSMiddleware
    from middleware.health import HealthMiddleware
    from middleware.metrics import MetricsMiddleware
    from middleware.ratelimit import RateLimitMiddleware, Rule
    from middleware.request_id import RequestIDMiddleware
    from middleware.security_headers import SecurityHeadersMiddleware

    if kind == "full+log":
        from middleware.jsonlog import configure_json_logging

        configure_json_logging("INFO", stream=open(os.devnull, "w"))  # noqa: SIM115
    app: Any = JWTAuthMiddleware(trivial_app, keys={"k1": SECRET})
    # One client address sends everything here, so the per-address limit is set high
    # enough never to refuse; the limiter still does all its work on every request. (A
    # per-second window: the memory moving window keeps one entry per request in it.)
    app = RateLimitMiddleware(app, rules=[Rule("100000/second")])
    app = HealthMiddleware(app, checks={"noop": lambda: True})
    app = CORSMiddleware(app, allow_origins=[ORIGIN])
    app = SecurityHeadersMiddleware(app)
    app = MetricsMiddleware(app, registry=CollectorRegistry())
    return RequestIDMiddleware(app)


def serve(kind: str, port: int, threads: int) -> None:
    import waitress

    logging.getLogger("waitress").setLevel(logging.ERROR)
    waitress.serve(build(kind), host="127.0.0.1", port=port, threads=threads, _quiet=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start")


def token() -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": "bench", "iat": now, "exp": now + 3600, "scopes": ["read"]}
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k1"})


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one socket: enough for fixed GETs, and cheap.

    ``http.client`` parses every response header with the email parser, which costs more
    than the middlewares do and would make the client, not the server, the bottleneck.
    """

    def __init__(self, port: int, request: bytes) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._request = request
        self._buffer = b""

    def get(self) -> int:
        """Send the request, read the whole answer, return its status code."""
        self._sock.sendall(self._request)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        match = CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        while len(self._buffer) < length:
            self._receive()
        self._buffer = self._buffer[length:]
        return int(head[9:12])

    def _receive(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def close(self) -> None:
        self._sock.close()


def drive(port: int, clients: int, warmup: float, duration: float) -> tuple[float, int]:
    """Requests per second over ``duration`` after ``warmup``; also the non-200 count."""
    request = (
        "GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token()}\r\nOrigin: {ORIGIN}\r\n\r\n"
    ).encode()
    counts = [0] * clients
    errors = [0] * clients
    measuring = threading.Event()
    stop = threading.Event()

    def client(index: int) -> None:
        connection = KeepAliveClient(port, request)
        try:
            while not stop.is_set():
                status = connection.get()
                if measuring.is_set():
                    counts[index] += 1
                    if status != 200:
                        errors[index] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    measuring.set()
    started = time.perf_counter()
    time.sleep(duration)
    measuring.clear()
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    return sum(counts) / elapsed, sum(errors)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, when psutil is installed."""
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(
    kind: str, clients: int, warmup: float, duration: float, threads: int
) -> tuple[float, float | None]:
    """Requests per second, and the server's CPU microseconds per request (or None)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)]
        + ["--threads", str(threads)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(port, process)
        before = cpu_seconds(process.pid)
        rate, errors = drive(port, clients, warmup, duration)
        after = cpu_seconds(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
    if errors:
        print(f"  warning: {errors} answers were not 200 OK for {kind}")
    cpu = None
    if before is not None and after is not None and rate:
        # The CPU counters also cover the warm-up, so spread them over its requests too.
        cpu = (after - before) / (rate * (warmup + duration)) * 1e6
    return rate, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind, in turn")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--threads", type=int, default=4, help="waitress worker threads")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.threads)
        return 0
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 10:
        parser.error("keep --duration in (0, 60] and --warmup in [0, 10]")
    if not 1 <= args.clients <= 64 or not 1 <= args.threads <= 64:
        parser.error("keep --clients and --threads in [1, 64]")
    if not 1 <= args.rounds <= 10:
        parser.error("keep --rounds in [1, 10]")
    print(
        f"waitress, {args.threads} threads, 127.0.0.1; {args.clients} keep-alive clients; "
        f"{args.duration:g} s per run; {args.rounds} rounds; {os.cpu_count()} CPUs"
    )
    runs: dict[str, list[tuple[float, float | None]]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            runs[kind].append(
                measure(kind, args.clients, args.warmup, args.duration, args.threads)
            )
    rates = {
        kind: statistics.median(rate for rate, _ in results) for kind, results in runs.items()
    }
    bare = rates["bare"]
    for kind, results in runs.items():
        rate = rates[kind]
        line = f"{kind:>9}: {rate:7.0f} req/s"
        cpus = [cpu for _, cpu in results if cpu is not None]
        if cpus:
            line += f"  server CPU {statistics.median(cpus):4.0f} us/request"
        if kind != "bare":
            ratio = rate / bare if bare else 0.0
            verdict = "meets" if ratio >= GOAL else "misses"
            line += f"  {ratio:6.1%} of bare ({verdict} the {GOAL:.0%} goal)"
        print(line)
        if len(results) > 1:
            print(f"{'':>11}rounds: " + ", ".join(f"{rate:.0f}" for rate, _ in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
