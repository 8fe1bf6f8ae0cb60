"""The ``goodrepo`` command: user, token and check-schema on a data directory, run as
subprocesses while no server runs; ``--help``; and ``main()`` in-process with an injected
serve function."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from goodrepo.cli import main

from .conftest import server_env

ALICE_PASSWORD = "pale-orchid-meridian-4410"
ALICE_NEW_PASSWORD = "quiet-lantern-harbour-8826"
BOB_PASSWORD = "amber-thistle-cascade-5902"
CLI_TIMEOUT = 60


def goodrepo(
    *args: str, data: Path | None = None, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``goodrepo ARGS [--data DATA]`` in a subprocess; bounded in time. It runs in
    the data directory's parent (or the temporary directory), never in the checkout."""
    argv = [sys.executable, "-m", "goodrepo.cli", *args]
    if data is not None:
        argv += ["--data", str(data)]
    env = server_env(data or Path("unused-data"))
    env.pop("GOODREPO_DATA")
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd=cwd or (data.parent if data is not None else tempfile.gettempdir()),
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def default_schema() -> Path:
    return Path(str(resources.files("goodrepo.schema").joinpath("default.json")))


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
    assert "carol" not in ok(goodrepo("user", "list", data=data))


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


def test_user_list_while_a_server_holds_the_directory(server: Any) -> None:
    s = server()
    for args in (("user", "list"), ("token", "list")):
        done = goodrepo(*args, data=s.data)
        assert done.returncode != 0
        assert "server" in done.stderr and "running" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert s.request("GET", "/health").status_code == 200  # the server is unharmed


# -- check-schema ---------------------------------------------------------------------------


def test_check_schema_accepts_the_default_schema() -> None:
    done = goodrepo("check-schema", str(default_schema()))
    assert ok(done).strip().endswith(": valid")


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


# -- --help ---------------------------------------------------------------------------------

HELP = [
    ((), ["serve", "user", "token", "check-schema", "GOODREPO_"]),
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
    assert f"{setting}:" in capsys.readouterr().err


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
