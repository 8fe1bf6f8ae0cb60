"""Run the real ``goodrepo serve`` as a subprocess on 127.0.0.1 and talk to it over HTTP.

``server(env={...})`` (a fixture factory) starts a server on a fresh temporary data
directory with ``--port 0``, waits for the URL it prints, and returns a
:class:`ServerProcess`. Its standard output and error go to files (one pair per run) so
that tests can read what it printed and logged. ``stop()`` sends SIGTERM and waits for
the process to exit; ``start()`` runs it again on the same data directory. Every process
is stopped when the test ends: SIGTERM, then SIGKILL after a bounded wait.

Logins hash a password with argon2 (about 0.1-0.2 s each): tests log in once and reuse
the token (``ServerProcess.admin_token``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]

# Passes the password policy (12+ characters, not a common password, no "admin" in it).
ADMIN_PASSWORD = "e2e-correct-horse-battery-7351"
START_TIMEOUT = 60.0
# The server drains requests in flight for up to 30 s after SIGTERM.
STOP_TIMEOUT = 60.0
HTTP_TIMEOUT = 60.0
URL_RE = re.compile(r"goodrepo \S+ serving on (http://127\.0\.0\.1:(\d+))")
# The variables the server reads besides GOODREPO_*: never inherit them from the runner.
_FOREIGN_SETTINGS = ("ALLOW_ANON_READ",)
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def server_env(data: Path, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a server process: the runner's, without any goodrepo setting,
    plus the test defaults, plus ``extra`` (a value of None removes the variable)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GOODREPO_")
        and k not in _FOREIGN_SETTINGS
        and k.upper() not in _PROXY_VARIABLES
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(
        GOODREPO_DATA=str(data),
        GOODREPO_LOG_FORMAT="json",
        # Every test logs in a few times: only the rate-limit test keeps the default low.
        GOODREPO_LOGIN_RATE_LIMIT="1000/minute",
        GOODREPO_MIN_FREE_DISK="1MiB",
        PYTHONUNBUFFERED="1",
    )
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ServerProcess:
    """One ``goodrepo serve`` subprocess on a data directory, restartable."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str | None] | None = None,
        *,
        admin_password: str | None = ADMIN_PASSWORD,
        data: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.data = data or workdir / "data"
        extra: dict[str, str | None] = {"GOODREPO_ADMIN_PASSWORD": admin_password}
        extra.update(env or {})
        self.env = server_env(self.data, extra)
        self.admin_password = admin_password
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs: list[tuple[Path, Path]] = []
        self.url = ""
        self.port = 0
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through a proxy
        self._admin_token: str | None = None

    # -- the process -------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the server and wait until it prints its URL."""
        assert not self.running, "the server is already running"
        n = len(self.runs)
        out_path = self.workdir / f"stdout.{n}.txt"
        err_path = self.workdir / f"stderr.{n}.txt"
        self.runs.append((out_path, err_path))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goodrepo.cli", "serve", "--port", "0", *self.args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while True:
            match = URL_RE.search(self.stdout)
            if match:
                self.url, self.port = match[1], int(match[2])
                self._admin_token = None
                return self
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"goodrepo serve exited with {self.proc.returncode} before serving\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr[-4000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"goodrepo serve printed no URL within {timeout} s\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr[-4000:]}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit by itself; fails (and kills it) after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"goodrepo serve did not exit within {timeout} s") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def restart(self) -> ServerProcess:
        code = self.stop()
        assert code == 0, f"goodrepo serve exited with {code}:\n{self.stderr[-4000:]}"
        return self.start()

    def kill(self) -> None:
        """Stop the process whatever it is doing (finalizers)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.kill()
        self.session.close()

    # -- what it printed ---------------------------------------------------------------

    @property
    def stdout(self) -> str:
        """Standard output of the current (or last) run."""
        return self.runs[-1][0].read_text("utf-8", "replace") if self.runs else ""

    @property
    def stderr(self) -> str:
        """Standard error (the log) of the current (or last) run."""
        return self.runs[-1][1].read_text("utf-8", "replace") if self.runs else ""

    def output_of(self, run: int) -> tuple[str, str]:
        out, err = self.runs[run]
        return out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace")

    def log_records(self, run: int = -1) -> list[dict[str, Any]]:
        """The JSON log lines of a run (every line must be a JSON object)."""
        text = self.output_of(run)[1]
        records = []
        for line in text.splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"a log line is not JSON: {line!r}") from None
        return records

    # -- HTTP --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.request(method, self.url + path, headers=hdrs, **kwargs)

    def login(
        self, username: str = "admin", password: str | None = None, *, status: int = 200
    ) -> dict[str, Any]:
        password = self.admin_password if password is None else password
        assert password is not None, "no password known for this login"
        r = self.request("POST", "/auth/login", json={"username": username, "password": password})
        assert r.status_code == status, r.text
        return r.json()

    @property
    def admin_token(self) -> str:
        """An admin access token of the current run, logged in once."""
        if self._admin_token is None:
            self._admin_token = self.login()["token"]
        return self._admin_token

    def publish(
        self, coords: str, body: bytes, token: str | None = None, *, status: int = 201
    ) -> requests.Response:
        r = self.request(
            "PUT",
            f"/v1/{coords}/blob",
            token=token if token is not None else self.admin_token,
            headers={"Content-Type": "application/octet-stream"},
            data=body,
        )
        assert r.status_code == status, r.text
        return r

    def create_user(self, username: str, password: str, scopes: Sequence[str]) -> None:
        r = self.request(
            "POST",
            "/admin/users",
            token=self.admin_token,
            json={"username": username, "password": password, "scopes": list(scopes)},
        )
        assert r.status_code == 201, r.text


class ServerFactory:
    """Starts servers in fresh temporary directories and stops them all on close."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.servers: list[ServerProcess] = []

    def __call__(
        self,
        env: Mapping[str, str | None] | None = None,
        *,
        admin_password: str | None = ADMIN_PASSWORD,
        data: Path | None = None,
        args: Sequence[str] = (),
        start: bool = True,
    ) -> ServerProcess:
        workdir = self.tmp_path_factory.mktemp("goodrepo-serve")
        srv = ServerProcess(workdir, env, admin_password=admin_password, data=data, args=args)
        self.servers.append(srv)
        return srv.start() if start else srv

    def close(self) -> None:
        for srv in self.servers:
            srv.close()


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``server(env={...}, admin_password=..., data=..., args=[...])``."""
    factory = ServerFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.close()
