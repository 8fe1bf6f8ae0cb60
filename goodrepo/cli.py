"""The ``goodrepo`` command: serve, user, token, gc and check-schema.

Usage::

    goodrepo serve --data ./data --port 8080
    goodrepo user add alice --scopes read,write < password.txt
    goodrepo check-schema my-schema.json

``main(argv)`` returns the exit code; the server call is injectable for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import ConfigurationError, GoodrepoError, InvalidConfig, StoreError

log = logging.getLogger("goodrepo.cli")

DRAIN_SECONDS = 30.0
MAINTENANCE_SECONDS = 3600.0
# The settings the options set, named as the user typed them in error messages.
OPTIONS = {"data": "--data", "host": "--host", "port": "--port", "threads": "--threads"}

EPILOG = """\
Settings come from defaults, then the TOML file named by --config (or GOODREPO_CONFIG),
then GOODREPO_* environment variables, then the options given here. The user, token
and gc commands open the data directory themselves: run them while the server is
stopped, or use the admin API of a running server.
"""


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from .settings import Settings

    return Settings.load(
        config_file=args.config, data=args.data, override_origins=OPTIONS, **extra
    )


def _build(settings: Any) -> Any:
    """``create_app(settings)``, with any failure that is not a goodrepo error (a library
    refusing a setting, the system refusing a file) turned into one line."""
    from .stack import create_app

    try:
        return create_app(settings)
    except (GoodrepoError, ConfigurationError):
        raise  # main() reports these
    except Exception as err:  # the last stop before a traceback
        log.debug("building the app failed", exc_info=True)
        detail = settings.redact(str(err) or type(err).__name__)
        raise SystemExit(f"goodrepo: cannot start: {detail}") from err


def _configure_logging(fmt: str, level: str) -> None:
    from middleware.jsonlog import configure_json_logging
    from middleware.request_id import RequestIDFilter

    if fmt == "json":
        handler = configure_json_logging(level.upper())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(level.upper())
    handler.addFilter(RequestIDFilter())


# -- serve ----------------------------------------------------------------------------


def run_server(app: Any, settings: Any, out: TextIO) -> None:
    """Serve ``app`` on waitress until SIGTERM or SIGINT, then drain gracefully.

    On a signal the listening socket closes at once (new connections are refused), the
    requests already being handled run to completion and their answers are sent, for up
    to ``DRAIN_SECONDS``; then the worker threads stop.
    """
    import waitress
    from waitress import wasyncore

    from .refusals import RefusalChannel

    try:
        server = waitress.create_server(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            channel_timeout=settings.channel_timeout,
            max_request_body_size=app.request_body_limit(),
            ident="goodrepo",
            # The rate-limit middleware reads X-Forwarded-For itself, from trusted proxies
            # only; waitress would otherwise drop the header before it gets there.
            clear_untrusted_proxy_headers=not settings.trusted_proxies,
        )
    except OSError as err:  # taken since the check at start
        raise SystemExit(
            f"goodrepo: cannot listen on {settings.host}:{settings.port}: {err.strerror or err}"
        ) from err
    listeners = _listeners(server)
    for listener in listeners:  # waitress's own refusals answered in JSON by the app
        listener.channel_class = RefusalChannel

    def follow_body_limit() -> None:  # waitress reads it for each request it parses
        limit = app.request_body_limit()
        for listener in listeners:
            listener.adj.max_request_body_size = limit

    app.repo.add_swap_listener(follow_body_limit)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        listeners[0].pull_trigger()

    def housekeeping() -> None:
        while not stopping.wait(MAINTENANCE_SECONDS):
            try:
                app.maintenance()
            except Exception:  # keep the thread alive; the next round may succeed
                log.exception("maintenance failed")

    keeper = threading.Thread(target=housekeeping, name="goodrepo-maintenance", daemon=True)
    keeper.start()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    urls = " and ".join(_url(s.effective_host, s.effective_port) for s in listeners)
    print(f"goodrepo {__version__} serving on {urls}", file=out, flush=True)
    socket_map = listeners[0]._map  # one map for all the listening sockets
    try:
        while not stopping.is_set():
            wasyncore.loop(timeout=1.0, map=socket_map, count=1)
        log.info("stopping: no new connections, finishing requests in flight")
        for listener in listeners:
            listener.accepting = False
            listener.del_channel()
            listener.socket.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and _busy(listeners):
            wasyncore.loop(timeout=0.05, map=socket_map, count=1)
    finally:
        stopping.set()
        keeper.join(timeout=5)
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(socket_map)  # the wake-up pipes and any connection left
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("goodrepo stopped", file=out, flush=True)


def _listeners(server: Any) -> list[Any]:
    """The listening servers behind what ``waitress.create_server`` returned: itself, or,
    for a host that resolves to several addresses (``localhost`` to 127.0.0.1 and ::1),
    one per address, which the returned MultiSocketServer keeps in its socket map."""
    from waitress.server import BaseWSGIServer

    if isinstance(server, BaseWSGIServer):
        return [server]
    return [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


def _busy(listeners: list[Any]) -> bool:
    dispatcher = listeners[0].task_dispatcher  # shared by all of them
    if dispatcher.active_count or dispatcher.queue:
        return True
    # A request whose body is still arriving (ch.request) is in flight too.
    return any(
        ch.requests or ch.request is not None or ch.total_outbufs_len
        for listener in listeners
        for ch in list(listener.active_channels.values())
    )


def _check_address(host: str, port: int) -> None:
    """Fail early, before anything is created or printed, if the address is taken."""
    import socket

    probes: list[socket.socket] = []
    try:
        # Every address waitress will bind (localhost: ::1 and 127.0.0.1), all at once.
        infos = socket.getaddrinfo(
            host,
            port,
            socket.AF_UNSPEC,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
            socket.AI_PASSIVE,
        )
        for family, _, _, _, address in dict.fromkeys(infos):
            probe = socket.socket(family, socket.SOCK_STREAM)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as err:
        raise SystemExit(
            f"goodrepo: cannot listen on {host}:{port}: {err.strerror or err}"
        ) from err
    finally:
        for probe in probes:
            probe.close()


def cmd_serve(args: argparse.Namespace, serve: Callable[..., None], out: TextIO) -> int:
    settings = _settings(args, host=args.host, port=args.port, threads=args.threads)
    _configure_logging(settings.log_format, settings.log_level)
    if serve is run_server:
        _check_address(settings.host, settings.port)
    try:
        app = _build(settings)
    except StoreError as err:
        raise _cannot_open(settings.data, err) from err
    try:
        try:
            app.maintenance()
        except GoodrepoError as err:  # housekeeping must not keep the server from starting
            log.error("maintenance failed: %s", err.message)
        generated = app.bootstrap_admin()
        if generated:
            print(
                "created user 'admin' with this password (shown once, store it now):\n"
                f"  {generated}",
                file=out,
                flush=True,
            )
        serve(app, settings, out)
    finally:
        app.close()
    return 0


# -- users and tokens -------------------------------------------------------------------


def _open(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The app on the data directory, which must exist unless ``create``."""
    settings = _settings(args)
    if not create and not settings.data.is_dir():
        raise SystemExit(
            f"goodrepo: no data directory at {settings.data} "
            "(goodrepo user add or goodrepo serve creates one)"
        )
    # These commands serve no requests: no rate-limit storage to connect to.
    settings = dataclasses.replace(settings, ratelimit_storage="memory://")
    try:
        return _build(settings)
    except StoreError as err:
        raise _cannot_open(settings.data, err) from err


