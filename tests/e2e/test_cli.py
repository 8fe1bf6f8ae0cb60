"""The ``goodrepo`` command: user, token and check-schema on a data directory, run as
subprocesses while no server runs; ``--help``; and ``main()`` in-process with an injected
serve function."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from goodrepo.cli import main

from .conftest import server_env

ALICE_PASSWORD = "pale-orchid-meridian-4410"
ALICE_NEW_PASSWORD = "quiet-lantern-harbour-8826"
BOB_PASSWORD = "amber-thistle-cascade-5902"
CLI_TIMEOUT = 60


def goodrepo(
    *args: str,
    data: Path | None = None,
    stdin: str = "",
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``goodrepo ARGS [--data DATA]`` in a subprocess, with the settings ``env`` on
    top of the test defaults; bounded in time. It runs in the data directory's parent (or
    the temporary directory), never in the checkout."""
    argv = [sys.executable, "-m", "goodrepo.cli", *args]
    if data is not None:
        argv += ["--data", str(data)]
    environ = server_env(data or Path("unused-data"), env)
    environ.pop("GOODREPO_DATA")
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=environ,
        cwd=cwd or (data.parent if data is not None else tempfile.gettempdir()),
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def default_schema() -> Path:
    return Path(str(resources.files("goodrepo.schema").joinpath("default.json")))


# Makes the pseudo-terminal on its standard streams the controlling terminal of the new
# session, so that Ctrl-C and Ctrl-D typed on it act as on a real one, then runs goodrepo.
_ON_A_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'goodrepo.cli', *sys.argv[1:]])"
)


class Terminal:
    """``goodrepo ARGS --data DATA`` run on a pseudo-terminal, as a person at a terminal
    runs it: ``wait_for`` what it shows, ``type`` keys, ``finish`` for the exit code and
    everything the terminal showed (echoed keys included)."""

    def __init__(self, *args: str, data: Path) -> None:
        controller, terminal = os.openpty()
        env = server_env(data)
        env.pop("GOODREPO_DATA")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ON_A_TERMINAL, *args, "--data", str(data)],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=env,
            cwd=data.parent,
            start_new_session=True,
        )
        os.close(terminal)
        self.controller = controller
        self.screen = ""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.controller], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.controller, 4096)
        except OSError:  # EIO: the process has exited and closed the terminal
            chunk = b""
        self.screen += chunk.decode("utf-8", "replace")
        return bool(chunk)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + CLI_TIMEOUT
        while text not in self.screen and time.monotonic() < deadline:
            if not self._read(0.1) and self.process.poll() is not None:
                break
        assert text in self.screen, self.screen

    def type(self, keys: str) -> None:
        os.write(self.controller, keys.encode())

    def finish(self) -> tuple[int, str]:
        deadline = time.monotonic() + CLI_TIMEOUT
        try:
            while time.monotonic() < deadline and self._read(0.1):
                pass
            return self.process.wait(timeout=max(0.0, deadline - time.monotonic())), self.screen
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.controller)


# -- users and tokens -------------------------------------------------------------------