def _cannot_open(data: Path, err: StoreError) -> SystemExit:
    hint = ""
    if "lock" in err.message.lower():  # RocksDB allows one process per directory
        hint = "\n(is a server running on it? use its admin API, or stop it first)"
    return SystemExit(f"goodrepo: cannot open {data}: {err.message}{hint}")


def _read_password(args: argparse.Namespace) -> str:
    try:
        return _read_password_from_stdin(args)
    except (OSError, ValueError, AttributeError):  # stdin closed, or not open for reading
        raise SystemExit("goodrepo: no password given (standard input is closed)") from None


def _read_password_from_stdin(args: argparse.Namespace) -> str:
    if sys.stdin.isatty():
        if args.password_stdin:  # one line, as from a pipe, but not shown on the screen
            return _ask("password: ")
        first = _ask("new password: ")
        if _ask("again: ") != first:
            raise SystemExit("goodrepo: the passwords differ")
        return first
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream stands in for stdin
        line = str(sys.stdin.readline())
    else:
        # Bytes that are not UTF-8 come through as lone surrogates, which the password
        # policy then refuses by name, rather than as a decoding traceback.
        line = str(stream.readline().decode("utf-8", "surrogateescape"))
    if not line:  # the input ended before a line: as Ctrl-D on a terminal
        raise SystemExit("goodrepo: no password given")
    return line.rstrip("\r\n")


def _ask(prompt: str) -> str:
    """A password typed on the terminal, without echo; Ctrl-D ends the command."""
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt) as err:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # the prompt left the cursor on its line
        if isinstance(err, KeyboardInterrupt):
            raise  # main() reports it
        raise SystemExit("goodrepo: no password given") from None


def _scopes(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def cmd_user(args: argparse.Namespace, out: TextIO) -> int:
    password = ""
    if args.action == "add":
        # Everything that can refuse the user is checked before a new data directory is
        # made, so that a mistyped --data is not left behind as an empty repository.
        from .accounts import PasswordPolicy
        from .accounts.users import normalize_username, validate_scopes

        name = normalize_username(args.username)
        validate_scopes(_scopes(args.scopes))
        policy = PasswordPolicy(min_length=_settings(args).password_min_length)
        password = _read_password(args)
        policy.enforce(password, name)
    app = _open(args, create=args.action == "add")
    try:
        users = app.users
        if args.action == "add":
            user = users.create(args.username, password, _scopes(args.scopes))
        elif args.action == "list":
            cursor, rows = None, []
            while True:
                page, cursor = users.list(limit=1000, cursor=cursor)
                rows += page
                if cursor is None:
                    break
            for row in rows:
                state = "disabled" if row["disabled"] else "active"
                print(f"{row['username']}\t{','.join(row['scopes'])}\t{state}", file=out)
            return 0
        elif args.action == "passwd":
            users.get(args.username)  # NOT_FOUND before asking for the password
            user = users.set_password(args.username, _read_password(args))
            app.tokens.revoke_user_refresh(user["username"])
        elif args.action == "disable":
            user = users.set_disabled(args.username, not args.enable)
            if not args.enable:
                app.tokens.revoke_user_refresh(user["username"])
        else:  # scopes
            user = users.set_scopes(args.username, _scopes(args.scopes))
        print(json.dumps(user), file=out)
        return 0
    finally:
        app.close()


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    app = _open(args)
    try:
        tokens = app.tokens
        if args.action == "create":
            made = tokens.create_api_token(
                args.owner,
                args.name,
                _scopes(args.scopes),
                args.expires_in,  # None: the library's default
            )
            print(json.dumps(made), file=out)
            print("the token is shown only now: store it", file=sys.stderr)
        elif args.action == "list":
            cursor = None
            while True:
                page, cursor = tokens.list_api_tokens(limit=1000, cursor=cursor)
                for row in page:
                    print(
                        f"{row['id']}\t{row['name']}\t{row['owner']}\t"
                        f"{','.join(row['scopes'])}\t{row['expires_at']}",
                        file=out,
                    )
                if cursor is None:
                    break
        else:
            tokens.revoke_api_token(args.id)
            print(f"revoked {args.id}", file=out)
        return 0
    finally:
        app.close()


def cmd_gc(args: argparse.Namespace, out: TextIO) -> int:
    app = _open(args)
    try:
        print(json.dumps(app.repo.gc(dry_run=args.dry_run, by="goodrepo gc")), file=out)
        return 0
    finally:
        app.close()


def cmd_check_schema(args: argparse.Namespace, out: TextIO) -> int:
    from . import schema as schema_mod

    try:
        schema_mod.load_file(args.file)
    except InvalidConfig as err:
        print(f"{args.file}: {len(err.problems)} problem(s)", file=out)
        for p in err.problems:
            print(f"  {p['path']}: {p['message']}", file=out)
        return 1
    except OSError as err:
        print(f"{args.file}: {err.strerror}", file=out)
        return 1
    print(f"{args.file}: valid", file=out)
    return 0


# -- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goodrepo",
        description="An embeddable artifact repository for Python web stacks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"goodrepo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--data",
            help="data directory (default: $GOODREPO_DATA, else data in the --config file, "
            "else ./data)",
        )
        p.add_argument("--config", help="TOML settings file (default: $GOODREPO_CONFIG)")
        return p

    serve = common(
        sub.add_parser(
            "serve",
            help="run the server on waitress",
            description="Run the standard stack on waitress until "
            "SIGTERM or SIGINT; requests in flight finish first. On a "
            "data directory without users the admin user is created with "
            "GOODREPO_ADMIN_PASSWORD, or a generated password that "
            "is printed once.",
        )
    )
    serve.add_argument(
        "--host", help="address to listen on (default: the host setting, 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, help="port to listen on (default: the port setting, 8080; 0: any)"
    )
    serve.add_argument(
        "--threads", type=int, help="worker threads (default: the threads setting, 8)"
    )

    def leaf(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        return common(parent.add_parser(name, help=text, description=text + "."))

    user = sub.add_parser(
        "user",
        help="manage users: add, list, passwd, disable, scopes",
        description="Manage the users of a data directory. Passwords are read from "
        "standard input (one line) or asked for on a terminal; they must pass the "
        "password policy.",
    )
    usub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = leaf(usub, "add", "Create a user with the given scopes")
    add.add_argument("username", help="the new user's name (lower-cased)")
    add.add_argument("--scopes", default="read", help="comma-separated (default: read)")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from standard input; on a terminal, asked "
        "for once, without echo",
    )
    leaf(usub, "list", "List users with their scopes and state")
    passwd = leaf(
        usub,
        "passwd",
        "Set a user's password, read from standard input or asked for on a terminal; "
        "the user's refresh tokens are revoked and its access tokens stop working",
    )
    passwd.add_argument("username", help="the user whose password to set")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from standard input; on a terminal, asked "
        "for once, without echo",
    )
    disable = leaf(
        usub,
        "disable",
        "Disable a user (logins refused, refresh tokens revoked), or --enable them again",
    )
    disable.add_argument("username", help="the user to disable or enable")
    disable.add_argument("--enable", action="store_true", help="enable instead")
    scopes = leaf(usub, "scopes", "Replace a user's scopes")
    scopes.add_argument("username", help="the user whose scopes to set")
    scopes.add_argument("scopes", help="comma-separated: read, write, admin, replicate")

    token = sub.add_parser(
        "token",
        help="manage API tokens for CI: create, list, revoke",
        description="API tokens are JWTs with chosen scopes and expiry, revocable at once.",
    )
    tsub = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = leaf(tsub, "create", "Create an API token and print it once, with its id and expiry")
    create.add_argument(
        "--owner", default="admin", help="user the token acts for (default: admin)"
    )
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument(
        "--scopes",
        default="read",
        help="comma-separated subset of the owner's scopes (default: read)",
    )
    create.add_argument(
        "--expires-in",
        type=int,
        help="seconds (default 90 days, or api_token_max_ttl if that is shorter)",
    )
    leaf(tsub, "list", "List unexpired API tokens (ids, names, scopes; never the tokens)")
    revoke = leaf(tsub, "revoke", "Revoke an API token by id, with immediate effect")
    revoke.add_argument("id", help="the token's id, as create and list show it")

    gc = common(
        sub.add_parser(
            "gc",
            help="garbage-collect blobs and apply retention",
            description="Apply the schema's retention rules (gc.retention), then remove "
            "the blobs no artifact names that are older than gc.grace_period_seconds; "
            "print the report as JSON. Run it while the server is stopped, or use "
            "POST /admin/gc on a running server.",
        )
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="report what would be removed; change nothing"
    )

    check = sub.add_parser(
        "check-schema",
        help="validate a schema file",
        description="Validate a schema file; print every problem and exit 1 if any.",
    )
    check.add_argument("file")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    serve: Callable[..., None] = run_server,
    out: TextIO | None = None,
) -> int:
    """Run the ``goodrepo`` command; returns the exit code."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args, serve, out)
        if args.command == "user":
            return cmd_user(args, out)
        if args.command == "token":
            return cmd_token(args, out)
        if args.command == "gc":
            return cmd_gc(args, out)
        return cmd_check_schema(args, out)
    except ConfigurationError as err:
        print(f"goodrepo: configuration: {err}", file=sys.stderr)
        return 2
    except InvalidConfig as err:
        print(f"goodrepo: {err}", file=sys.stderr)
        return 2
    except GoodrepoError as err:
        print(f"goodrepo: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C at a prompt, or before serve handles SIGINT itself
        print("goodrepo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