def test_user_and_token_commands_then_a_server_honours_them(server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    line = "user add alice --scopes read,write"
    alice = json.loads(ok(goodrepo(*line.split(), data=data, stdin=ALICE_PASSWORD + "\n")))
    assert (alice["username"], alice["scopes"], alice["disabled"]) == (
        "alice",
        ["read", "write"],
        False,
    )
    bob = json.loads(ok(goodrepo("user", "add", "Bob", data=data, stdin=BOB_PASSWORD + "\n")))
    assert (bob["username"], bob["scopes"]) == ("bob", ["read"])  # normalised, default scope
    again = goodrepo("user", "add", "alice", data=data, stdin=ALICE_PASSWORD + "\n")
    assert again.returncode == 1 and "USER_EXISTS" in again.stderr

    listing = ok(goodrepo("user", "list", data=data)).splitlines()
    assert sorted(listing) == ["alice\tread,write\tactive", "bob\tread\tactive"]
    assert ALICE_PASSWORD not in "".join(listing)

    scoped = json.loads(ok(goodrepo("user", "scopes", "bob", "read,write", data=data)))
    assert scoped["scopes"] == ["read", "write"]
    assert json.loads(ok(goodrepo("user", "disable", "bob", data=data)))["disabled"] is True
    enabled = json.loads(ok(goodrepo("user", "disable", "bob", "--enable", data=data)))
    assert enabled["disabled"] is False
    ok(goodrepo("user", "disable", "bob", data=data))
    assert "bob\tread,write\tdisabled" in ok(goodrepo("user", "list", data=data)).splitlines()
    missing = goodrepo("user", "scopes", "nobody", "read", data=data)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    ok(goodrepo("user", "passwd", "alice", data=data, stdin=ALICE_NEW_PASSWORD + "\n"))

    line = "token create --owner alice --name ci-nightly --scopes read,write --expires-in 3600"
    made = goodrepo(*line.split(), data=data)
    kept = json.loads(ok(made))
    assert "shown only now" in made.stderr
    assert sorted(kept["scopes"]) == ["read", "write"] and kept["name"] == "ci-nightly"
    doomed = json.loads(
        ok(goodrepo("token", "create", "--owner", "alice", "--name", "old", data=data))
    )
    assert doomed["scopes"] == ["read"]
    too_much = goodrepo(
        "token", "create", "--owner", "alice", "--name", "x", "--scopes", "admin", data=data
    )
    assert too_much.returncode == 1 and "FORBIDDEN" in too_much.stderr

    listed = ok(goodrepo("token", "list", data=data))
    rows = [line.split("\t") for line in listed.splitlines()]
    assert {r[0] for r in rows} == {kept["id"], doomed["id"]}
    assert all(r[2] == "alice" for r in rows)
    assert kept["token"] not in listed and doomed["token"] not in listed
    assert ok(goodrepo("token", "revoke", doomed["id"], data=data)).strip() == (
        f"revoked {doomed['id']}"
    )
    assert doomed["id"] not in ok(goodrepo("token", "list", data=data))
    unknown = goodrepo("token", "revoke", doomed["id"], data=data)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr

    # A server on the same directory honours all of it.
    s = server(data=data)
    s.login("alice", ALICE_PASSWORD, status=401)
    assert s.login("alice", ALICE_NEW_PASSWORD)["user"]["scopes"] == ["read", "write"]
    s.login("bob", BOB_PASSWORD, status=401)  # disabled
    assert s.publish("acme/from-ci/1.0.0/any", b"ci", kept["token"]).status_code == 201
    revoked = s.request("GET", "/v1/acme/from-ci/latest", token=doomed["token"])
    assert revoked.status_code == 401


def test_a_password_breaking_the_policy_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = goodrepo("user", "add", "carol", data=data, stdin="password\n")
    assert done.returncode != 0
    assert "PASSWORD_POLICY" in done.stderr
    assert "12 characters" in done.stderr and "common" in done.stderr
    named = goodrepo("user", "add", "carol", data=data, stdin="carol-is-a-long-name\n")
    assert named.returncode != 0
    assert "PASSWORD_POLICY" in named.stderr and "username" in named.stderr
    assert not data.exists()  # refused before a data directory was made
    ok(goodrepo("user", "add", "erin", data=data, stdin=ALICE_PASSWORD + "\n"))
    again = goodrepo("user", "add", "carol", data=data, stdin="password\n")
    assert again.returncode != 0 and "PASSWORD_POLICY" in again.stderr
    assert "carol" not in ok(goodrepo("user", "list", data=data))


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["Bad Name"], ALICE_PASSWORD + "\n", "VALIDATION_ERROR"),
        (["frank", "--scopes", "read,wizard"], ALICE_PASSWORD + "\n", "VALIDATION_ERROR"),
        (["frank"], "", "goodrepo: no password given"),
        (["frank"], None, "goodrepo: no password given (standard input is closed)"),
    ],
    ids=["bad-name", "unknown-scope", "empty-input", "closed-input"],
)
def test_a_refused_user_add_leaves_no_data_directory(
    tmp_path: Path, argv: list[str], stdin: str | None, message: str
) -> None:
    # A mistyped --data must not turn into an empty repository that later commands use.
    data = tmp_path / "nested" / "data"
    env = server_env(data)
    env.pop("GOODREPO_DATA")
    command = [sys.executable, "-m", "goodrepo.cli", "user", "add", *argv, "--data", str(data)]
    if stdin is None:  # run with standard input closed
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    done = subprocess.run(
        command,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=stdin is not None,
        stdout=subprocess.PIPE if stdin is None else None,
        stderr=subprocess.PIPE if stdin is None else None,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nested").exists()


def test_password_policy_reasons_are_printed_once(tmp_path: Path) -> None:
    done = goodrepo("user", "add", "dave", data=tmp_path / "data", stdin="password\n")
    assert done.returncode != 0
    assert done.stderr.count("shorter than 12 characters") == 1, done.stderr


def test_a_password_that_is_not_utf8_is_refused_by_name(tmp_path: Path) -> None:
    env = server_env(tmp_path / "data")
    env.pop("GOODREPO_DATA")
    done = subprocess.run(
        [sys.executable, "-m", "goodrepo.cli", "user", "add", "zed", "--password-stdin"]
        + ["--data", str(tmp_path / "data")],
        input=b"a long cli passphrase \xff\n",
        capture_output=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert b"PASSWORD_POLICY" in done.stderr and b"not valid Unicode text" in done.stderr
    assert b"Traceback" not in done.stderr


def test_user_and_token_commands_refuse_a_data_directory_that_does_not_exist(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "dtaa"
    for args in (("user", "list"), ("user", "disable", "alice"), ("token", "list")):
        done = goodrepo(*args, data=typo)
        assert done.returncode == 1, done.stderr
        assert done.stderr == (
            f"goodrepo: no data directory at {typo} "
            "(goodrepo user add or goodrepo serve creates one)\n"
        )
    assert not typo.exists()


def test_a_data_path_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for data, why in (
        (a_file, "exists and is not a directory"),
        (a_file / "d", "Not a directory"),
    ):
        for args in (("user", "add", "alice", "--scopes", "read"), ("serve", "--port", "0")):
            done = goodrepo(*args, data=data, stdin="a fine long passphrase\n", cwd=tmp_path)
            assert done.returncode == 1, done.stderr
            assert why in done.stderr and "server running" not in done.stderr, done.stderr
            assert len(done.stderr.splitlines()) == 1, done.stderr


def test_user_commands_connect_to_no_rate_limit_storage(tmp_path: Path) -> None:
    with socket.socket() as redis_node:  # stands for a Redis cluster node: it must not hear
        redis_node.bind(("127.0.0.1", 0))
        redis_node.listen()
        redis_node.setblocking(False)
        storage = {"GOODREPO_RATELIMIT_STORAGE": f"redis+cluster://{redis_node.getsockname()[0]}"}
        storage["GOODREPO_RATELIMIT_STORAGE"] += f":{redis_node.getsockname()[1]}"
        data = tmp_path / "data"
        ok(goodrepo("user", "add", "alice", data=data, stdin=ALICE_PASSWORD + "\n", env=storage))
        assert ok(goodrepo("user", "list", data=data, env=storage)).startswith("alice\t")
        with pytest.raises(BlockingIOError):
            redis_node.accept()


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "goodrepo.toml"
    config.write_bytes(b"port = 1\n# \xff\n")
    done = goodrepo("user", "list", "--config", str(config), data=tmp_path / "data")
    assert done.returncode == 2
    assert (
        done.stderr == f"goodrepo: configuration: config file {config}: not UTF-8 text (line 2)\n"
    )


# -- passwords typed on a terminal ------------------------------------------------------------


def test_a_password_is_asked_for_twice_without_echo(tmp_path: Path) -> None:
    term = Terminal("user", "add", "erin", data=tmp_path / "data")
    term.wait_for("new password: ")
    term.type(ALICE_PASSWORD + "\n")
    term.wait_for("again: ")
    term.type(ALICE_PASSWORD + "\n")
    code, screen = term.finish()
    assert code == 0, screen
    assert '"username": "erin"' in screen and ALICE_PASSWORD not in screen


def test_password_stdin_on_a_terminal_reads_one_line_without_echo(tmp_path: Path) -> None:
    term = Terminal("user", "add", "erin", "--password-stdin", data=tmp_path / "data")
    term.wait_for("password: ")
    term.type(ALICE_PASSWORD + "\n")
    code, screen = term.finish()
    assert code == 0, screen
    assert '"username": "erin"' in screen and ALICE_PASSWORD not in screen
    assert "again" not in screen


@pytest.mark.parametrize(
    ("key", "code", "message"),
    [
        pytest.param("\x03", 130, "goodrepo: interrupted", id="ctrl-c"),
        pytest.param("\x04", 1, "goodrepo: no password given", id="ctrl-d"),
    ],
)
def test_ctrl_c_or_ctrl_d_at_the_password_prompt_ends_in_one_line(
    tmp_path: Path, key: str, code: int, message: str
) -> None:
    term = Terminal("user", "add", "erin", data=tmp_path / "data")
    term.wait_for("new password: ")
    term.type(key)
    exit_code, screen = term.finish()
    assert exit_code == code, screen
    assert screen.split("new password: ", 1)[1].strip() == message, screen
    assert not (tmp_path / "data").exists()  # asked before a data directory is made


def test_passwd_of_an_unknown_user_asks_for_no_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(goodrepo("user", "add", "alice", data=data, stdin=ALICE_PASSWORD + "\n"))
    code, screen = Terminal("user", "passwd", "nobody", data=data).finish()
    assert code == 1 and "NOT_FOUND" in screen
    assert "password:" not in screen


def test_commands_on_a_directory_a_server_holds_say_so(server: Any) -> None:
    s = server()
    for args in (("user", "list"), ("token", "list"), ("serve", "--port", "0")):
        done = goodrepo(*args, data=s.data)
        assert done.returncode == 1
        assert done.stderr.startswith(f"goodrepo: cannot open {s.data}: "), done.stderr
        assert "(is a server running on it?" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert s.request("GET", "/health").status_code == 200  # the server is unharmed


# -- check-schema ---------------------------------------------------------------------------


def test_check_schema_accepts_the_default_schema() -> None:
    done = goodrepo("check-schema", str(default_schema()))
    assert ok(done).strip().endswith(": valid")


def test_check_schema_refuses_what_serve_would_refuse(tmp_path: Path) -> None:
    schema = json.loads(default_schema().read_text())
    schema["storage"]["blob_stores"]["primary"]["root"] = "blobs\x00x"
    path = tmp_path / "nul.json"
    path.write_text(json.dumps(schema))
    done = goodrepo("check-schema", str(path))
    assert done.returncode == 1
    assert "$.storage.blob_stores.primary.root: a path cannot hold a NUL" in done.stdout


def test_check_schema_lists_problems_with_json_paths(tmp_path: Path) -> None:
    schema = json.loads(default_schema().read_text())
    schema["features"]["mutable_tags"] = "no"
    schema["entities"] = 5
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(schema))
    done = goodrepo("check-schema", str(broken))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{broken}: ") and "problem" in lines[0]
    problems = [line.strip() for line in lines[1:]]
    assert any(p.startswith("$.features.mutable_tags: ") for p in problems), done.stdout
    assert any(p.startswith("$.entities: ") for p in problems), done.stdout

    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    done = goodrepo("check-schema", str(not_json))
    assert done.returncode == 1 and "$: " in done.stdout
    absent = goodrepo("check-schema", str(tmp_path / "absent.json"))
    assert absent.returncode == 1 and "absent.json" in absent.stdout


# -- gc -------------------------------------------------------------------------------------


def test_gc_reports_then_removes_a_blob_nothing_names(tmp_path: Path) -> None:
    from goodrepo.repository import Repository

    data = tmp_path / "data"
    with Repository.open(data) as repo:
        repo.publish("acme", "app", "1.0.0", "linux", b"kept")
        repo.publish("acme", "app", "2.0.0", "linux", b"deleted")
        repo.call(
            "delete_artifact",
            {"namespace": "acme", "name": "app", "version": "2.0.0", "variant": "linux"},
        )
        orphan = repo.runtime.blob_stores["primary"].path_for(
            "sha256:" + hashlib.sha256(b"deleted").hexdigest()
        )
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    dry = json.loads(ok(goodrepo("gc", "--dry-run", data=data)))
    assert (dry["dry_run"], dry["blobs_freed"], dry["bytes_freed"]) == (True, 1, 7)
    assert orphan.exists()
    done = json.loads(ok(goodrepo("gc", data=data)))
    assert (done["dry_run"], done["blobs_freed"]) == (False, 1)
    assert not orphan.exists()
    missing = goodrepo("gc", data=tmp_path / "nothing-here")
    assert missing.returncode == 1 and "no data directory" in missing.stderr


# -- --help ---------------------------------------------------------------------------------

HELP = [
    ((), ["serve", "user", "token", "gc", "check-schema", "GOODREPO_"]),
    (("serve",), ["--data", "--host", "--port", "--config", "--threads", "SIGTERM"]),
    (("user",), ["add", "list", "passwd", "disable", "scopes", "password"]),
    (("user", "add"), ["username", "--scopes", "--password-stdin"]),
    (("user", "list"), ["--data"]),
    (("user", "passwd"), ["username", "--password-stdin"]),
    (("user", "disable"), ["username", "--enable"]),
    (("user", "scopes"), ["username", "comma-separated"]),
    (("token",), ["create", "list", "revoke", "scopes"]),
    (("token", "create"), ["--owner", "--name", "--scopes", "--expires-in"]),
    (("token", "list"), ["--data"]),
    (("token", "revoke"), ["id"]),
    (("gc",), ["--dry-run", "--data", "retention", "grace_period_seconds"]),
    (("check-schema",), ["file", "problem"]),
]


@pytest.mark.parametrize(
    ("command", "words"), HELP, ids=[" ".join(c) or "goodrepo" for c, _ in HELP]
)
def test_help_explains_each_command(command: tuple[str, ...], words: list[str]) -> None:
    done = goodrepo(*command, "--help")
    text = ok(done)
    assert text.startswith(f"usage: goodrepo {' '.join(command)}".rstrip())
    for word in words:
        assert word in text, f"{word!r} missing from the help of {command}"


# What each leaf command does, as the parent's command list says it.
PURPOSES = {
    ("user", "add"): "create a user",
    ("user", "list"): "list users",
    ("user", "passwd"): "set a user's password",
    ("user", "disable"): "disable a user",
    ("user", "scopes"): "replace a user's scopes",
    ("token", "create"): "create an api token",
    ("token", "list"): "list unexpired api tokens",
    ("token", "revoke"): "revoke an api token",
}


def test_top_level_help_lists_each_group_s_commands() -> None:
    text = " ".join(ok(goodrepo("--help")).split())
    assert "manage users: add, list, passwd, disable, scopes" in text
    assert "manage API tokens for CI: create, list, revoke" in text


def lifetime(made: dict[str, Any]) -> float:
    """Seconds from now to a created token's ``expires_at``."""
    expires = datetime.strptime(made["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    return expires.replace(tzinfo=timezone.utc).timestamp() - time.time()


def test_token_create_defaults_to_the_longest_lifetime_allowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(goodrepo("user", "add", "ci", "--scopes", "read", data=data, stdin=ALICE_PASSWORD + "\n"))
    made = json.loads(ok(goodrepo("token", "create", "--owner", "ci", "--name", "n", data=data)))
    assert abs(lifetime(made) - 90 * 86400) < 600
    short = {"GOODREPO_API_TOKEN_MAX_TTL": "86400"}
    argv = ("token", "create", "--owner", "ci", "--name", "short")
    made = json.loads(ok(goodrepo(*argv, data=data, env=short)))
    assert abs(lifetime(made) - 86400) < 600
    zero = goodrepo(*argv, "--expires-in", "0", data=data, env=short)
    assert zero.returncode == 1 and "expires_in must be from 60 to 86400" in zero.stderr


def test_group_help_lists_what_each_command_does() -> None:
    for group in ("user", "token"):
        text = ok(goodrepo(group, "--help"))
        for command, purpose in PURPOSES.items():
            if command[0] == group:
                assert purpose in " ".join(text.lower().split()), (command, text)


def test_leaf_help_pages_say_what_the_command_does() -> None:
    silent = [
        " ".join(command)
        for command, purpose in PURPOSES.items()
        if purpose.lower() not in ok(goodrepo(*command, "--help")).lower()
    ]
    assert silent == [], f"help pages that do not say what the command does: {silent}"


# -- main() in-process -------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No goodrepo setting from the runner, and the root logger restored afterwards
    (``serve`` configures logging)."""
    for name in list(os.environ):
        if name.startswith("GOODREPO_") or name == "ALLOW_ANON_READ":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


class FakeServe:
    """Stands in for ``run_server``: records what it was given and checks the app."""

    def __init__(self, password: str | None = None) -> None:
        self.calls: list[Any] = []
        self.password = password

    def __call__(self, app: Any, settings: Any, out: Any) -> None:
        self.calls.append(settings)
        users, _ = app.users.list(limit=10)
        assert [u["username"] for u in users] == ["admin"]
        if self.password is not None:
            assert app.users.authenticate("admin", self.password)["scopes"] == ["admin"]
        print("fake serving", file=out)


def test_main_serve_passes_the_options_to_the_serve_function(
    tmp_path: Path, clean_env: None
) -> None:
    data = tmp_path / "data"
    fake = FakeServe()
    out = io.StringIO()
    argv = ["serve", "--data", str(data), "--port", "0", "--threads", "3", "--host", "127.0.0.1"]
    assert main(argv, serve=fake, out=out) == 0
    (settings,) = fake.calls
    assert (settings.port, settings.threads, settings.host) == (0, 3, "127.0.0.1")
    assert Path(settings.data) == data
    text = out.getvalue()
    assert "created user 'admin'" in text and text.rstrip().endswith("fake serving")
    password = text.split("store it now):\n", 1)[1].split("\n", 1)[0].strip()
    assert len(password) >= 12

    # The directory was closed: a second run opens it, and prints no password this time.
    again = FakeServe(password)
    out = io.StringIO()
    assert main(["serve", "--data", str(data)], serve=again, out=out) == 0
    assert out.getvalue() == "fake serving\n"
    assert again.calls[0].port == 8080 and again.calls[0].threads == 8  # the defaults


def test_main_serve_with_the_admin_password_from_the_environment(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "velvet-compass-orbit-3318"
    monkeypatch.setenv("GOODREPO_ADMIN_PASSWORD", password)
    monkeypatch.setenv("GOODREPO_THREADS", "5")
    fake = FakeServe(password)
    out = io.StringIO()
    assert main(["serve", "--data", str(tmp_path / "data")], serve=fake, out=out) == 0
    assert out.getvalue() == "fake serving\n"
    assert fake.calls[0].threads == 5
    monkeypatch.setenv("GOODREPO_THREADS", "6")
    argv = ["serve", "--data", str(tmp_path / "data"), "--threads", "2"]
    assert main(argv, serve=fake, out=io.StringIO()) == 0
    assert fake.calls[1].threads == 2  # options beat the environment


@pytest.mark.parametrize(
    ("argv", "setting"),
    [(["--port", "70000"], "port"), (["--threads", "0"], "threads")],
)
def test_main_serve_refuses_bad_settings_before_serving(
    tmp_path: Path,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    setting: str,
) -> None:
    fake = FakeServe()
    code = main(["serve", "--data", str(tmp_path / "data"), *argv], serve=fake, out=io.StringIO())
    assert code == 2 and fake.calls == []
    err = capsys.readouterr().err
    assert f"{setting}:" in err and f"(from --{setting})" in err


@pytest.mark.parametrize(
    "argv", [[], ["serve", "--port", "http"], ["nonsense"], ["user"], ["token", "create"]]
)
def test_main_rejects_bad_arguments(
    argv: list[str], clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeServe()
    with pytest.raises(SystemExit) as exc:
        main(argv, serve=fake, out=io.StringIO())
    assert exc.value.code == 2 and fake.calls == []
    assert "usage: goodrepo" in capsys.readouterr().err


def test_main_check_schema_and_version_in_process(
    clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    assert main(["check-schema", str(default_schema())], out=out) == 0
    assert out.getvalue().strip().endswith(": valid")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("goodrepo ")


def test_main_serve_names_a_rejected_schema_file_and_creates_nothing(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"entities": 5}')
    monkeypatch.setenv("GOODREPO_SCHEMA_FILE", str(schema))
    fake = FakeServe()
    data = tmp_path / "data"
    assert main(["serve", "--data", str(data)], serve=fake, out=io.StringIO()) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"goodrepo: schema file {schema} rejected with "), first
    assert fake.calls == [] and not data.exists()


def test_main_serve_names_the_setting_the_stack_could_not_use(
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Valid as a URL, refused by the Redis client when the stack is built.
    storage = "redis://:hunter2hunter2@127.0.0.1:1/0?socket_timeout=abc"
    monkeypatch.setenv("GOODREPO_RATELIMIT_STORAGE", storage)
    fake = FakeServe()
    code = main(["serve", "--data", str(tmp_path / "data")], serve=fake, out=io.StringIO())
    assert code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("goodrepo: configuration: ratelimit_storage: "), message
    assert "socket_timeout" in message and "GOODREPO_RATELIMIT_STORAGE" in message
    assert "hunter2" not in message
    assert fake.calls == []


def test_main_serve_interrupted_before_serving_exits_130(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(app: Any, settings: Any, out: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C before serve handles SIGINT itself

    data = tmp_path / "data"
    try:
        code = main(["serve", "--data", str(data)], serve=interrupted, out=io.StringIO())
    except KeyboardInterrupt:  # not to end the test session
        pytest.fail("the interrupt escaped main()")
    assert code == 130
    err = capsys.readouterr().err  # the log lines, then the message
    assert err.endswith("\ngoodrepo: interrupted\n") and "Traceback" not in err
    fake = FakeServe()  # the directory was closed on the way out
    assert main(["serve", "--data", str(data)], serve=fake, out=io.StringIO()) == 0


def test_serve_checks_every_address_of_its_host_before_creating_anything(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name resolves to two loopback addresses (only the resolver is replaced); the
    # second one is taken: one line, exit 1, no data directory, no admin password.
    resolve = socket.getaddrinfo

    def two_addresses(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "two.test":
            return resolve("127.0.0.1", port, *args, **kwargs) + resolve(
                "127.0.0.2", port, *args, **kwargs
            )
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        out = io.StringIO()
        with pytest.raises(SystemExit) as exc:
            main(
                ["serve", "--data", str(data), "--host", "two.test", "--port", str(port)], out=out
            )
    assert str(exc.value.code).startswith(f"goodrepo: cannot listen on two.test:{port}: ")
    assert not data.exists() and out.getvalue() == ""


def test_serve_on_a_host_with_two_addresses_listens_on_both(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that resolves to an IPv4 and an IPv6 address, as ``localhost`` does on many
    machines, makes waitress listen on both. Only the resolver is replaced, so that the
    name resolves so here too; the real server runs and is stopped as by Ctrl-C."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback address")
    resolve = socket.getaddrinfo

    def dual_stack(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "dual-stack.test":
            return resolve("127.0.0.1", port, *args, **kwargs) + resolve(
                "::1", port, *args, **kwargs
            )
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dual_stack)
    out = io.StringIO()
    served = threading.Event()
    statuses: dict[str, int] = {}

    def client() -> None:
        deadline = time.monotonic() + CLI_TIMEOUT
        while "serving on" not in out.getvalue():
            if served.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.05)
        try:
            for url in re.findall(r"http://\S+", out.getvalue().split("serving on", 1)[1]):
                address = urlsplit(url)
                conn = http.client.HTTPConnection(
                    str(address.hostname), address.port, timeout=CLI_TIMEOUT
                )
                try:
                    conn.request("GET", "/health")
                    statuses[url] = conn.getresponse().status
                finally:
                    conn.close()
        finally:
            if not served.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=client)
    thread.start()
    argv = ["serve", "--data", str(tmp_path / "data"), "--host", "dual-stack.test", "--port", "0"]
    try:
        assert main(argv, out=out) == 0
    finally:
        served.set()
        thread.join()
    assert re.search(
        r"serving on http://127\.0\.0\.1:\d+ and http://\[::1\]:\d+\n", out.getvalue()
    )
    assert sorted(statuses.values()) == [200, 200], statuses
    assert out.getvalue().endswith("goodrepo stopped\n")
